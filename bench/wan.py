"""Senders to time over network latency (bench/netdelay.py), each in a fresh interpreter.

    .venv/bin/python -m bench.wan --client one-rtt --port P --messages N --connections C

Clients (pre-built messages, no database; QUIT and reconnect after 100 messages, like the
robot and the aiosmtplib ceiling):
  smtplib   a plain `smtplib` loop, one thread per connection: what most Python apps do
  one-rtt   a bare client sending each body, its final dot and the next message's MAIL,
            RCPT and DATA in one write (RFC 2920 §3.1): one round trip a message, the
            practical limit over a PIPELINING server
  lockstep  a bare client sending one command at a time and waiting for each reply (MAIL,
            RCPT, DATA, body): the best a client can do against a server without PIPELINING
Prints one JSON object: msgs/s from the first connect to the last QUIT's reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import smtplib
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.ceiling import DISTINCT, HELO, PER_CONNECTION, SENDER, build_messages

CLIENTS = ("smtplib", "one-rtt", "lockstep")
_BARE_ENDING = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def wire(message: bytes) -> bytes:
    """The message as it goes after DATA: CRLF, leading dots doubled, the final dot."""
    data = _BARE_ENDING.sub(b"\r\n", message)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


class Counter:
    """The next message to send, shared by the connections (a lock for the threads)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """A message number, or None when all are taken."""
        with self._lock:
            if self.next >= self.total:
                return None
            self.next += 1
            return self.next - 1


class SmtpError(Exception):
    """A reply other than the one expected."""


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (possibly multi-line) reply: its code and its text."""
    text = b""
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise SmtpError(f"connection dropped or malformed line {line!r}")
        text += line
        if line[3:4] != b"-":
            return int(line[:3]), text


async def _expect(reader: asyncio.StreamReader, *codes: int) -> None:
    """Read one reply per code and check each."""
    for code in codes:
        got, text = await _reply(reader)
        if got != code:
            raise SmtpError(f"expected {code}, got {text!r}")


def _envelope(rcpt: str) -> bytes:
    return f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _expect(reader, 220)
    writer.write(f"EHLO {HELO}\r\n".encode())
    code, ehlo = await _reply(reader)
    if code != 250:
        raise SmtpError(f"EHLO refused: {ehlo!r}")
    return reader, writer, ehlo


async def _one_rtt_connection(
    port: int, messages: list[tuple[str, bytes]], counter: Counter
) -> int:
    """One round trip a message: body + dot + next envelope in one write."""
    sent = 0
    index = counter.take()
    while index is not None:
        reader, writer, ehlo = await _open(port)
        if b"PIPELINING" not in ehlo.upper():
            raise SmtpError("one-rtt needs a server that offers PIPELINING")
        writer.write(_envelope(messages[index % len(messages)][0]))
        await _expect(reader, 250, 250, 354)
        on_this = 0
        while index is not None:
            body = messages[index % len(messages)][1]
            on_this += 1
            following = counter.take() if on_this < PER_CONNECTION else None
            if following is None:
                writer.write(body + b"QUIT\r\n")
                await _expect(reader, 250, 221)
            else:
                writer.write(body + _envelope(messages[following % len(messages)][0]))
                await _expect(reader, 250, 250, 250, 354)
            sent += 1
            index = following
        writer.close()
        if on_this >= PER_CONNECTION:
            index = counter.take()
    return sent


async def _lockstep_connection(
    port: int, messages: list[tuple[str, bytes]], counter: Counter
) -> int:
    """One command at a time, each reply awaited: four round trips a message."""
    sent = 0
    index = counter.take()
    while index is not None:
        reader, writer, _ = await _open(port)
        on_this = 0
        while index is not None and on_this < PER_CONNECTION:
            rcpt, body = messages[index % len(messages)]
            for command, code in (
                (f"MAIL FROM:<{SENDER}>\r\n".encode(), 250),
                (f"RCPT TO:<{rcpt}>\r\n".encode(), 250),
                (b"DATA\r\n", 354),
                (body, 250),
            ):
                writer.write(command)
                await _expect(reader, code)
            sent += 1
            on_this += 1
            index = counter.take()
        writer.write(b"QUIT\r\n")
        await _expect(reader, 221)
        writer.close()
    return sent


async def _bare(
    client: str, port: int, messages: list[tuple[str, bytes]], total: int, connections: int
) -> int:
    counter = Counter(total)
    one = _one_rtt_connection if client == "one-rtt" else _lockstep_connection
    wired = [(rcpt, wire(data)) for rcpt, data in messages]
    sent = await asyncio.gather(*(one(port, wired, counter) for _ in range(connections)))
    return sum(sent)


def _smtplib_loop(
    port: int, messages: list[tuple[str, bytes]], total: int, connections: int
) -> int:
    """One thread per connection, each `smtplib.SMTP.sendmail` in turn."""
    counter = Counter(total)
    sent = [0] * connections
    errors: list[BaseException] = []

    def connection(slot: int) -> None:
        try:
            index = counter.take()
            while index is not None:
                with smtplib.SMTP("127.0.0.1", port, local_hostname=HELO) as smtp:
                    on_this = 0
                    while index is not None and on_this < PER_CONNECTION:
                        rcpt, data = messages[index % len(messages)]
                        smtp.sendmail(SENDER, [rcpt], data)
                        sent[slot] += 1
                        on_this += 1
                        index = counter.take()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=connection, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(sent)


def measure(client: str, port: int, total: int, connections: int) -> dict[str, Any]:
    """Send `total` messages over `connections` connections with `client`."""
    messages = build_messages(min(total, DISTINCT))
    run: Callable[[], int]
    if client == "smtplib":
        run = lambda: _smtplib_loop(port, messages, total, connections)  # noqa: E731
    else:
        run = lambda: _run_loop(_bare(client, port, messages, total, connections))  # noqa: E731
    t0 = time.perf_counter()
    sent = run()
    seconds = time.perf_counter() - t0
    return {
        "client": client,
        "connections": connections,
        "messages": sent,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(sent / seconds, 1),
        "message_bytes": round(sum(len(m[1]) for m in messages) / len(messages)),
    }


def _run_loop(coro: Any) -> int:
    result: int = asyncio.run(coro)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(measure(args.client, args.port, args.messages, args.connections)))


if __name__ == "__main__":
    main()
