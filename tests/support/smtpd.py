"""In-process SMTP test server (aiosmtpd) running in the current event loop.

Records what it receives and can inject faults. Two ways to program it:

* the simple knobs: ``rcpt_replies`` (per recipient, every time), ``mail_reply`` (every
  time), ``data_replies`` (a queue, one per DATA), ``drop_after_data_count`` (one mid-DATA
  disconnect), ``data_delay`` (every DATA), ``max_recipients`` (a relay's limit of
  recipients per transaction: ``452 4.5.3 Too many recipients`` once it is reached),
  ``hold_after()`` (from the n-th accepted message on, DATA replies wait for a gate);
* ``fault()``: a rule for one command (EHLO, AUTH, MAIL, RCPT, DATA), optionally for one
  address only, that replies with a given line, waits before replying (past the client's
  timeout: a slow server), drops the connection instead of replying, or all of these, for a
  number of times or for ever. A reply with code 421 is sent and then the server closes the
  connection, as real servers do. Rules are tried before the simple knobs, first match wins.
"""

from __future__ import annotations

import asyncio
import email.policy
import ssl
import warnings
from collections.abc import Awaitable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import trustme
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["COMMANDS", "NO_REPLY", "TOO_MANY_RECIPIENTS", "Fault", "Received", "TestSMTPServer"]

COMMANDS = ("EHLO", "AUTH", "MAIL", "RCPT", "DATA")


