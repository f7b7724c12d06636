"""SMTP transactions on an open connection: our own asyncio protocol, pipelined when offered.

aiosmtplib opens the connection (TCP or TLS, greeting, EHLO, STARTTLS, AUTH); then
`SmtpSession.take_over` moves its transport to `ReplyReader`, and every transaction (MAIL,
RCPT, DATA and the body), RSET and QUIT go through here. When the server advertises
PIPELINING (RFC 2920) the envelope, MAIL, every RCPT and DATA, goes out in one write and
its replies are read together; and a message's body goes out with the next message's
envelope in one write (§3.1: the content may be the first command of a pipelined group), so
a connection kept busy costs one round trip a message. aiosmtplib cannot pipeline (its
protocol drops a reply that comes before the previous one was awaited), and its
per-command machinery cost more CPU than the rest of the robot's work per message
(docs/benchmarks.md).

No I/O policy lives here: the caller (robot.send.relay) decides what a reply means.
"""

from __future__ import annotations

import asyncio
import functools
import re
from typing import NamedTuple, cast

import aiosmtplib

MAX_LINE = 8192  # one reply line; RFC 5321 asks for 512, real servers stay far below 8192
MAX_PENDING = 4 * MAX_LINE  # unparsed bytes: bounds memory against a server that streams junk
BODY_CHUNK = 256 * 1024  # bodies above this are written piecewise, waiting for the socket
LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
LEADING_DOT = re.compile(rb"(?m)^\.")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # CONTROL but the newline


def printable(text: str) -> str:
    """`text` from a server with every control character made visible: a tab becomes a
    space, any other C0 character or DEL a `\\xNN` escape. Whatever a server sends is
    stored and logged: PostgreSQL text cannot hold a NUL (the group commit would fail for
    ever), and a terminal must not be handed escape sequences. Newlines are kept: they
    join the lines of a multi-line reply."""
    if not UNPRINTABLE.search(text):
        return text
    return UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return " " if char == "\t" else f"\\x{ord(char):02x}"


