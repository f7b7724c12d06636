"""A TCP proxy that adds network latency: each direction is delayed by RTT/2.

    .venv/bin/python -m bench.netdelay --target 127.0.0.1:2525 --rtt-ms 20   # prints its port
    .venv/bin/python -m bench.netdelay --check --rtt-ms 20                   # the self-check

The machines have no netem, so the benchmark puts this between a sender and smtp-sink.
Every chunk read from one side is written to the other RTT/2 after it was read, in order.
A connection costs what TCP's handshake costs: the server side is opened 1.5 RTT after the
client connected (SYN, SYN-ACK, ACK), so a server's greeting reaches the client 2 RTT after
its connect, as over a real network. Flow control is kept: at most QUEUE_CHUNKS chunks of at
most CHUNK bytes wait in each direction; when they are there the proxy stops reading that
side until the other side has taken some (and it waits for each write to drain).

Bandwidth is not limited: only latency. The check (`check`) sends a ping-pong of known sizes
through a proxy to a local echo server and compares the measured round trip, and the time
from connect to a greeting, with the ones set (within TOLERANCE), then echoes a few
megabytes to check that order and content survive the bounded buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHUNK = 64 * 1024  # bytes read at a time
QUEUE_CHUNKS = 32  # chunks waiting per direction: at most 2 MiB in flight each way
HANDSHAKE_RTTS = 1.5  # the server sees the connection 1.5 RTT after the client's SYN
TOLERANCE = 0.10  # the check's allowed relative error
_EOF = b""


async def _reader_side(
    reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]], delay: float
) -> None:
    """Read chunks as they come and queue them with the time they are due on the other side;
    the bounded queue stops the reading when the other side is slow."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = await reader.read(CHUNK)
        except (ConnectionError, OSError):
            data = _EOF
        await queue.put((loop.time() + delay, data))
        if not data:
            return


async def _writer_side(
    writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]]
) -> None:
    """Write each chunk when it is due, in order, waiting for the socket to drain."""
    loop = asyncio.get_running_loop()
    while True:
        due, data = await queue.get()
        pause = due - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        try:
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError, RuntimeError):  # uvloop: RuntimeError once closed
            return


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


class DelayProxy:
    """Listens on 127.0.0.1:port and forwards every connection to `target`, delayed."""

    def __init__(self, target: tuple[str, int], rtt: float) -> None:
        self.target = target
        self.rtt = rtt
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self, port: int = 0) -> int:
        """Listen; return the port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, backlog=1024)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        one_way = self.rtt / 2
        to_server: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        to_client: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        upstream = asyncio.create_task(_reader_side(c_reader, to_server, one_way))
        await asyncio.sleep(self.rtt * HANDSHAKE_RTTS)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            upstream.cancel()
            await _close(c_writer)
            return
        try:
            await asyncio.gather(
                upstream,
                _writer_side(s_writer, to_server),
                _reader_side(s_reader, to_client, one_way),
                _writer_side(c_writer, to_client),
            )
        finally:
            await _close(s_writer)
            await _close(c_writer)

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()


class NetDelay:
    """A proxy process of this module: `with NetDelay(target_port, rtt) as port: ...`."""

    def __init__(self, target_port: int, rtt: float, python: str = sys.executable) -> None:
        self.command = [python, "-m", "bench.netdelay", "--target", f"127.0.0.1:{target_port}"]
        self.command += ["--rtt-ms", f"{rtt * 1000:g}"]
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> int:
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, text=True, cwd=root, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise RuntimeError(f"netdelay did not start: exit {self.proc.returncode}")
        self.port = int(json.loads(line)["port"])
        return self.port

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


# -- the check ------------------------------------------------------------------------------

GREETING = b"220 echo\r\n"


class _Echo:
    """The check's server: a greeting, then every byte back; `ended` once the client left."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(GREETING)
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
            await _close(writer)
        finally:
            self.ended.set()


async def _read_exactly(reader: asyncio.StreamReader, count: int) -> bytes:
    return await reader.readexactly(count)


async def _check(rtt: float, rounds: int, sizes: list[int], bulk_bytes: int) -> dict[str, Any]:
    handler = _Echo()
    echo = await asyncio.start_server(handler.serve, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    with NetDelay(echo_port, rtt) as port:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _read_exactly(reader, len(GREETING))
        greeting_s = time.perf_counter() - t0
        per_size: dict[str, Any] = {}
        for size in sizes:
            payload = bytes(i % 251 for i in range(size))
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                writer.write(payload)
                got = await _read_exactly(reader, size)
                times.append(time.perf_counter() - t)
                if got != payload:
                    raise RuntimeError("netdelay check: the echo differs from what was sent")
            median = statistics.median(times)
            per_size[str(size)] = {
                "median_ms": round(median * 1000, 2),
                "min_ms": round(min(times) * 1000, 2),
                "max_ms": round(max(times) * 1000, 2),
                "error": round(median / rtt - 1, 4),
            }
        bulk = os.urandom(bulk_bytes)
        t = time.perf_counter()

        async def send_bulk() -> None:
            for start in range(0, len(bulk), CHUNK):
                writer.write(bulk[start : start + CHUNK])
                await writer.drain()

        sender = asyncio.create_task(send_bulk())
        echoed = await _read_exactly(reader, len(bulk))
        await sender
        bulk_s = time.perf_counter() - t
        await _close(writer)
        await asyncio.wait_for(handler.ended.wait(), 10 + 2 * rtt)
    echo.close()
    same = hashlib.sha256(echoed).digest() == hashlib.sha256(bulk).digest()
    errors = [abs(v["error"]) for v in per_size.values()]
    greeting_error = greeting_s / (2 * rtt) - 1
    return {
        "rtt_ms": round(rtt * 1000, 3),
        "rounds": rounds,
        "ping_pong": per_size,
        "greeting_ms": round(greeting_s * 1000, 2),
        "greeting_expected_ms": round(2 * rtt * 1000, 2),
        "greeting_error": round(greeting_error, 4),
        "bulk_bytes": bulk_bytes,
        "bulk_seconds": round(bulk_s, 3),
        "bulk_in_order": same,
        "passed": same and max(errors) <= TOLERANCE and abs(greeting_error) <= TOLERANCE,
    }


def check(
    rtt: float, rounds: int = 20, sizes: list[int] | None = None, bulk_bytes: int = 4 << 20
) -> dict[str, Any]:
    """Ping-pong through a proxy process at `rtt` seconds: measured against set."""
    return asyncio.run(_check(rtt, rounds, sizes or [100, 2048, 16384], bulk_bytes))


# -- main -----------------------------------------------------------------------------------


async def _serve_forever(target: tuple[str, int], rtt: float, port: int) -> None:
    proxy = DelayProxy(target, rtt)
    bound = await proxy.start(port)
    print(json.dumps({"port": bound}), flush=True)
    await asyncio.Event().wait()


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="host:port to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True)
    parser.add_argument("--port", type=int, default=0, help="listen port (0: a free one)")
    parser.add_argument("--check", action="store_true", help="run the ping-pong check")
    args = parser.parse_args()
    if args.check:
        print(json.dumps(check(args.rtt_ms / 1000), indent=2))
        return
    host, _, port = args.target.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        _run(_serve_forever((host, int(port)), args.rtt_ms / 1000, args.port))


if __name__ == "__main__":
    main()
