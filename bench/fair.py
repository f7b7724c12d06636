"""Fair share between accounts: a rate-limited account's backlog must not hold the
connection workers that an unlimited account's rows could use.

Account `a` has `rate = 5` and `a_rows` rows due, account `b` is unlimited with `b_rows`
rows; the rows are interleaved in claim order (every third row is a's), the worst case for
a dispatcher that hands rows out in order. One robot runs (not draining: a's backlog takes
`a_rows / 5` seconds) until every row of b is sent, then gets SIGTERM. Measured: b's
throughput over its sending window against b alone (the same rows, no a), a's achieved
rate over b's window and over its own, and b's sends per second (a worker waiting on a's
bucket while b has work would show as a dip).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import outbox
from bench.drain import RobotConfig, RobotProcess

ACCOUNTS = "[account:a]\nrate = {rate:g}\n\n[account:b]\n"
SETTLE_TIMEOUT = 600.0
TAIL_SECONDS = 10.0  # the robot runs on after b's last row, so a's rate is seen alone too


def _rate(times: list[datetime]) -> float:
    """(count - 1) / (last - first): messages per second over their own window."""
    if len(times) < 2:
        return 0.0
    seconds = (times[-1] - times[0]).total_seconds()
    return (len(times) - 1) / seconds if seconds > 0 else 0.0


def _per_second(times: list[datetime], start: datetime, end: datetime) -> list[int]:
    """Sends in each whole second from `start` to `end`."""
    seconds = int((end - start).total_seconds())
    counts = [0] * max(seconds, 0)
    for t in times:
        k = int((t - start).total_seconds())
        if 0 <= k < seconds:
            counts[k] += 1
    return counts


def b_alone(config: RobotConfig, work: Path, rows: int, *, tag: str) -> dict[str, Any]:
    """`rows` rows of account b alone (the outbox of `config` holds them), sent by a robot
    run exactly as beside a (not draining, stopped once b's rows are sent), so that only
    a's presence differs."""
    result = a_and_b(config, work, a_rows=0, b_rows=rows, rate=0.0, tag=tag, tail=0.0)
    result["msgs_per_s"] = result["b_msgs_per_s"]
    return result


def a_and_b(
    config: RobotConfig,
    work: Path,
    *,
    a_rows: int,
    b_rows: int,
    rate: float,
    tag: str,
    tail: float = TAIL_SECONDS,
) -> dict[str, Any]:
    """Run one robot on an outbox of a_rows + b_rows rows, interleaved, until b's are sent
    and TAIL_SECONDS more."""
    total = a_rows + b_rows
    every = round(total / a_rows) if a_rows else 0  # 0: every row is b's
    outbox.set_accounts(config.url, every, "a", "b")
    ini = config.write(work / f"{tag}.ini")
    robot = RobotProcess(ini, work / f"{tag}.log", drain=False)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    b_sent = 0
    a_sending_max = 0  # a's rows claimed (status 'sending') at once, seen every 0.2 s
    try:
        while time.monotonic() < deadline and robot.proc.poll() is None:
            b_sent = outbox.count_sent_of(config.url, "b")
            if a_rows:
                a_sending = outbox.count_sent_of(config.url, "a", "sending")
                a_sending_max = max(a_sending_max, a_sending)
            if b_sent >= b_rows:
                break
            time.sleep(0.2)
        b_done_after = time.perf_counter() - robot.started
        time.sleep(tail)
    finally:
        robot.terminate()
        code = robot.wait(60)
    b_times = outbox.sent_times(config.url, "b")
    a_times = outbox.sent_times(config.url, "a")
    summary = outbox.summary(config.url)
    if not b_times:
        raise RuntimeError(f"fair {tag}: no row of b sent\n{robot.log_tail()}")
    start, end = b_times[0], b_times[-1]
    a_in_b = [t for t in a_times if start <= t <= end]
    b_window = (end - start).total_seconds()
    b_seconds = _per_second(b_times, start, end)
    a_seconds = _per_second(a_times, a_times[0], a_times[-1]) if len(a_times) > 1 else []
    a_span = (a_times[-1] - a_times[0]).total_seconds() if a_times else 0.0
    a_allowed = rate * a_span + max(1.0, rate)  # the bucket: a second's burst, then the rate
    return {
        "a_rows": a_rows,
        "b_rows": b_rows,
        "rate": rate,
        "every_nth_row_is_a": every,
        "connections": config.connections,
        "b_sent": len(b_times),
        "b_window_seconds": round(b_window, 3),
        "b_msgs_per_s": round(_rate(b_times), 1),
        "b_done_after_seconds": round(b_done_after, 2),
        "b_per_second_min": min(b_seconds) if b_seconds else None,
        "b_per_second_median": statistics.median(b_seconds) if b_seconds else None,
        "a_sent": len(a_times),
        "a_sending_max": a_sending_max,
        "a_sent_in_b_window": len(a_in_b),
        "a_rate_in_b_window": round(len(a_in_b) / b_window, 3) if b_window > 0 else None,
        "a_rate_own_window": round(_rate(a_times), 3),
        "a_per_second_max": max(a_seconds) if a_seconds else None,
        "a_seconds": round(a_span, 3),
        "a_allowed_by_bucket": round(a_allowed, 1),
        "a_rate_held": len(a_times) <= a_allowed + 1,
        "statuses": summary["statuses"],
        "robot_exit_code": code,
        "peak_rss_mb": robot.peak_rss_mb,
        "command": " ".join(robot.command),
    }


def config_for(base: RobotConfig, rate: float) -> RobotConfig:
    """`base` with accounts a (rate) and b (unlimited)."""
    return dataclasses.replace(base, accounts=ACCOUNTS.format(rate=rate))