class SmtpReply(NamedTuple):
    """One server reply: the basic code and the text of every line, joined by newlines."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        """A 2xx reply."""
        return 200 <= self.code < 300


class SessionBroken(Exception):
    """The connection dropped or the server stopped answering. `replies` are those that
    came first (in a pipelined exchange, the replies to the earlier commands); `written`
    says that every byte had been written before (the server may have acted on them)."""

    def __init__(
        self, reason: str, replies: list[SmtpReply], *, timed_out: bool, written: bool = False
    ) -> None:
        super().__init__(reason)
        self.replies = replies
        self.timed_out = timed_out
        self.written = written


class MalformedReply(Exception):
    """The server sent something that is not an SMTP reply."""


def parse_reply(buffer: bytes | bytearray, start: int = 0) -> tuple[SmtpReply, int] | None:
    """The complete reply at `buffer[start:]` and the offset after it, or None when its last
    line has not come yet. Control characters in its text are escaped (`printable`).
    Raises MalformedReply for a line without a 3-digit code."""
    code = -1
    texts = []
    offset = start
    while True:
        end = buffer.find(b"\n", offset)
        if end < 0:
            if len(buffer) - offset > MAX_LINE:
                raise MalformedReply(f"reply line longer than {MAX_LINE} bytes")
            return None
        line = bytes(buffer[offset : end + 1])
        if len(line) > MAX_LINE:
            raise MalformedReply(f"reply line longer than {MAX_LINE} bytes")
        line_code, text = _reply_line(line)
        if code >= 0 and line_code != code:
            raise MalformedReply(_malformed(line))
        code = line_code
        texts.append(text)
        offset = end + 1
        if line[3:4] != b"-":
            return SmtpReply(code, "\n".join(texts)), offset


@functools.lru_cache(maxsize=128)
def _reply_line(line: bytes) -> tuple[int, str]:
    """The code and the printable text of one reply line; a server says the same few lines
    again and again (MAIL, RCPT, DATA), so each is read once."""
    head = line[:3]
    if not head.isdigit():
        raise MalformedReply(_malformed(line))
    return int(head), printable(line[4:].strip(b" \t\r\n").decode("utf-8", "replace"))


def _malformed(line: bytes) -> str:
    shown = line.decode("utf-8", "replace").strip()[:80]
    return f"malformed SMTP reply line: {shown!r}"


def data_payload(message: bytes) -> bytes:
    """The message as it goes after DATA: CRLF line endings, leading dots doubled, and the
    terminating "." line (RFC 5321 4.5.2)."""
    if _has_bare_ending(message):
        message = LINE_ENDINGS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = LEADING_DOT.sub(b"..", message)
    return message + b".\r\n"


def _has_bare_ending(message: bytes) -> bool:
    """A CR or LF that is not part of a CRLF pair."""
    pairs = message.count(b"\r\n")
    return message.count(b"\r") != pairs or message.count(b"\n") != pairs


def path(address: str) -> bytes:
    """`<address>` for MAIL FROM or RCPT TO. Raises ValueError for a control character (a
    line break would smuggle a command) or a non-ASCII address (no SMTPUTF8)."""
    if CONTROL.search(address) or "<" in address or ">" in address or not address.isascii():
        raise ValueError(f"address {address!r} cannot go on an SMTP command line")
    return b"<" + address.encode("ascii") + b">"


def envelope_commands(mail: bytes, recipients: list[bytes]) -> list[bytes]:
    """MAIL FROM:`mail`, RCPT TO: each of `recipients` and DATA, each a line."""
    commands = [b"MAIL FROM:" + mail + b"\r\n"]
    commands += [b"RCPT TO:" + rcpt + b"\r\n" for rcpt in recipients]
    commands.append(b"DATA\r\n")
    return commands


class ReplyReader(asyncio.Protocol):
    """Reads the replies of an SMTP connection whose transport it was given.

    `exchange` writes bytes and waits for a number of replies. A reply with nobody waiting
    for it is dropped, like aiosmtplib does, so stray data cannot be paired with a later
    command. A reply whose lines are split across reads, several replies in one read and
    multi-line replies are all handled.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: list[SmtpReply] = []
        self._wanted = 0
        self._waiter: asyncio.Future[bool] | None = None  # True: replies came or it broke
        self._broken: str | None = None  # why the connection is unusable
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None

    @property
    def usable(self) -> bool:
        """The connection is up and in step with the server."""
        return self._broken is None and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        if not self._wanted:
            return
        buffer = self._buffer
        buffer += data
        offset = 0
        try:
            while self._wanted:
                parsed = parse_reply(buffer, offset)
                if parsed is None:
                    break
                reply, offset = parsed
                self._replies.append(reply)
                self._wanted -= 1
        except MalformedReply as exc:
            self._break(str(exc))
            self.transport.abort()
            return
        del buffer[:offset]
        if not self._wanted:
            buffer.clear()  # anything after the replies we wanted is unsolicited
            self._wake()
        elif len(buffer) > MAX_PENDING:
            self._break(f"reply longer than {MAX_PENDING} bytes")
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(f"connection dropped ({exc})" if exc else "connection dropped")
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def exchange(
        self,
        data: bytes,
        replies: int,
        timeout: float,
        write_timeout: float | None = None,
        first_timeout: float | None = None,
    ) -> list[SmtpReply]:
        """Write `data`, then return the next `replies` replies. The server gets `timeout`
        seconds for each of them (`first_timeout`, if given, for the first), and
        `write_timeout` (else `timeout`) to take each chunk of a large `data`. Raises
        SessionBroken when the connection drops, a reply is malformed or does not come in
        time: the connection is then no longer usable."""
        if self._broken is not None:
            raise SessionBroken(self._broken, [], timed_out=False)
        self._replies = []
        self._wanted = replies
        if len(data) > BODY_CHUNK:
            written = await self._write_piecewise(data, write_timeout or timeout)
        else:
            self.transport.write(data)
            written = True
        while self._wanted and self._broken is None:
            got = len(self._replies)
            limit = first_timeout if first_timeout is not None and not got else timeout
            # A plain timer rather than asyncio.timeout(), which asks for the running loop
            # and task, each a getpid() system call on Python 3.11: two exchanges a message.
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(limit, _expire, waiter)
            try:
                in_time = await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not in_time and len(self._replies) == got:
                self._broken = f"timed out after {limit:g} s waiting for a reply"
                self.transport.abort()
                raise SessionBroken(self._broken, self._replies, timed_out=True, written=written)
        if self._wanted:
            assert self._broken is not None
            raise SessionBroken(self._broken, self._replies, timed_out=False, written=written)
        return self._replies

    async def _write_piecewise(self, data: bytes, timeout: float) -> bool:
        """Write a large body a chunk at a time, giving the socket `timeout` seconds to take
        each: a slow link is not a dead server, whatever the size of the message. False
        when the connection dropped before the last chunk was written."""
        view = memoryview(data)
        for start in range(0, len(data), BODY_CHUNK):
            if self._broken is not None:
                return False
            self.transport.write(view[start : start + BODY_CHUNK])
            if self._paused:
                self._resumed = self._loop.create_future()
                try:
                    async with asyncio.timeout(timeout):
                        await self._resumed
                except TimeoutError:
                    self._broken = f"timed out after {timeout:g} s writing the message"
                    self.transport.abort()
                    raise SessionBroken(self._broken, [], timed_out=True) from None
                finally:
                    self._resumed = None
        return True