@dataclass
class Received:
    """One message body the test server read (``received``: only those it accepted)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    helo: str | None
    peer: tuple[Any, ...]
    session_id: int
    reply: str = "250 OK"  # what DATA was answered; NO_REPLY if the connection went first
    tls: bool = False  # the session was encrypted (STARTTLS or implicit TLS)

    def message(self) -> EmailMessage:
        """Parse the raw data with ``email.policy.default``."""
        msg = BytesParser(policy=email.policy.default).parsebytes(self.data)
        assert isinstance(msg, EmailMessage)
        return msg


NO_REPLY = "(no reply: connection closed)"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"  # as Postfix, Exim, Exchange say it


@dataclass
class Fault:
    """One programmed misbehaviour; made by ``TestSMTPServer.fault()``, which documents it."""

    command: str
    reply: str | None = None
    address: str | None = None
    delay: float = 0.0
    drop: bool = False
    times: int | None = None
    fired: int = 0  # how many times the rule applied

    def matches(self, command: str, addresses: list[str]) -> bool:
        if command != self.command or (self.times is not None and self.fired >= self.times):
            return False
        return self.address is None or self.address.lower() in (a.lower() for a in addresses)


class _SMTP(SMTP):
    """aiosmtpd protocol that knows its connection index."""

    def __init__(self, owner: TestSMTPServer, session_id: int, *args: Any, **kw: Any) -> None:
        self.owner = owner
        self.session_id = session_id
        super().__init__(*args, **kw)

    def data_received(self, data: bytes) -> None:
        self.owner.reads.setdefault(self.session_id, []).append(data)
        super().data_received(data)


def _is_ok(reply: str) -> bool:
    return reply.startswith("2")


async def _park() -> None:
    """Wait until connection_lost() cancels this (aiosmtpd's) handler task."""
    await asyncio.get_running_loop().create_future()


class _Handler:
    """aiosmtpd hooks; all state lives on the owning TestSMTPServer."""

    def __init__(self, owner: TestSMTPServer) -> None:
        self.owner = owner

    async def _apply(self, server: _SMTP, command: str, addresses: list[str]) -> str | None:
        """Apply the first matching fault: wait, drop or 421-and-close (these never return),
        else return the reply to give instead of the normal one (None: the normal one)."""
        fault = next((f for f in self.owner.faults if f.matches(command, addresses)), None)
        if fault is None:
            return None
        fault.fired += 1
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        transport = server.transport
        assert isinstance(transport, asyncio.Transport)
        if fault.drop:
            transport.abort()
            await _park()
        if fault.reply is not None and fault.reply.startswith("421"):
            await server.push(fault.reply)
            transport.close()
            await _park()
        return fault.reply

    async def handle_EHLO(
        self,
        server: _SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.owner.helos.append(hostname)
        session.host_name = hostname
        reply = await self._apply(server, "EHLO", [])
        if reply is not None:
            return [reply]
        if self.owner.auth is None:
            # No AUTH configured: do not advertise it at all (not even after STARTTLS).
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        if self.owner.pipelining:  # aiosmtpd reads pipelined commands fine, but never says so
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_HELO(
        self, server: _SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        self.owner.helos.append(hostname)
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: _SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        reply = await self._apply(server, "MAIL", [address])
        if reply is None:
            reply = self.owner.mail_reply
        if reply is None or _is_ok(reply):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply if reply is not None else "250 OK"

    async def handle_RCPT(
        self,
        server: _SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = await self._apply(server, "RCPT", [address])
        limit = self.owner.max_recipients
        if reply is None and limit is not None and len(envelope.rcpt_tos) >= limit:
            reply = TOO_MANY_RECIPIENTS
        if reply is None:
            reply = self.owner.rcpt_replies.get(address.lower())
        if reply is None or _is_ok(reply):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply if reply is not None else "250 OK"

    async def handle_AUTH(
        self, server: _SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        reply = await self._apply(server, "AUTH", [])
        return MISSING if reply is None else reply  # MISSING: aiosmtpd checks the password

    async def handle_DATA(self, server: _SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        peer = session.peer
        # The whole body has been read (the client's final "." came): record it now, so a
        # body whose reply never went out (drop, client timeout) is in `transactions` too.
        seen = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            helo=session.host_name,
            peer=tuple(peer) if peer is not None else (),
            session_id=server.session_id,
            reply=NO_REPLY,
            tls=session.ssl is not None or owner.implicit_tls,
        )
        owner.transactions.append(seen)
        reply = await self._apply(server, "DATA", seen.rcpt_tos)
        gate = owner.data_gate
        if gate is not None and len(owner.received) >= owner.data_gate_after:
            await gate.wait()
        if owner.data_delay > 0:
            await asyncio.sleep(owner.data_delay)
        drop_after = owner.drop_after_data_count
        if drop_after is not None and len(owner.received) >= drop_after:
            # One-shot: kill the connection after the client's final "." without replying.
            owner.drop_after_data_count = None
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            await _park()
        if reply is None:
            reply = owner.data_replies.pop(0) if owner.data_replies else "250 OK"
        seen.reply = reply
        if _is_ok(reply):
            owner.received.append(seen)
            owner._changed.set()
        return reply


class TestSMTPServer:
    """SMTP server on 127.0.0.1:<ephemeral> (or a given host and port) inside the running loop.

    Fault knobs (``rcpt_replies``, ``mail_reply``, ``data_replies``, ``drop_after_data_count``,
    ``data_delay``, ``max_recipients``, ``faults``) may be changed at any time, also while
    clients are connected.
    ``received`` holds the accepted messages, ``transactions`` every message body read
    (accepted, refused, dropped or left unanswered), each with the reply it got.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        *,
        tls_cert: trustme.LeafCert | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        auth: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        pipelining: bool = True,
        max_recipients: int | None = None,
    ) -> None:
        if (implicit_tls or require_starttls) and tls_cert is None:
            raise ValueError("implicit_tls/require_starttls need tls_cert")
        self.tls_cert = tls_cert
        self.implicit_tls = implicit_tls
        self.require_starttls = require_starttls
        self.auth = dict(auth) if auth is not None else None
        self.host = host  # any loopback address: 127.0.0.2 and up give several on one port
        self.port = port  # 0: an ephemeral one, set by start()
        self.pipelining = pipelining  # advertise PIPELINING (RFC 2920) in the EHLO reply
        self.received: list[Received] = []
        self.connections = 0
        self.reads: dict[int, list[bytes]] = {}  # by connection: the chunks as they came
        self.helos: list[str] = []
        self.auth_attempts: list[tuple[str, bool]] = []
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.data_replies: list[str] = []
        self.drop_after_data_count: int | None = None
        self.data_delay = 0.0
        self.max_recipients = max_recipients  # accepted RCPTs per transaction; None: any
        self.faults: list[Fault] = []
        self.transactions: list[Received] = []
        self.data_gate: asyncio.Event | None = None
        self.data_gate_after = 0
        self._server: asyncio.Server | None = None
        self._protocols: list[_SMTP] = []
        self._changed = asyncio.Event()
        self._handler = _Handler(self)

    def fault(
        self,
        command: str,
        reply: str | None = None,
        *,
        address: str | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int | None = None,
    ) -> Fault:
        """Program a misbehaviour for `command` (EHLO, AUTH, MAIL, RCPT or DATA).

        reply:   the reply line instead of the normal one (``"451 4.3.0 Try later"``). A
                 ``421`` reply is sent and then the connection is closed. None keeps the
                 normal reply (useful with `delay`).
        address: only when the command is about this address, case-insensitively: the
                 sender for MAIL, the recipient for RCPT, any recipient of the envelope for
                 DATA. None: always.
        delay:   seconds to wait before replying; past the client's timeout it gives up.
        drop:    abort the connection (after `delay`) instead of replying. For DATA this
                 happens after the client sent the whole message and its final ".".
        times:   apply this many times, then behave normally; None: every time.

        Rules are tried in the order they were added; the first that matches applies.
        Returns the rule; its ``fired`` counts how often it applied.
        """
        command = command.upper()
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}, expected one of {COMMANDS}")
        rule = Fault(command, reply, address, delay, drop, times)
        self.faults.append(rule)
        return rule

    def hold_after(self, accepted: int) -> asyncio.Event:
        """Once `accepted` messages were accepted, every further DATA is read but its reply
        waits until the returned event is set: the client cannot finish before the test
        lets it (a server that stalls mid-way through a large send)."""
        self.data_gate = asyncio.Event()
        self.data_gate_after = accepted
        return self.data_gate

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls_cert.configure_cert(ctx)
        return ctx

    def _authenticate(
        self,
        server: _SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert self.auth is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = user in self.auth and self.auth[user] == password
        self.auth_attempts.append((user, ok))
        # handled=False makes aiosmtpd send the standard 535 reply on failure.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def start(self) -> None:
        """Start listening on ``host`` (127.0.0.1) and ``port`` (0: ephemeral; sets ``port``)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()
        ctx = self._ssl_context()
        starttls_ctx = None if self.implicit_tls else ctx
        listen_ctx = ctx if self.implicit_tls else None
        kwargs: dict[str, Any] = {
            "hostname": "smtp.test.invalid",
            "tls_context": starttls_ctx,
            "require_starttls": self.require_starttls and starttls_ctx is not None,
            "loop": loop,
        }
        if self.auth is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                # aiosmtpd cannot tell that an implicit-TLS socket is encrypted, so only
                # insist on TLS for AUTH when STARTTLS is what provides it.
                auth_require_tls=starttls_ctx is not None,
            )

        def factory() -> _SMTP:
            session_id = self.connections
            self.connections += 1
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
                proto = _SMTP(self, session_id, self._handler, **kwargs)
            self._protocols.append(proto)
            return proto

        self._server = await loop.create_server(factory, self.host, self.port, ssl=listen_ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and abort every client connection still open."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = []
        for proto in self._protocols:
            # Abort both layers: aborting only the TLS layer mid-handshake (client gave up on
            # STARTTLS) leaves aiosmtpd waiting for input that can never arrive.
            # A transport already closing is left alone: on Python 3.11.2 (Debian 12's) abort()
            # of a TLS transport closed twice raises AttributeError (fixed in 3.11.3).
            for transport in (proto.transport, proto._original_transport):
                if isinstance(transport, asyncio.Transport) and not transport.is_closing():
                    transport.abort()
            if proto._handler_coroutine is not None:
                proto._handler_coroutine.cancel()
                tasks.append(proto._handler_coroutine)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # aiosmtpd may re-raise ConnectionResetError; mark retrieved
        await server.wait_closed()
        self._protocols.clear()

    async def _wait_for(self, n: int, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while len(self.received) < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"expected {n} messages within {timeout}s, got {len(self.received)}"
            ) from None

    def wait_for(self, n: int, timeout: float = 10) -> Awaitable[None]:
        """Wait until at least ``n`` messages were received; raise TimeoutError otherwise."""
        return self._wait_for(n, timeout)
