"""The second ceiling: the robot's own SMTP code sending pre-built bytes, no database.

    PYTHONPATH=TREE:. .venv/bin/python -m bench.robot_ceiling --port 2525 --messages 20000

`robot.send.relay.SmtpConnection` (aiosmtplib opens the connection, robot.send.protocol's
SmtpSession carries the transactions, pipelined when offered) with the account of a
robot.ini like the drains' (max_per_connection = 100, security = none); the messages are
`Composed` values built before the clock starts from the same rows as bench/ceiling.py.
No outbox, no composing, no group commit: what the robot's protocol costs alone. When the
revision's `send` takes the next message (`then`), it is given, as the robot's worker does.
Run
with the robot of a git revision first on PYTHONPATH (bench/run.py does, for --rev) to
measure that revision's protocol. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ceiling import DISTINCT, HELO, PER_CONNECTION, SENDER, build_messages
from bench.wan import Counter
from robot.compose.message import Composed
from robot.config import Account, load_settings
from robot.send.relay import SmtpConnection


def account(port: int) -> Account:
    """The default account of a bench robot.ini sending to 127.0.0.1:port."""
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "robot.ini"
        ini.write_text(
            f"[database]\nurl = sqlite:///{tmp}/unused.db\n\n"
            f"[smtp]\nhost = 127.0.0.1\nport = {port}\nsecurity = none\n"
            f"helo_name = {HELO}\nmax_per_connection = {PER_CONNECTION}\n\n"
            f"[sender]\naddress = {SENDER}\n"
        )
        return load_settings(ini, environ={}).default_account


def _takes_next() -> bool:
    """The revision's `SmtpConnection.send(message, then)` takes the next message, whose
    envelope then goes with this one's body (one round trip a message)."""
    return "then" in inspect.signature(SmtpConnection.send).parameters


async def _connection(acct: Account, messages: list[Composed], counter: Counter) -> int:
    sent = 0
    ahead = _takes_next()
    index = counter.take()
    while index is not None:
        connection = SmtpConnection(acct)
        await connection.open()
        while index is not None:
            room = connection.sent_on_connection + 1 < acct.smtp.max_per_connection
            following = counter.take() if room else None
            message = messages[index % len(messages)]
            if ahead and following is not None:
                then = messages[following % len(messages)]
                attempt, _ = await connection.send(message, then)  # type: ignore[call-arg,unused-ignore]
            else:
                attempt, _ = await connection.send(message)
            if not attempt.accepted:
                raise RuntimeError(f"message {index} not accepted: {attempt}")
            sent += 1
            index = following
        await connection.close()
        index = counter.take()
    return sent


async def measure(port: int, total: int, connections: int) -> dict[str, Any]:
    """Send `total` messages over `connections` connections; msgs/s from the first connect
    to the last QUIT."""
    acct = account(port)
    built = build_messages(min(total, DISTINCT))
    messages = [
        Composed(SENDER, (rcpt,), data, f"<{i}.0123456789abcdef@example.org>")
        for i, (rcpt, data) in enumerate(built)
    ]
    counter = Counter(total)
    t0 = time.perf_counter()
    sent = await asyncio.gather(*(_connection(acct, messages, counter) for _ in range(connections)))
    seconds = time.perf_counter() - t0
    return {
        "connections": connections,
        "messages": sum(sent),
        "seconds": round(seconds, 3),
        "msgs_per_s": round(sum(sent) / seconds, 1),
        "message_bytes": round(sum(len(m.data) for m in messages) / len(messages)),
        "next_envelope_with_body": _takes_next(),
    }


def _run(coro: Any) -> dict[str, Any]:
    """On uvloop when installed, as the robot runs."""
    try:
        import uvloop
    except ImportError:
        result: dict[str, Any] = asyncio.run(coro)
        return result
    out: dict[str, Any] = uvloop.run(coro)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="the robot's protocol ceiling")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(_run(measure(args.port, args.messages, args.connections))))


if __name__ == "__main__":
    main()