def _expire(waiter: asyncio.Future[bool]) -> None:
    """The timer of an exchange: no reply in time."""
    if not waiter.done():
        waiter.set_result(False)


class SmtpSession:
    """An SMTP connection after EHLO (and STARTTLS, AUTH): transactions, RSET, QUIT.

    Every reply gets `timeout` seconds but the one to the end of a message, which gets
    `data_timeout` (RFC 5321 §4.5.3.2.6: 10 minutes, as Postfix waits): given up on sooner,
    a message the server accepts late is sent again.
    """

    def __init__(
        self,
        reader: ReplyReader,
        extensions: dict[str, str],
        timeout: float,
        data_timeout: float | None = None,
    ) -> None:
        self.reader = reader
        self.extensions = extensions  # EHLO keywords, lower-case -> parameters
        self.timeout = timeout
        self.data_timeout = data_timeout or timeout

    @classmethod
    def take_over(
        cls, smtp: aiosmtplib.SMTP, timeout: float, data_timeout: float | None = None
    ) -> SmtpSession:
        """Move an aiosmtplib connection, already greeted, to a ReplyReader."""
        transport = smtp.transport  # uvloop's transports are not asyncio.Transport subclasses
        if transport is None or transport.is_closing():
            raise SessionBroken("connection dropped", [], timed_out=False)
        reader = ReplyReader(cast(asyncio.Transport, transport))
        transport.set_protocol(reader)
        return cls(reader, dict(smtp.esmtp_extensions), timeout, data_timeout)

    @property
    def is_open(self) -> bool:
        """The connection can carry another command."""
        return self.reader.usable

    @property
    def pipelining(self) -> bool:
        """The server offered PIPELINING: the envelope goes in one write."""
        return "pipelining" in self.extensions

    def supports(self, extension: str) -> bool:
        """The server offered this EHLO keyword (any case)."""
        return extension.lower() in self.extensions

    async def envelope(self, mail: bytes, recipients: list[bytes]) -> list[SmtpReply]:
        """MAIL FROM:`mail`, RCPT TO: each of `recipients`, DATA; their replies in order.

        Pipelined: all in one write, every reply read. Otherwise one at a time, stopping
        after a refused MAIL or after the last RCPT when none was accepted (the list is
        then shorter). Raises SessionBroken with the replies that came before it broke.
        """
        commands = envelope_commands(mail, recipients)
        if self.pipelining:
            return await self.reader.exchange(b"".join(commands), len(commands), self.timeout)
        replies: list[SmtpReply] = []
        for index, command in enumerate(commands):
            try:
                (reply,) = await self.reader.exchange(command, 1, self.timeout)
            except SessionBroken as exc:
                exc.replies = replies
                raise
            replies.append(reply)
            if index == 0 and not reply.ok:
                break
            if index == len(recipients) and not any(r.ok for r in replies[1:]):
                break
        return replies

    async def body(self, message: bytes) -> SmtpReply:
        """Send the message after a 354 to DATA; the server's reply to it, given
        `data_timeout` seconds. Raises SessionBroken; its `written` says that the whole
        message went out first, so that the server may have accepted it."""
        payload = data_payload(message)
        (reply,) = await self.reader.exchange(payload, 1, self.data_timeout, self.timeout)
        return reply

    async def body_then_envelope(
        self, message: bytes, mail: bytes, recipients: list[bytes]
    ) -> list[SmtpReply]:
        """Send the message after a 354 and, in the same write, the next message's envelope
        (only when the server offers PIPELINING: RFC 2920 §3.1 lets the content be the first
        command of a group). The reply to the message (given `data_timeout` seconds), then
        those to MAIL, each RCPT and DATA. Raises SessionBroken with the replies that came
        first; its `written` says that every byte went out."""
        assert self.pipelining
        payload = data_payload(message) + b"".join(envelope_commands(mail, recipients))
        return await self.reader.exchange(
            payload, len(recipients) + 3, self.timeout, first_timeout=self.data_timeout
        )

    async def end_empty(self) -> SmtpReply:
        """Close a DATA that a server accepted although the envelope failed: a lone "."."""
        (reply,) = await self.reader.exchange(b".\r\n", 1, self.timeout)
        return reply

    async def command(self, line: bytes, timeout: float | None = None) -> SmtpReply:
        """One command without arguments (RSET, NOOP, QUIT) and its reply."""
        (reply,) = await self.reader.exchange(line + b"\r\n", 1, timeout or self.timeout)
        return reply

    def close(self) -> None:
        """Close the socket (after QUIT, or without it)."""
        self.reader.transport.close()
