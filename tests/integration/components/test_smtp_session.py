"""robot.send.protocol through robot.send.relay.SmtpConnection, on real sockets.

Most servers here are written by hand (`RawSmtpServer`): each test scripts the bytes it
answers and reads what the robot sent exactly as it came, so pipelining, split replies,
garbage and silence can be checked at the byte level. The large-body and multi-recipient
tests use the aiosmtpd-based TestSMTPServer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from robot.compose.message import Composed
from robot.config import Account, load_settings
from robot.errors import TransportFault
from robot.outcome.judge import deciding_refusal
from robot.send.attempt import Attempt, Refusal, Reply, Stage
from robot.send.protocol import BODY_CHUNK, data_payload
from robot.send.relay import Relay, SmtpConnection
from tests.conftest import WriteIni
from tests.support.smtpd import TestSMTPServer

WAIT = 5.0  # how long a scripted server waits for the robot's next bytes
SENDER = "robot@example.org"
EHLO = b"EHLO robot.test.example"
BODY = b"Subject: test\r\nMessage-ID: <m@example.org>\r\n\r\nHello.\r\n.hidden dot\r\n"
MODES = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])


class Wire:
    """The server's end of one connection: reads lines and bodies, records every byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reads: list[bytes] = []  # each chunk as one read returned it
        self.commands: list[bytes] = []  # each line read by line(), without its CRLF
        self.bodies: list[bytes] = []  # each message read by body(), dot-stuffed, with "."
        self.closed_by_client = False
        self._pending = bytearray()

    async def _read(self, timeout: float | None, size: int = 65536) -> bool:
        """Read one chunk into the pending bytes; False once the client closed."""
        try:
            async with asyncio.timeout(timeout):
                chunk = await self.reader.read(size)
        except ConnectionError:
            chunk = b""
        if not chunk:
            self.closed_by_client = True
            return False
        self.reads.append(chunk)
        self._pending += chunk
        return True

    async def line(self, timeout: float | None = WAIT) -> bytes:
        """The next command line without its CRLF; b"" when the client closed first."""
        while (end := self._pending.find(b"\r\n")) < 0:
            if not await self._read(timeout):
                return b""
        line = bytes(self._pending[:end])
        del self._pending[: end + 2]
        self.commands.append(line)
        return line

    async def lines_until(self, last: bytes) -> list[bytes]:
        """Command lines up to and including `last`, without answering any of them."""
        lines = [await self.line()]
        while lines[-1] not in (last, b""):
            lines.append(await self.line())
        return lines

    async def body(self, read_size: int = 65536, pause: float = 0.0) -> bytes:
        """The message after a 354, up to and including its "." line; read `read_size`
        bytes at a time, `pause` seconds apart (a slow link)."""
        searched = 0  # the end was not before this offset: search each byte once
        while (end := self._pending.find(b"\r\n.\r\n", searched)) < 0:
            if self._pending.startswith(b".\r\n"):
                break
            searched = max(0, len(self._pending) - 4)
            if not await self._read(WAIT, read_size):
                raise ConnectionError("client closed in the middle of DATA")
            await asyncio.sleep(pause)
        size = 3 if end < 0 else end + 5
        body = bytes(self._pending[:size])
        del self._pending[:size]
        self.bodies.append(body)
        return body

    async def quiet(self, seconds: float) -> bool:
        """True when the client sends nothing more within `seconds`."""
        if self._pending:
            return False
        try:
            return not await self._read(seconds)
        except TimeoutError:
            return True

    async def send(self, data: bytes, piece: int | None = None) -> None:
        """Write `data` in one write, or `piece` bytes per write with a pause between."""
        if piece is None:
            self.writer.write(data)
            await self.writer.drain()
            return
        for start in range(0, len(data), piece):
            self.writer.write(data[start : start + piece])
            await self.writer.drain()
            await asyncio.sleep(0.001)  # let each piece reach the robot on its own

    async def answer(self, replies: Sequence[bytes]) -> None:
        """Read one command per reply and answer it: a server that never pipelines."""
        for reply in replies:
            await self.line()
            await self.send(reply)

    async def eof(self) -> None:
        """Wait, answering nothing, until the client closes the connection."""
        while await self._read(WAIT):
            pass

    async def serve(self) -> None:
        """Answer like a plain server that accepts everything, until QUIT or the client closes."""
        while command := await self.line(timeout=None):
            verb = command[:4].upper()
            if verb == b"QUIT":
                await self.send(b"221 2.0.0 Bye\r\n")
                return
            if verb == b"DATA":
                await self.send(b"354 Go ahead\r\n")
                await self.body()
                await self.send(b"250 2.0.0 Ok: queued\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                await self.send(b"250 2.0.0 Ok\r\n")
            else:
                await self.send(b"500 5.5.2 What?\r\n")


Script = Callable[[Wire], Awaitable[None]]


class RawSmtpServer:
    """An SMTP server written by hand on 127.0.0.1:<ephemeral>: greets, answers EHLO with
    `extensions`, runs the test's `script` on the connection, then `Wire.serve`s the rest."""

    def __init__(self, script: Script, extensions: Sequence[str]) -> None:
        self.script = script
        self.extensions = extensions
        self.port = 0
        self.wires: list[Wire] = []
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        wire = Wire(reader, writer)
        self.wires.append(wire)
        try:
            await wire.send(b"220 raw.test ESMTP\r\n")
            if await wire.line() != EHLO:
                raise AssertionError(f"expected {EHLO!r} first, got {wire.commands!r}")
            keywords = ["raw.test", *self.extensions]
            await wire.send(
                b"".join(
                    b"250%s%s\r\n" % (b" " if n == len(keywords) - 1 else b"-", word.encode())
                    for n, word in enumerate(keywords)
                )
            )
            await self.script(wire)
            if not wire.closed_by_client:
                await wire.serve()
        except Exception as exc:
            self.errors.append(exc)
        except asyncio.CancelledError:
            pass  # stop(): the test is over; ending quietly spares asyncio's error log
        finally:
            writer.close()

    async def finished(self) -> None:
        """Wait until every connection's script and serving are over."""
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        """Close the listener and every connection; re-raise what went wrong in a script."""
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if self.errors:
            raise self.errors[0]


@asynccontextmanager
async def raw_server(
    script: Script, *, pipelining: bool = True, extensions: Sequence[str] = ()
) -> AsyncIterator[RawSmtpServer]:
    """A running RawSmtpServer, stopped on exit."""
    server = RawSmtpServer(script, [*(["PIPELINING"] if pipelining else []), *extensions])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def ending(attempt: Attempt) -> Refusal:
    """The refusal that decides a row none of whose recipients was reached."""
    assert attempt.accepted_reply is None and attempt.fault is None, attempt
    return deciding_refusal(attempt.refusals)


def accepted_code(attempt: Attempt) -> int | None:
    assert attempt.accepted_reply is not None, attempt
    return attempt.accepted_reply.code


@asynccontextmanager
async def connected(account: Account) -> AsyncIterator[SmtpConnection]:
    """An open SmtpConnection of `account`, closed (QUIT) on exit."""
    connection = SmtpConnection(account)
    await connection.open()
    try:
        yield connection
    finally:
        await connection.close()


AccountFor = Callable[..., Account]


@pytest.fixture
def account_for(write_ini: WriteIni, tmp_path: Path) -> AccountFor:
    """The default account of a robot.ini sending to 127.0.0.1:`port`."""

    def make(port: int, timeout: float = WAIT, data_timeout: float | None = None) -> Account:
        extra = f"[smtp]\ntimeout_seconds = {timeout}\n"
        if data_timeout is not None:
            extra += f"data_timeout_seconds = {data_timeout}\n"
        ini = write_ini(f"sqlite:///{tmp_path}/unused.db", port, extra)
        return load_settings(ini, environ={}).default_account

    return make


def message(*recipients: str, data: bytes = BODY) -> Composed:
    """A composed message from SENDER to `recipients` (default a@example.org)."""
    return Composed(SENDER, recipients or ("a@example.org",), data, "<m@example.org>")


def envelope_ok(recipients: int) -> bytes:
    """The replies of a server that accepts MAIL, every RCPT and DATA."""
    return b"250 2.1.0 Ok\r\n" + b"250 2.1.5 Ok\r\n" * recipients + b"354 Go ahead\r\n"


# -- (a) replies however they are split -----------------------------------------------------


@pytest.mark.parametrize(
    "piece", [None, 1, 7], ids=["all in one write", "one byte per write", "7 bytes per write"]
)
async def test_pipelined_replies_are_paired_however_they_are_split(
    account_for: AccountFor, piece: int | None
) -> None:
    envelope_replies = (
        b"250-2.1.0 Sender\r\n250 2.1.0 ok\r\n"
        b"250 2.1.5 first ok\r\n"
        b"250-2.1.5 second\r\n250 2.1.5 ok\r\n"
        b"354-Go\r\n354 ahead\r\n"
    )

    async def script(wire: Wire) -> None:
        await wire.lines_until(b"DATA")
        await wire.send(envelope_replies, piece)
        await wire.body()
        await wire.send(b"250-2.0.0 Ok\r\n250 2.0.0 queued as 4F2A\r\n", piece)

    async with raw_server(script) as server:
        async with connected(account_for(server.port)) as connection:
            result, _ = await connection.send(message("a@example.org", "b@example.org"))
            assert result.accepted_reply == Reply(250, "2.0.0 Ok\n2.0.0 queued as 4F2A")
            assert result.refusals == ()
            assert connection.is_open
            second, _ = await connection.send(
                message("c@example.org", data=b"Subject: 2\r\n\r\nx\r\n")
            )
            assert second.accepted_reply == Reply(250, "2.0.0 Ok: queued")
        await server.finished()
    (wire,) = server.wires
    assert wire.bodies == [data_payload(BODY), b"Subject: 2\r\n\r\nx\r\n.\r\n"]
    assert wire.commands[-1] == b"QUIT"


@pytest.mark.parametrize("when", ["in the same write", "while idle"])
async def test_an_unsolicited_reply_is_not_taken_for_the_next_command(
    account_for: AccountFor, when: str
) -> None:
    stray_sent = asyncio.Event()

    async def script(wire: Wire) -> None:
        await wire.lines_until(b"DATA")
        await wire.send(envelope_ok(1))
        await wire.body()
        stray = b"250 2.0.0 stray, nobody asked\r\n"
        if when == "in the same write":
            await wire.send(b"250 2.0.0 Ok\r\n" + stray)
        else:
            await wire.send(b"250 2.0.0 Ok\r\n")
            await asyncio.sleep(0.05)
            await wire.send(stray)
        stray_sent.set()
        await wire.lines_until(b"DATA")
        await wire.send(b"550 5.7.1 Sender blocked\r\n503 5.5.1 No MAIL\r\n503 5.5.1 No MAIL\r\n")

    async with raw_server(script) as server:
        async with connected(account_for(server.port)) as connection:
            await connection.send(message())
            await stray_sent.wait()
            await asyncio.sleep(0.05)  # the stray reply reaches the robot's socket before MAIL
            refused, _ = await connection.send(message())
            assert connection.is_open
        await server.finished()
    # taken for the reply to MAIL, the stray 250 would shift every reply by one
    assert ending(refused).reply == Reply(550, "5.7.1 Sender blocked", Stage.MAIL)
    assert server.wires[0].commands[-2:] == [b"RSET", b"QUIT"]


# -- (b) 354 to DATA although the envelope failed (RFC 2920 3.1) -----------------------------


@pytest.mark.parametrize(
    ("envelope_replies", "stage", "reply"),
    [
        (
            b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n550 5.1.1 Unknown\r\n354 Go ahead\r\n",
            "rcpt",
            "5.1.1 No such user",
        ),
        (
            b"550 5.7.1 Sender blocked\r\n503 5.5.1 No MAIL\r\n503 5.5.1 No MAIL\r\n354 Go\r\n",
            "mail",
            "5.7.1 Sender blocked",
        ),
    ],
    ids=["every RCPT refused", "MAIL refused"],
)
async def test_a_data_accepted_after_a_failed_envelope_is_ended_with_a_lone_dot(
    account_for: AccountFor, envelope_replies: bytes, stage: str, reply: str
) -> None:
    async def script(wire: Wire) -> None:
        await wire.lines_until(b"DATA")
        await wire.send(envelope_replies)
        await wire.answer([b"554 5.5.1 No valid recipients\r\n", b"250 2.0.0 Reset\r\n"])

    recipients = ("gone@example.org", "unknown@example.org")
    async with raw_server(script) as server:
        async with connected(account_for(server.port)) as connection:
            refused, _ = await connection.send(message(*recipients))
            assert connection.is_open
            result, _ = await connection.send(message("next@example.org"))
        await server.finished()
    error = ending(refused)
    # the result is the refusal of the envelope, not the 554 to the lone "."
    assert (error.reply.code, error.reply.text, error.reply.stage) == (550, reply, stage)
    if stage == "rcpt":
        assert error.about == "gone@example.org"
        assert [(r.about, r.reply.line()) for r in refused.refusals] == [
            ("gone@example.org", "550 5.1.1 No such user"),
            ("unknown@example.org", "550 5.1.1 Unknown"),
        ]
    assert accepted_code(result) == 250
    (wire,) = server.wires
    assert wire.commands[:8] == [
        EHLO,
        b"MAIL FROM:<robot@example.org>",
        b"RCPT TO:<gone@example.org>",
        b"RCPT TO:<unknown@example.org>",
        b"DATA",
        b".",  # nothing of the message: a lone dot right after DATA
        b"RSET",
        b"MAIL FROM:<robot@example.org>",
    ]
    assert wire.bodies == [data_payload(BODY)]  # only the next message's


# -- (c) garbage -----------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize(
    ("replies", "stage"),
    [([b"hello\r\n"], "mail"), ([b"250 2.1.0 Ok\r\n", b"hello\r\n"], "rcpt")],
    ids=["garbage for MAIL", "garbage for RCPT"],
)
async def test_a_garbage_reply_defers_and_closes_the_connection(
    account_for: AccountFor, pipelining: bool, replies: list[bytes], stage: str
) -> None:
    async def script(wire: Wire) -> None:
        await wire.answer(replies)
        await wire.eof()

    async with raw_server(script, pipelining=pipelining) as server:
        async with connected(account_for(server.port)) as connection:
            refused, before_data = await connection.send(message())
            assert not connection.is_open
        await server.finished()
    error = ending(refused).reply
    assert "malformed SMTP reply line: 'hello'" in error.text
    assert (error.code, error.stage, before_data) == (None, stage, True)
    (wire,) = server.wires
    assert wire.closed_by_client
    assert b"QUIT" not in b"".join(wire.reads)  # the connection is out of step: no QUIT
    assert wire.bodies == []


