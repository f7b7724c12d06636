"""Two robots draining one PostgreSQL (or MariaDB) outbox at once, against one robot on the
same outbox.

Both runs go to an smtp-sink that dumps every transaction into one file (`-D FILE`), so the
Message-IDs that reached the server can be counted: every sent row's Message-ID must be there
exactly once, and nothing else. The dump costs the sink a write per message, so the one-robot
figure it is compared with is measured with the same dumping sink.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import outbox
from bench.drain import RobotConfig, RobotProcess
from bench.sink import SmtpSink


def exactly_once(url: str, sink: SmtpSink) -> dict[str, Any]:
    """Compare the sent rows' Message-IDs with what the sink received."""
    received = sink.message_ids()
    expected = outbox.sent_message_ids(url)
    wanted = set(expected)
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    missing = sum(1 for mid in wanted if mid not in received)
    unexpected = sum(n for mid, n in received.items() if mid not in wanted)
    return {
        "sent_rows": len(expected),
        "distinct_message_ids_in_db": len(wanted),
        "transactions_at_sink": sink.transactions(),
        "message_ids_at_sink": sum(received.values()),
        "duplicates": duplicates,
        "missing": missing,
        "unexpected": unexpected,
        "exactly_once": duplicates == 0
        and missing == 0
        and unexpected == 0
        and len(wanted) == len(expected),
    }


def _run(
    robots: list[RobotConfig], work: Path, rows: int, tag: str, sink: SmtpSink
) -> dict[str, Any]:
    url = robots[0].url
    procs = [
        RobotProcess(cfg.write(work / f"{tag}-{cfg.name}.ini"), work / f"{tag}-{cfg.name}.log")
        for cfg in robots
    ]
    codes = [p.wait() for p in procs]
    wall = max(p.ended for p in procs) - min(p.started for p in procs)
    found = outbox.summary(url)
    if any(codes) or found["sent"] != rows:
        tails = "\n".join(p.log_tail() for p in procs)
        raise RuntimeError(
            f"{tag}: exit codes {codes}, {found['sent']} of {rows} sent, {found['statuses']}\n"
            + tails
        )
    window = found["window_seconds"]
    claims = outbox.claims_by_robot(url)
    return {
        "robots": len(robots),
        "connections_each": robots[0].connections,
        "rows": rows,
        "sent": found["sent"],
        "wall_seconds": round(wall, 3),
        "window_seconds": window,
        "msgs_per_s": round((found["sent"] - 1) / window, 1) if window > 0 else 0.0,
        "msgs_per_s_wall": round(found["sent"] / wall, 1),
        "peak_rss_mb": [p.peak_rss_mb for p in procs],
        "claims_by_robot": {
            cfg.name: sum(n for worker, n in claims.items() if worker.startswith(cfg.name + ":"))
            for cfg in robots
        },
        "check": exactly_once(url, sink),
        "commands": [" ".join(p.command) for p in procs],
    }


def measure(
    sink_binary: str,
    fresh_outbox: Callable[[str], str],
    work: Path,
    *,
    rows: int,
    connections: int,
) -> dict[str, Any]:
    """One robot, then two at once, each on a fresh copy of a filled PostgreSQL outbox
    (`fresh_outbox(name)` returns its URL) and a fresh dumping sink."""
    runs: dict[str, dict[str, Any]] = {}
    for count in (1, 2):
        url = fresh_outbox(f"bench_two_{count}")
        with SmtpSink(sink_binary, dump=work / f"dump-{count}" / "messages") as sink:
            base = RobotConfig(url=url, port=sink.port, connections=connections)
            robots = [
                dataclasses.replace(base, name=f"robot-{chr(ord('a') + n)}") for n in range(count)
            ]
            time.sleep(0.2)
            runs[f"{count}_robot" + ("s" if count > 1 else "")] = _run(
                robots, work, rows, f"two-{count}", sink
            )
        for dump in (work / f"dump-{count}").glob("*"):
            dump.unlink()
    one, two = runs["1_robot"]["msgs_per_s"], runs["2_robots"]["msgs_per_s"]
    return {**runs, "ratio_two_to_one": round(two / one, 3) if one else 0.0}
