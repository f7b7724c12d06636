"""Pickup latency at a light steady load: a host inserts `rate` rows per second, one
transaction each, for `seconds`, while one robot runs (grace_minutes = 0).

Latency of a row = sent_at - created_at, both from the database clock: from the moment the
row became due to the moment the robot recorded its DATA as accepted (an upper bound of the
acceptance itself, by the time of one UPDATE). A warm-up row, sent before the clock starts,
proves the robot is up; it is not counted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import outbox
from bench.drain import RobotConfig, RobotProcess

WARM_UP_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0


def _inserter(url: str) -> tuple[Callable[[outbox.Row], None], Callable[[], None]]:
    """An insert-one-row function on its own autocommit connection, and its closer."""
    if url.startswith("sqlite"):
        lite = sqlite3.connect(outbox.sqlite_path(url), timeout=30, isolation_level=None)
        return (lambda row: outbox.sqlite_insert_one(lite, row)), lite.close
    pg = psycopg.connect(outbox.pg_dsn(url), autocommit=True)

    def insert(row: outbox.Row) -> None:
        pg.execute(outbox.INSERT.format("%s"), (row.recipient, row.subject, row.body_text))

    return insert, pg.close


def _wait_sent(url: str, after_id: int, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    sent = 0
    while time.monotonic() < deadline:
        sent = outbox.count_sent(url, after_id)
        if sent >= expected:
            break
        time.sleep(0.2)
    return sent


def measure(
    config: RobotConfig, work: Path, *, tag: str, rate: float, seconds: float
) -> dict[str, Any]:
    """Run one robot (not draining) against an empty outbox and feed it at `rate` rows/s."""
    maker = outbox.RowMaker()
    ini = config.write(work / f"{tag}.ini")
    robot = RobotProcess(ini, work / f"{tag}.log", drain=False)
    insert, close = _inserter(config.url)
    try:
        insert(maker.row(0))  # warm-up
        if _wait_sent(config.url, 0, 1, WARM_UP_TIMEOUT) < 1:
            raise RuntimeError(f"latency {tag}: the warm-up row was not sent\n{robot.log_tail()}")
        start_id = outbox.max_id(config.url)
        total = int(rate * seconds)
        t0 = time.perf_counter()
        for k in range(total):
            pause = t0 + k / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            insert(maker.row(k + 1))
        inserting = time.perf_counter() - t0
        sent = _wait_sent(config.url, start_id, total, SETTLE_TIMEOUT)
    finally:
        close()
        robot.terminate()
        code = robot.wait(30)
    values = outbox.latencies(config.url, start_id)
    return {
        "rate_rows_per_s": rate,
        "seconds": round(inserting, 3),
        "rows": total,
        "sent": sent,
        "poll_seconds": config.poll_seconds,
        "connections": config.connections,
        "p50_ms": round(outbox.percentile(values, 50), 1),
        "p90_ms": round(outbox.percentile(values, 90), 1),
        "p99_ms": round(outbox.percentile(values, 99), 1),
        "max_ms": round(max(values), 1) if values else 0.0,
        "mean_ms": round(sum(values) / len(values), 1) if values else 0.0,
        "robot_exit_code": code,
        "peak_rss_mb": robot.peak_rss_mb,
        "command": " ".join(robot.command),
    }
