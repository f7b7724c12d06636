"""Does `[robot] rate` hold? Drain a backlog through a local SMTP sink at a configured rate
and measure the achieved rate from the sink's own clock.

    .venv/bin/python bench/rate.py [--rate 50] [--seconds 60] [--connections 4]

Writes bench/results/rate.json. The achieved rate is (messages - 1) / (last - first
acceptance), over the whole run: the one-second burst the bucket allows at the start is
counted, so a correct limiter lands slightly above the configured rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from robot import __version__
from robot.config import load_settings
from robot.daemon.robot import Robot
from robot.logs import configure_logging
from robot.outbox.engine import make_engine, upgrade

RESULTS = Path(__file__).parent / "results"


class Stamps:
    """An aiosmtpd handler that notes when each DATA was accepted."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.times.append(time.monotonic())
        return "250 OK"


async def run(rate: float, seconds: float, connections: int) -> dict[str, Any]:
    stamps = Stamps()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(stamps, hostname="sink"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rows = int(rate * seconds) + 1
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        ini = Path(tmp) / "robot.ini"
        ini.write_text(
            f"[database]\nurl = {url}\n"
            f"[robot]\ngrace_minutes = 0\nrate = {rate}\nconnections = {connections}\n"
            f"[smtp]\nhost = 127.0.0.1\nport = {port}\nsecurity = none\n"
            "[sender]\naddress = bench@example.org\n[log]\nlevel = warning\n"
        )
        engine = make_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO outbox (recipient, subject, body_text) "
                f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
                "SELECT 'r' || i || '@example.org', 'rate test', 'hello' FROM n"
            )
        settings = load_settings(ini, environ={})
        configure_logging("json", "warning", stream=sys.stderr)
        code = await Robot(settings, engine, drain=True).run()
        engine.dispose()
    server.close()
    times = stamps.times
    achieved = (len(times) - 1) / (times[-1] - times[0])
    per_second = [
        sum(1 for t in times if start <= t < start + 1)
        for start in [times[0] + s for s in range(int(times[-1] - times[0]))]
    ]
    return {
        "configured_rate": rate,
        "connections": connections,
        "messages": len(times),
        "exit_code": code,
        "seconds": round(times[-1] - times[0], 3),
        "achieved_rate": round(achieved, 3),
        "ratio": round(achieved / rate, 4),
        "per_second_median": statistics.median(per_second),
        "per_second_max": max(per_second),
        "per_second_min": min(per_second),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    result = asyncio.run(run(args.rate, args.seconds, args.connections))
    result |= {
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "email_robot": __version__,
        "command": " ".join(sys.argv),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rate.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
