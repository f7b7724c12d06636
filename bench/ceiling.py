"""The ceiling: a bare aiosmtplib loop sending pre-built bytes, no database, no composing.

    .venv/bin/python -m bench.ceiling --port 2525 --messages 20000 --connections 16

Messages are built before the clock starts, from the same rows the outbox holds (stdlib
email, so about the robot's size). Like the robot: `connections` connections at once, QUIT
and reconnect after 100 messages, EHLO with a fixed name. Prints one JSON object. Also
`smtp_source`: Postfix's own C load generator, the machine's reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiosmtplib

from bench.outbox import RowMaker

SENDER = "news@example.org"
HELO = "bench.example.org"
PER_CONNECTION = 100
DISTINCT = 1000  # distinct pre-built messages, cycled


def build_messages(count: int) -> list[tuple[str, bytes]]:
    """(envelope recipient, message bytes) for rows 0..count-1."""
    maker = RowMaker()
    out = []
    now = format_datetime(datetime.now(UTC))
    for i in range(count):
        row = maker.row(i)
        msg = EmailMessage()
        msg["From"] = f"Example Shop <{SENDER}>"
        msg["To"] = row.recipient
        msg["Subject"] = row.subject
        msg["Date"] = now
        msg["Message-ID"] = f"<{i}.0123456789abcdef@example.org>"
        msg.set_content(row.body_text)
        address = row.recipient.rpartition("<")[2].rstrip(">")
        out.append((address, msg.as_bytes()))
    return out


async def _connection(
    port: int, messages: list[tuple[str, bytes]], counter: list[int], total: int
) -> int:
    sent = 0
    while counter[0] < total:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, local_hostname=HELO, start_tls=False
        )
        await smtp.connect()
        on_this = 0
        while on_this < PER_CONNECTION and counter[0] < total:
            index = counter[0]
            counter[0] += 1
            rcpt, data = messages[index % len(messages)]
            await smtp.sendmail(SENDER, [rcpt], data)
            on_this += 1
            sent += 1
        await smtp.quit()
    return sent


async def measure(port: int, total: int, connections: int) -> dict[str, Any]:
    """Send `total` messages over `connections` connections; msgs/s from first connect to the
    last QUIT."""
    messages = build_messages(min(total, DISTINCT))
    counter = [0]
    t0 = time.perf_counter()
    sent = await asyncio.gather(
        *(_connection(port, messages, counter, total) for _ in range(connections))
    )
    seconds = time.perf_counter() - t0
    return {
        "connections": connections,
        "messages": sum(sent),
        "seconds": round(seconds, 3),
        "msgs_per_s": round(sum(sent) / seconds, 1),
        "message_bytes": round(sum(len(m[1]) for m in messages) / len(messages)),
    }


def run_subprocess(python: str, port: int, total: int, connections: int) -> dict[str, Any]:
    """Run the ceiling in a fresh interpreter, like the robot; return its JSON."""
    cmd = [python, "-m", "bench.ceiling", "--port", str(port), "--messages", str(total)]
    proc = subprocess.run(
        [*cmd, "--connections", str(connections)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def smtp_source(port: int, total: int, sessions: int, length: int) -> dict[str, Any] | None:
    """Postfix's smtp-source: `sessions` parallel sessions, each sending messages over one
    connection (-d) until `total`; msgs/s by wall clock. None when it is not installed."""
    binary = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not shutil.which(binary):
        return None
    cmd = [binary, "-d", "-s", str(sessions), "-m", str(total), "-l", str(length)]
    cmd += ["-M", HELO, "-f", SENDER, "-t", "someone@example.org", f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    return {
        "sessions": sessions,
        "messages": total,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(total / seconds, 1),
        "command": " ".join(cmd),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiosmtplib ceiling")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.port, args.messages, args.connections))))


if __name__ == "__main__":
    main()
