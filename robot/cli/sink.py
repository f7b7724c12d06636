"""Capture SMTP server for trying the robot out (``email-robot sink``).

Accepts every message, prints one line per message and optionally stores it in a Maildir.
"""

from __future__ import annotations

import asyncio
import mailbox
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, TextIO

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

__all__ = ["serve_sink"]


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def summarize(envelope: Envelope, when: datetime | None = None) -> str:
    """Return the ``received ...`` log line for one message."""
    data = envelope.original_content or b""
    subject = message_id = ""
    try:
        headers = BytesHeaderParser(policy=default_policy).parsebytes(data)
        subject = _one_line(headers.get("Subject", ""))
        message_id = _one_line(headers.get("Message-ID", ""))
    except Exception:  # a sink must never choke on a malformed message
        subject = "(unparseable headers)"
    stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"received {stamp} from={envelope.mail_from or ''} to={','.join(envelope.rcpt_tos)} "
        f"subject={subject} message-id={message_id} size={len(data)}"
    )


class _SinkHandler:
    """aiosmtpd handler: accept everything, report and store it."""

    def __init__(self, maildir: mailbox.Maildir | None, out: TextIO) -> None:
        self.maildir = maildir
        self.out = out

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        if self.maildir is not None:
            # Maildir files use local (LF) line endings; the content is otherwise untouched.
            self.maildir.add(data.replace(b"\r\n", b"\n"))
        self.out.write(summarize(envelope) + "\n")
        self.out.flush()
        return "250 2.0.0 OK: captured by email-robot sink"


class _SinkSMTP(SMTP):
    """aiosmtpd protocol that registers itself while its connection is open."""

    def __init__(self, live: set[_SinkSMTP], *args: Any, **kwargs: Any) -> None:
        self._live = live
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._live.discard(self)
        super().connection_lost(error)


def _accept_any_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    return AuthResult(success=True, auth_data=auth_data)


async def serve_sink(
    host: str, port: int, maildir: Path | None, out: TextIO, stop: asyncio.Event
) -> None:
    """Serve the capture SMTP server on ``host:port`` until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    box = mailbox.Maildir(maildir, create=True) if maildir is not None else None
    handler = _SinkHandler(box, out)
    live: set[_SinkSMTP] = set()

    def factory() -> _SinkSMTP:
        return _SinkSMTP(
            live,
            handler,
            hostname="email-robot-sink",
            enable_SMTPUTF8=True,
            authenticator=_accept_any_login,  # any AUTH succeeds, none is required
            auth_require_tls=False,
            loop=loop,
        )

    server = await loop.create_server(factory, host, port)
    try:
        bound = server.sockets[0].getsockname()
        line = f"sink listening on {bound[0]}:{bound[1]}"
        if maildir is not None:
            line += f" maildir={maildir}"
        out.write(line + "\n")
        out.flush()
        await stop.wait()
    finally:
        server.close()
        tasks = []
        for proto in list(live):
            if proto.transport is not None:
                proto.transport.close()
            if proto._handler_coroutine is not None:
                proto._handler_coroutine.cancel()
                tasks.append(proto._handler_coroutine)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # aiosmtpd re-raises ConnectionResetError; mark it retrieved
        await server.wait_closed()