# -- (d) silence -----------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize(
    ("answered", "stage", "before_data"),
    [
        (0, "mail", True),
        (1, "rcpt", True),
        (2, "data", True),
        (3, "data", False),
    ],
    ids=["silent at MAIL", "silent at RCPT", "silent at DATA", "silent after the body"],
)
async def test_a_server_that_stops_answering_defers_after_timeout_seconds(
    account_for: AccountFor, pipelining: bool, answered: int, stage: str, before_data: bool
) -> None:
    async def script(wire: Wire) -> None:
        await wire.answer([b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 Go\r\n"][:answered])
        if answered == 3:
            await wire.body()
        await wire.eof()

    async with raw_server(script, pipelining=pipelining) as server:
        account = account_for(server.port, timeout=0.4, data_timeout=0.4)
        async with connected(account) as connection:
            started = time.monotonic()
            refused, broke_before_data = await connection.send(message())
            waited = time.monotonic() - started
            assert not connection.is_open
        await server.finished()
    error = ending(refused).reply
    assert "timed out after 0.4 s" in error.text
    assert error.code is None
    assert broke_before_data is before_data
    assert ending(refused).maybe_delivered is (answered == 3)  # the message went out whole
    assert 0.35 < waited < 1.2  # one timeout_seconds, not several
    assert len(server.wires[0].bodies) == (1 if answered == 3 else 0)
    assert error.stage == stage


async def test_the_reply_to_the_message_gets_data_timeout_seconds_not_timeout_seconds(
    account_for: AccountFor,
) -> None:
    """RFC 5321 §4.5.3.2.6: ten minutes for the reply to the final "." (a server may scan
    the message first). Given up after timeout_seconds, a message the server then accepts
    was sent again: delivered twice."""

    async def script(wire: Wire) -> None:
        await wire.lines_until(b"DATA")
        await wire.send(envelope_ok(1))
        await wire.body()
        await asyncio.sleep(0.8)  # past timeout_seconds, well within data_timeout_seconds
        await wire.send(b"250 2.0.0 Ok: queued after a long scan\r\n")

    async with raw_server(script) as server:
        async with connected(account_for(server.port, timeout=0.3)) as connection:
            started = time.monotonic()
            result, _ = await connection.send(message())
            waited = time.monotonic() - started
            assert connection.is_open
        await server.finished()
    assert result.accepted_reply == Reply(250, "2.0.0 Ok: queued after a long scan")
    assert waited > 0.8
    assert server.wires[0].bodies == [data_payload(BODY)]


@pytest.mark.parametrize("how", ["silent", "dropped"])
async def test_a_message_whose_reply_never_comes_may_have_been_delivered(
    account_for: AccountFor, how: str
) -> None:
    async def script(wire: Wire) -> None:
        await wire.lines_until(b"DATA")
        await wire.send(envelope_ok(1))
        await wire.body()
        if how == "silent":
            await wire.eof()
        else:
            wire.writer.transport.abort()

    async with raw_server(script) as server:
        account = account_for(server.port, timeout=WAIT, data_timeout=0.4)
        async with connected(account) as connection:
            started = time.monotonic()
            refused, before_data = await connection.send(message())
            waited = time.monotonic() - started
            assert not connection.is_open
        await server.finished()
    ended = ending(refused)
    assert ended.maybe_delivered and ended.recipients == ("a@example.org",)
    assert (ended.reply.code, ended.reply.stage, before_data) == (None, "data", False)
    expected = "timed out after 0.4 s" if how == "silent" else "connection dropped"
    assert expected in ended.reply.text
    assert waited < 2  # data_timeout_seconds (0.4), not timeout_seconds (5)
    assert server.wires[0].bodies == [data_payload(BODY)]


# -- (e) without PIPELINING: one command at a time -------------------------------------------


async def test_without_pipelining_each_command_waits_for_the_reply_to_the_last(
    account_for: AccountFor,
) -> None:
    alone: list[bool] = []

    async def script(wire: Wire) -> None:
        for reply in [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 Go\r\n"]:
            await wire.line()
            alone.append(await wire.quiet(0.2))  # nothing else comes before this reply
            await wire.send(reply)
        await wire.body()
        await wire.send(b"250 2.0.0 Ok\r\n")

    async with raw_server(script, pipelining=False) as server:
        async with connected(account_for(server.port)) as connection:
            result, _ = await connection.send(message("a@example.org", "b@example.org"))
        await server.finished()
    assert accepted_code(result) == 250
    assert alone == [True, True, True, True]
    assert server.wires[0].commands == [
        EHLO,
        b"MAIL FROM:<robot@example.org>",
        b"RCPT TO:<a@example.org>",
        b"RCPT TO:<b@example.org>",
        b"DATA",
        b"QUIT",
    ]


@pytest.mark.parametrize(
    ("replies", "stage", "sent"),
    [
        ([b"550 5.7.1 Sender blocked\r\n"], "mail", [b"MAIL FROM:<robot@example.org>"]),
        (
            [b"250 2.1.0 Ok\r\n", b"550 5.1.1 No such user\r\n", b"550 5.1.1 Unknown\r\n"],
            "rcpt",
            [
                b"MAIL FROM:<robot@example.org>",
                b"RCPT TO:<a@example.org>",
                b"RCPT TO:<b@example.org>",
            ],
        ),
    ],
    ids=["MAIL refused: no RCPT", "every RCPT refused: no DATA"],
)
async def test_without_pipelining_a_failed_envelope_stops_at_once(
    account_for: AccountFor, replies: list[bytes], stage: str, sent: list[bytes]
) -> None:
    async def script(wire: Wire) -> None:
        await wire.answer(replies)

    async with raw_server(script, pipelining=False) as server:
        async with connected(account_for(server.port)) as connection:
            refused, _ = await connection.send(message("a@example.org", "b@example.org"))
            assert connection.is_open
        await server.finished()
    assert (ending(refused).reply.code, ending(refused).reply.stage) == (550, stage)
    assert server.wires[0].commands == [EHLO, *sent, b"RSET", b"QUIT"]


# -- (f) with PIPELINING: the envelope in one write ------------------------------------------


async def test_with_pipelining_the_envelope_comes_in_one_write_before_any_reply(
    account_for: AccountFor,
) -> None:
    envelope: list[bytes] = []

    async def script(wire: Wire) -> None:
        envelope.extend(await wire.lines_until(b"DATA"))  # answering nothing meanwhile
        await wire.send(envelope_ok(2))
        await wire.body()
        await wire.send(b"250 2.0.0 Ok\r\n")

    async with raw_server(script, extensions=["SIZE 10000000"]) as server:
        async with connected(account_for(server.port)) as connection:
            result, _ = await connection.send(message("a@example.org", "b@example.org"))
        await server.finished()
    assert accepted_code(result) == 250
    assert envelope == [
        b"MAIL FROM:<robot@example.org> SIZE=%d" % len(BODY),
        b"RCPT TO:<a@example.org>",
        b"RCPT TO:<b@example.org>",
        b"DATA",
    ]
    wire = server.wires[0]
    assert wire.reads[0] == EHLO + b"\r\n"
    assert wire.reads[1] == b"".join(line + b"\r\n" for line in envelope)  # one read


# -- (g) a large body ------------------------------------------------------------------------


@MODES
async def test_a_large_body_with_leading_dots_arrives_intact(
    account_for: AccountFor, pipelining: bool
) -> None:
    lines = [b"Subject: large", b""]
    for n in range(60_000):
        lines.append((b".", b"..", b".text ", b"", b"text .")[n % 5] + b"line %06d ....." % n)
        if n % 997 == 0:
            lines += [b".", b""]  # a lone dot would end DATA early if it went unstuffed
    data = b"\r\n".join(lines) + b"\r\n"
    assert len(data) > 1_000_000 and len(data_payload(data)) > 4 * BODY_CHUNK  # piecewise

    server = TestSMTPServer(pipelining=pipelining)
    await server.start()
    try:
        async with connected(account_for(server.port)) as connection:
            result, _ = await connection.send(message(data=data))
            assert connection.is_open
        assert accepted_code(result) == 250
        (received,) = server.received
        assert received.data == data
    finally:
        await server.stop()


def large_body(size: int) -> bytes:
    """A message of about `size` bytes in short lines."""
    line = b"x" * 76 + b"\r\n"
    return b"Subject: large\r\n\r\n" + line * (size // len(line))


async def test_a_large_body_to_a_slow_reader_is_not_timed_out_as_a_whole(
    account_for: AccountFor,
) -> None:
    # The kernel takes about 4 MB of a loopback socket at once (tcp_wmem): the reader must
    # drain that well within timeout_seconds, and the whole message must take longer.
    data = large_body(24_000_000)

    async def script(wire: Wire) -> None:
        await wire.lines_until(b"DATA")
        await wire.send(envelope_ok(1))
        await wire.body(read_size=65536, pause=0.003)  # 1.1 s at least, at most 20 MB/s
        await wire.send(b"250 2.0.0 Ok\r\n")

    async with raw_server(script) as server:
        async with connected(account_for(server.port, timeout=1)) as connection:
            started = time.monotonic()
            result, _ = await connection.send(message(data=data))
            waited = time.monotonic() - started
        await server.finished()
    assert accepted_code(result) == 250
    assert waited > 1  # longer than timeout_seconds in all, never that long per chunk
    assert server.wires[0].bodies == [data_payload(data)]


async def test_a_large_body_to_a_server_that_stops_reading_times_out(
    account_for: AccountFor,
) -> None:
    gave_up = asyncio.Event()

    async def script(wire: Wire) -> None:
        await wire.lines_until(b"DATA")
        await wire.send(envelope_ok(1))
        await gave_up.wait()  # reading nothing meanwhile: the socket buffers fill up
        await wire.eof()

    async with raw_server(script) as server:
        async with connected(account_for(server.port, timeout=0.4)) as connection:
            started = time.monotonic()
            refused, before_data = await connection.send(message(data=large_body(8_000_000)))
            waited = time.monotonic() - started
            gave_up.set()
            assert not connection.is_open
        await server.finished()
    assert not ending(refused).maybe_delivered  # the server never had the whole message
    error = ending(refused).reply
    assert "timed out after 0.4 s writing the message" in error.text
    assert (error.code, error.stage, before_data) == (None, "data", False)
    assert 0.35 < waited < 1.2  # one timeout_seconds, not several
    assert server.wires[0].closed_by_client


# -- (h) several recipients ------------------------------------------------------------------


@MODES
async def test_one_refused_recipient_of_several_is_reported_and_the_rest_get_the_message(
    account_for: AccountFor, pipelining: bool
) -> None:
    server = TestSMTPServer(pipelining=pipelining)
    await server.start()
    try:
        server.fault("RCPT", "550 5.1.1 No such user", address="gone@example.org")
        recipients = ("a@example.org", "gone@example.org", "c@example.org")
        async with connected(account_for(server.port)) as connection:
            result, _ = await connection.send(message(*recipients))
            assert connection.is_open
        (received,) = server.received
    finally:
        await server.stop()
    assert accepted_code(result) == 250
    assert result.accepted == ("a@example.org", "c@example.org")
    assert [(r.about, r.reply.line()) for r in result.refusals] == [
        ("gone@example.org", "550 5.1.1 No such user")
    ]
    assert received.rcpt_tos == ["a@example.org", "c@example.org"]
    assert received.data == BODY


# -- (i) a relay's limit of recipients per transaction -------------------------------------


async def limited(
    wire: Wire, limit: int, *, full: Sequence[bytes] = (), drop_at_mail: int | None = None
) -> None:
    """Answer like a relay that takes `limit` recipients a transaction (452 4.5.3 for each
    after that) and whose mailboxes `full` are full (452 4.2.2), until QUIT; abort the
    connection instead of answering the `drop_at_mail`-th MAIL."""
    taken = mails = 0
    while command := await wire.line(timeout=None):
        verb = command[:4].upper()
        if verb == b"MAIL":
            mails += 1
            if mails == drop_at_mail:
                wire.writer.transport.abort()
                await wire.eof()  # the commands already read are never answered
                return
            taken = 0
            await wire.send(b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT" and taken >= limit:
            await wire.send(b"452 4.5.3 Too many recipients\r\n")
        elif verb == b"RCPT" and command[9:-1] in full:
            await wire.send(b"452 4.2.2 Mailbox full\r\n")
        elif verb == b"RCPT":
            taken += 1
            await wire.send(b"250 2.1.5 Ok\r\n")
        elif verb == b"DATA" and not taken:
            await wire.send(b"554 5.5.1 No valid recipients\r\n")
        elif verb == b"DATA":
            await wire.send(b"354 Go ahead\r\n")
            await wire.body()
            await wire.send(b"250 2.0.0 Ok: queued\r\n")
        elif verb == b"QUIT":
            await wire.send(b"221 2.0.0 Bye\r\n")
            return
        else:
            taken = 0 if verb == b"RSET" else taken
            await wire.send(b"250 2.0.0 Ok\r\n")


def rcpts(wire: Wire) -> list[list[bytes]]:
    """The RCPT addresses of each transaction the robot began, in order."""
    transactions: list[list[bytes]] = []
    for command in wire.commands:
        if command.startswith(b"MAIL"):
            transactions.append([])
        elif command.startswith(b"RCPT"):
            transactions[-1].append(command[9:-1])
    return transactions


FIVE = tuple(f"{name}@example.org" for name in "abcde")


@MODES
async def test_recipients_over_the_relay_s_limit_go_in_further_transactions(
    account_for: AccountFor, pipelining: bool
) -> None:
    async def script(wire: Wire) -> None:
        await limited(wire, 2)

    async with raw_server(script, pipelining=pipelining) as server:
        async with connected(account_for(server.port)) as connection:
            result, _ = await connection.send(message(*FIVE))
            assert connection.is_open
        await server.finished()
    assert (result.accepted, result.refusals) == (FIVE, ())
    assert accepted_code(result) == 250
    (wire,) = server.wires
    # all five first; then as many as the relay took the first time, never more
    assert rcpts(wire) == [
        [a.encode() for a in addresses] for addresses in (FIVE, FIVE[2:4], FIVE[4:])
    ]
    assert wire.bodies == [data_payload(BODY)] * 3
    assert b"RSET" not in wire.commands


@MODES
async def test_a_452_that_is_no_limit_is_tried_once_more_then_recorded(
    account_for: AccountFor, pipelining: bool
) -> None:
    async def script(wire: Wire) -> None:
        await limited(wire, 10, full=[b"b@example.org"])

    async with raw_server(script, pipelining=pipelining) as server:
        async with connected(account_for(server.port)) as connection:
            result, _ = await connection.send(message(*FIVE[:3]))
            assert connection.is_open
        await server.finished()
    assert result.accepted == ("a@example.org", "c@example.org")
    assert [(r.about, r.reply.line(), r.ended) for r in result.refusals] == [
        ("b@example.org", "452 4.2.2 Mailbox full", False)
    ]
    (wire,) = server.wires
    assert rcpts(wire) == [
        [b"a@example.org", b"b@example.org", b"c@example.org"],
        [b"b@example.org"],
    ]
    assert wire.bodies == [data_payload(BODY)]  # the second transaction took nobody


async def test_a_connection_lost_between_transactions_does_not_send_the_message_again(
    account_for: AccountFor,
) -> None:
    """Relay.send tries a message again on a fresh connection when a reused one turns out
    dead before DATA; after a transaction took the message, that would deliver it twice."""

    async def script(wire: Wire) -> None:
        await limited(wire, 2, drop_at_mail=3)  # the warm-up, the first transaction, drop

    relay = Relay()
    async with raw_server(script) as server:
        account = account_for(server.port)
        try:
            warm_up = await relay.send(account, message("w@example.org"))
            result = await relay.send(account, message(*FIVE))
        finally:
            await relay.close()
    assert accepted_code(warm_up) == 250
    assert result.accepted == FIVE[:2]
    assert (
        [(r.recipients, r.reply.code, r.reply.stage) for r in result.refusals]
        == [
            (FIVE[2:4], None, "mail"),  # the connection dropped: deferred
            (FIVE[4:], 452, "rcpt"),  # never offered: kept out by the limit
        ]
    )
    (wire,) = server.wires  # no second connection
    assert wire.bodies == [data_payload(BODY)] * 2


# -- (j) what a server says is made printable -----------------------------------------------


@pytest.mark.parametrize(
    ("command", "reply"),
    [("EHLO", "421 4.3.2 not \x00 now"), ("MAIL", "451 4.3.0 temporary \x00 failure")],
    ids=["at EHLO: a transport fault", "at MAIL: a refusal"],
)
async def test_a_nul_in_a_server_reply_is_escaped_wherever_it_is_kept(
    account_for: AccountFor, command: str, reply: str
) -> None:
    server = TestSMTPServer()
    await server.start()
    try:
        server.fault(command, reply)
        connection = SmtpConnection(account_for(server.port))
        try:
            await connection.open()
            result, _ = await connection.send(message())
            kept = ending(result).reply.describe()
        except TransportFault as exc:
            kept = str(exc)
        finally:
            await connection.close()
    finally:
        await server.stop()
    assert "\x00" not in kept
    assert reply[4:].replace("\x00", "\\x00") in kept


# -- (k) one round trip a message: the body with the next message's envelope (RFC 2920 3.1) -


# The next message on the connection: the one object, as a worker passes it (Relay.send).
NEXT = Composed(SENDER, ("n@example.org",), b"Subject: 2\r\n\r\nsecond\r\n", "<n@example.org>")


NEXT_ENVELOPE = [b"MAIL FROM:<robot@example.org>", b"RCPT TO:<n@example.org>", b"DATA"]


async def first_with_next_envelope(wire: Wire) -> None:
    """Read the first envelope (answered) and the first body, then the next envelope,
    which must come before the body is answered: one round trip a message."""
    await wire.lines_until(b"DATA")
    await wire.send(envelope_ok(1))
    await wire.body()
    assert await wire.lines_until(b"DATA") == NEXT_ENVELOPE


@pytest.mark.parametrize(
    "piece", [None, 1, 5], ids=["all in one write", "one byte per write", "5 bytes per write"]
)
async def test_the_next_envelope_goes_in_the_write_of_the_body_and_its_replies_are_paired(
    account_for: AccountFor, piece: int | None
) -> None:
    async def script(wire: Wire) -> None:
        await first_with_next_envelope(wire)
        await wire.send(b"250-2.0.0 Ok\r\n250 2.0.0 queued 1\r\n" + envelope_ok(1), piece)
        await wire.body()
        await wire.send(b"250 2.0.0 queued 2\r\n", piece)

    async with raw_server(script) as server:
        async with connected(account_for(server.port)) as connection:
            first, _ = await connection.send(message(), then=NEXT)
            assert first.accepted_reply == Reply(250, "2.0.0 Ok\n2.0.0 queued 1")
            after, _ = await connection.send(NEXT)
            assert after.accepted_reply == Reply(250, "2.0.0 queued 2")
            assert connection.is_open
        await server.finished()
    (wire,) = server.wires
    assert wire.bodies == [data_payload(BODY), b"Subject: 2\r\n\r\nsecond\r\n.\r\n"]
    assert wire.commands == [
        EHLO,
        b"MAIL FROM:<robot@example.org>",
        b"RCPT TO:<a@example.org>",
        b"DATA",
        *NEXT_ENVELOPE,
        b"QUIT",
    ]
    # the first body's last line and the next MAIL FROM came in one read
    assert any(data_payload(BODY)[-5:] + b"MAIL FROM:" in read for read in wire.reads)


@pytest.mark.parametrize(
    ("code", "status"), [(554, "5.7.1 Message rejected"), (451, "4.3.0 Try again later")]
)
async def test_a_refused_body_is_the_first_message_s_and_the_next_goes_on(
    account_for: AccountFor, code: int, status: str
) -> None:
    async def script(wire: Wire) -> None:
        await first_with_next_envelope(wire)
        await wire.send(b"%d %s\r\n" % (code, status.encode()) + envelope_ok(1))
        await wire.body()
        await wire.send(b"250 2.0.0 Ok\r\n")

    async with raw_server(script) as server:
        async with connected(account_for(server.port)) as connection:
            refused, _ = await connection.send(message(), then=NEXT)
            after, _ = await connection.send(NEXT)
            assert connection.is_open
        await server.finished()
    assert ending(refused).reply == Reply(code, status, Stage.DATA)
    assert accepted_code(after) == 250
    assert b"RSET" not in server.wires[0].commands  # the dot ended the transaction


@pytest.mark.parametrize(
    ("replies", "code", "stage", "then"),
    [
        (
            b"550 5.7.1 Sender blocked\r\n503 5.5.1 No MAIL\r\n503 5.5.1 No MAIL\r\n",
            550,
            "mail",
            [b"RSET"],
        ),
        (
            b"451 4.3.0 Try later\r\n503 5.5.1 No MAIL\r\n354 Go ahead\r\n",
            451,
            "mail",
            [b".", b"RSET"],  # a DATA accepted after a failed envelope: ended empty
        ),
        (
            b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n554 5.5.1 No valid recipients\r\n",
            550,
            "rcpt",
            [b"RSET"],
        ),
        (
            b"250 2.1.0 Ok\r\n450 4.2.1 Try later\r\n554 5.5.1 No valid recipients\r\n",
            450,
            "rcpt",
            [b"RSET"],
        ),
    ],
    ids=["5xx to MAIL", "4xx to MAIL, 354 to DATA", "5xx to RCPT", "4xx to RCPT"],
)
async def test_a_refused_next_envelope_is_the_next_message_s(
    account_for: AccountFor, replies: bytes, code: int, stage: str, then: list[bytes]
) -> None:
    async def script(wire: Wire) -> None:
        await first_with_next_envelope(wire)
        await wire.send(b"250 2.0.0 Ok\r\n" + replies)
        await wire.answer([b"554 5.5.1 No valid recipients\r\n"] * (len(then) - 1))
        await wire.answer([b"250 2.0.0 Reset\r\n"])

    async with raw_server(script) as server:
        async with connected(account_for(server.port)) as connection:
            first, _ = await connection.send(message(), then=NEXT)
            refused, _ = await connection.send(NEXT)
            assert connection.is_open
        await server.finished()
    assert accepted_code(first) == 250
    error = ending(refused).reply
    assert (error.code, error.stage) == (code, stage)
    (wire,) = server.wires
    assert wire.commands[-len(then) - 1 :] == [*then, b"QUIT"]
    assert wire.bodies == [data_payload(BODY)]


async def test_a_421_to_the_next_mail_is_that_message_s_and_not_tried_again(
    account_for: AccountFor,
) -> None:
    async def script(wire: Wire) -> None:
        await first_with_next_envelope(wire)
        await wire.send(b"250 2.0.0 Ok\r\n421 4.7.0 Too many errors, closing\r\n")
        wire.writer.close()
        await wire.eof()

    relay = Relay()
    async with raw_server(script) as server:
        account = account_for(server.port)
        try:
            first = await relay.send(account, message(), then=NEXT)
            closed = await relay.send(account, NEXT)
        finally:
            await relay.close()
        await server.finished()
    assert accepted_code(first) == 250
    assert ending(closed).reply == Reply(421, "4.7.0 Too many errors, closing", Stage.MAIL)
    assert len(server.wires) == 1  # a reply to this message: no second try elsewhere


@pytest.mark.parametrize("answered", [True, False], ids=["after the reply", "before the reply"])
async def test_a_drop_after_the_body_sends_the_next_message_on_a_fresh_connection(
    account_for: AccountFor, answered: bool
) -> None:
    async def script(wire: Wire) -> None:
        if wire is not server.wires[0]:
            return  # the fresh connection: served plainly
        await first_with_next_envelope(wire)
        if answered:
            await wire.send(b"250 2.0.0 Ok\r\n")
            await asyncio.sleep(0.05)  # the reply reaches the robot before the drop
        wire.writer.transport.abort()

    relay = Relay()
    async with raw_server(script) as server:
        account = account_for(server.port)
        try:
            first = await relay.send(account, message(), then=NEXT)
            after = await relay.send(account, NEXT)
        finally:
            await relay.close()
        await server.finished()
    if answered:
        assert accepted_code(first) == 250
    else:  # the whole body went out, its reply never came
        assert ending(first).maybe_delivered
        assert ending(first).reply.stage == "data"
    assert accepted_code(after) == 250
    first_wire, fresh = server.wires
    assert first_wire.bodies == [data_payload(BODY)]
    assert fresh.bodies == [b"Subject: 2\r\n\r\nsecond\r\n.\r\n"]  # once, on the fresh one


async def test_a_421_to_the_body_defers_it_and_the_next_goes_on_a_fresh_connection(
    account_for: AccountFor,
) -> None:
    async def script(wire: Wire) -> None:
        if wire is not server.wires[0]:
            return
        await first_with_next_envelope(wire)
        await wire.send(b"421 4.3.2 Shutting down\r\n")
        wire.writer.close()
        await wire.eof()

    relay = Relay()
    async with raw_server(script) as server:
        account = account_for(server.port)
        try:
            closing = await relay.send(account, message(), then=NEXT)
            after = await relay.send(account, NEXT)
        finally:
            await relay.close()
        await server.finished()
    assert ending(closing).reply == Reply(421, "4.3.2 Shutting down", Stage.DATA)
    assert accepted_code(after) == 250
    assert len(server.wires) == 2


async def test_the_next_envelope_s_replies_get_timeout_seconds_after_the_body_s(
    account_for: AccountFor,
) -> None:
    """The reply to the body gets data_timeout_seconds; those to the next envelope, which
    come after it, timeout_seconds: a server silent then is given up on in that time, and
    the next message goes on a fresh connection."""

    async def script(wire: Wire) -> None:
        if wire is not server.wires[0]:
            return
        await first_with_next_envelope(wire)
        await asyncio.sleep(0.6)  # past timeout_seconds, within data_timeout_seconds
        await wire.send(b"250 2.0.0 Ok after a scan\r\n")
        await wire.eof()  # and nothing for the envelope

    relay = Relay()
    async with raw_server(script) as server:
        account = account_for(server.port, timeout=0.3, data_timeout=5)
        try:
            first = await relay.send(account, message(), then=NEXT)
            after = await relay.send(account, NEXT)
        finally:
            await relay.close()
        await server.finished()
    assert first.accepted_reply == Reply(250, "2.0.0 Ok after a scan")
    assert accepted_code(after) == 250
    assert [len(w.bodies) for w in server.wires] == [1, 1]


async def test_a_connection_closed_while_the_next_message_waits_in_data_sends_no_quit(
    account_for: AccountFor,
) -> None:
    """The caller gives the next message up (the robot stops): its DATA is open, so the
    connection is closed without a QUIT, which the server would take for the message."""

    async def script(wire: Wire) -> None:
        await first_with_next_envelope(wire)
        await wire.send(b"250 2.0.0 Ok\r\n" + envelope_ok(1))
        await wire.eof()

    relay = Relay()
    async with raw_server(script) as server:
        account = account_for(server.port)
        try:
            first = await relay.send(account, message(), then=NEXT)
            await relay.drop_unsent(NEXT)
            assert relay.connections == {}
        finally:
            await relay.close()
        await server.finished()
    assert accepted_code(first) == 250
    (wire,) = server.wires
    assert wire.closed_by_client
    assert b"QUIT" not in b"".join(wire.reads)
    assert wire.bodies == [data_payload(BODY)]


@pytest.mark.parametrize("limit", ["max_per_connection", "no PIPELINING", "recipients postponed"])
async def test_no_envelope_goes_ahead_where_it_cannot(account_for: AccountFor, limit: str) -> None:
    """The next envelope waits for the reply to the body: on a connection whose last
    message this is, to a server without PIPELINING, and when the message itself still
    has recipients for a further transaction."""
    quiet_after_body: list[bool] = []

    async def script(wire: Wire) -> None:
        if limit == "recipients postponed":
            await wire.lines_until(b"DATA")
            await wire.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many\r\n354 Go\r\n")
        elif limit == "no PIPELINING":
            await wire.answer([b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 Go\r\n"])
        else:
            await wire.lines_until(b"DATA")
            await wire.send(envelope_ok(1))
        await wire.body()
        quiet_after_body.append(await wire.quiet(0.2))
        await wire.send(b"250 2.0.0 Ok\r\n")

    recipients = ("a@example.org", "b@example.org") if limit == "recipients postponed" else ()
    async with raw_server(script, pipelining=limit != "no PIPELINING") as server:
        account = account_for(server.port)
        if limit == "max_per_connection":
            account = dataclasses.replace(
                account, smtp=dataclasses.replace(account.smtp, max_per_connection=1)
            )
        async with connected(account) as connection:
            first, _ = await connection.send(message(*recipients), then=NEXT)
            # the message's last transaction (for b@example.org) took the envelope along
            assert connection.waits_for(NEXT) is (limit == "recipients postponed")
            if connection.waits_for(NEXT):
                assert accepted_code((await connection.send(NEXT))[0]) == 250
        await server.finished()
    assert accepted_code(first) == 250
    assert first.accepted == (recipients or ("a@example.org",))
    assert quiet_after_body == [True]
