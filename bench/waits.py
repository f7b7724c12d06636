"""What a loopback drain's connections wait for: one drain of a due backlog into smtp-sink,
the robot run with its waits counted (no change to its code: the counting wraps a few
methods at start-up, in the robot's own process).

    .venv/bin/python -m bench.waits --rows 40000 --connections 16 --databases sqlite,postgresql

Counted, in the robot: how often and how long a connection waited for the group commit of
an earlier outcome (Worker._settle_oldest: the robot lets at most two messages of a
connection be unrecorded, so the next body waits for the commit of all outcomes but the
last), or for a row (Dispatcher.take); each
group commit's batch and how long it took; each claim and how long it took. Around the
drain: the robot's CPU (user + system), smtp-sink's, and the whole machine's busy time from
/proc/stat. Writes bench/results/waits.json (or --out).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.cpu_ab import INI

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
AFTER_FILL: list[str] = []  # --after-fill: PostgreSQL statements run after the fill
ROW = (
    "INSERT INTO outbox (recipient, subject, body_text, created_at) "
    "VALUES ({0}, 'Booking confirmed', {0}, '2020-01-01 00:00:00.000')"
)


class Counts:
    """What the wrapped methods saw, in the robot's process."""

    def __init__(self) -> None:
        self.settles = 0
        self.settle_waits: list[float] = []
        self.take_waits: list[float] = []
        self.commits: list[tuple[int, float]] = []  # (outcomes, seconds)
        self.commit_cpu: list[float] = []  # the committing thread's CPU seconds (thread commits)
        self.lock_waits: dict[str, list[float]] = {}  # SQLite's one_writer: thread -> waits
        self.claims: list[tuple[int, float]] = []  # (rows, seconds)

    def summary(self) -> dict[str, Any]:
        def seconds(values: list[float]) -> dict[str, float]:
            if not values:
                return {"count": 0, "total_s": 0.0, "median_ms": 0.0}
            return {
                "count": len(values),
                "total_s": round(sum(values), 3),
                "median_ms": round(statistics.median(values) * 1000, 3),
            }

        commit_s = [s for _, s in self.commits]
        claim_s = [s for _, s in self.claims]
        return {
            "settles": self.settles,
            "settle_waits": seconds(self.settle_waits),
            "take_waits": seconds(self.take_waits),
            "commits": seconds(commit_s)
            | {"mean_batch": round(statistics.mean(n for n, _ in self.commits), 2)}
            if self.commits
            else seconds([]),
            "commit_thread_cpu": seconds(self.commit_cpu),
            "sqlite_writer_lock_waits": {t: seconds(w) for t, w in self.lock_waits.items()},
            "claims": seconds(claim_s)
            | {"mean_rows": round(statistics.mean(n for n, _ in self.claims), 1)}
            if self.claims
            else seconds([]),
        }


def counted_robot(argv: list[str], out: Path) -> int:
    """Run `email-robot ARGV` in this process with its waits counted; write them to `out`."""
    from robot.cli.main import main
    from robot.daemon.dispatcher import Dispatcher
    from robot.daemon.worker import Worker
    from robot.outbox.claims import Claims
    from robot.outbox.group_commit import AsyncGroupCommit, GroupCommit

    counts = Counts()
    settle = Worker._settle_oldest
    take = Dispatcher.take
    thread_commit = GroupCommit._commit_until_done
    loop_commit = AsyncGroupCommit._commit_until_done
    claim = Claims.claim
    from robot.outbox.dialects import SqliteStatements

    one_writer = SqliteStatements.one_writer

    @contextlib.contextmanager
    def counted_writer(self: SqliteStatements) -> Iterator[None]:
        lock = one_writer(self)
        started = time.perf_counter()
        with lock:
            waited = time.perf_counter() - started
            counts.lock_waits.setdefault(threading.current_thread().name, []).append(waited)
            yield

    async def counted_settle(self: Worker) -> None:
        waits = not self.unsettled[0].committed.done()
        started = time.perf_counter()
        await settle(self)
        counts.settles += 1
        if waits:
            counts.settle_waits.append(time.perf_counter() - started)

    async def counted_take(self: Dispatcher) -> Any:
        started = time.perf_counter()
        row = await take(self)
        counts.take_waits.append(time.perf_counter() - started)
        return row

    def counted_thread_commit(self: GroupCommit, batch: list[Any]) -> list[bool]:
        started, cpu = time.perf_counter(), time.thread_time()
        result = thread_commit(self, batch)
        counts.commits.append((len(batch), time.perf_counter() - started))
        counts.commit_cpu.append(time.thread_time() - cpu)
        return result

    async def counted_loop_commit(self: AsyncGroupCommit, batch: list[Any]) -> list[bool]:
        started = time.perf_counter()
        result = await loop_commit(self, batch)
        counts.commits.append((len(batch), time.perf_counter() - started))
        return result

    def counted_claim(self: Claims, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        rows = claim(self, *args, **kwargs)
        counts.claims.append((len(rows), time.perf_counter() - started))
        return rows

    patches: list[tuple[Any, str, Callable[..., Any]]] = [
        (Worker, "_settle_oldest", counted_settle),
        (Dispatcher, "take", counted_take),
        (GroupCommit, "_commit_until_done", counted_thread_commit),
        (AsyncGroupCommit, "_commit_until_done", counted_loop_commit),
        (Claims, "claim", counted_claim),
        (SqliteStatements, "one_writer", counted_writer),
    ]
    for owner, name, wrapper in patches:
        setattr(owner, name, wrapper)
    atexit.register(lambda: out.write_text(json.dumps(counts.summary())))
    return main(argv)


def _cpu_of(pid: int) -> float:
    """User + system seconds of process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine() -> tuple[float, float]:
    """(busy, all) CPU seconds of the machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - values[3] - values[4]) / tick, sum(values) / tick


def fill(url: str, rows: int) -> None:
    """`rows` due rows, as a host inserts them."""
    values = [(f"Name {i} <n{i}@example.org>", "x" * 1700) for i in range(rows)]
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as lite:
            lite.executemany(ROW.format("?"), values)
        return
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as pg, pg.cursor() as cur:
        cur.executemany(ROW.format("%s"), values)
    with psycopg.connect(dsn, autocommit=True) as pg:
        for statement in AFTER_FILL:
            pg.execute(statement)
        pg.execute("VACUUM ANALYZE outbox")


def sent_window(url: str) -> tuple[int, float]:
    """Rows sent, and seconds from the first to the last."""
    query = "SELECT count(*), min(sent_at), max(sent_at) FROM outbox WHERE status = 'sent'"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as lite:
            sent, first, last = lite.execute(query).fetchone()
        span = datetime.fromisoformat(last) - datetime.fromisoformat(first)
        return int(sent), span.total_seconds()
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as pg:
        found = pg.execute(query).fetchone()
        assert found is not None
        return int(found[0]), (found[2] - found[1]).total_seconds()


def drain(url: str, rows: int, connections: int, sink: Any) -> dict[str, Any]:
    """One counted drain of `rows` rows in the outbox at `url`."""
    work = Path(tempfile.mkdtemp(prefix="waits-"))
    ini = work / "robot.ini"
    ini.write_text(INI.format(url=url, connections=connections, port=sink.port))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    python = [sys.executable, "-m"]
    subprocess.run(
        [*python, "robot", "-c", str(ini), "db", "upgrade"], env=env, check=True, cwd=work
    )
    fill(url, rows)
    counted = work / "counts.json"
    command = [*python, "bench.waits", "--robot", str(counted), "-c", str(ini), "run", "--drain"]
    sink_cpu, machine = _cpu_of(sink.proc.pid), _machine()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, cwd=work)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, total = (now - then for now, then in zip(_machine(), machine, strict=True))
    sent, window = sent_window(url)
    robot_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    counts: dict[str, Any] = json.loads(counted.read_text())
    worker_seconds = connections * window
    return {
        "sent": sent,
        "window_s": round(window, 3),
        "msgs_per_s": round(sent / window, 1),
        "wall_s": round(wall, 3),
        "robot_cpu_s": round(robot_cpu, 2),
        "sink_cpu_s": round(_cpu_of(sink.proc.pid) - sink_cpu, 2),
        "machine_busy_share": round(busy / total, 3),
        "share_of_connection_time_waiting_for_commit": round(
            counts["settle_waits"]["total_s"] / worker_seconds, 3
        ),
        "share_of_connection_time_waiting_for_rows": round(
            counts["take_waits"]["total_s"] / worker_seconds, 3
        ),
        "counts": counts,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--robot"]:  # in the robot's process
        return counted_robot(args[2:], Path(args[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS / "waits.json")
    parser.add_argument(
        "--after-fill",
        action="append",
        default=[],
        help="a PostgreSQL statement run after the fill (a table's autovacuum settings, say)",
    )
    options = parser.parse_args(args)
    AFTER_FILL.extend(options.after_fill)
    from bench.sink import SmtpSink, ensure_installed
    from tests.support.pg import PgCluster

    databases = options.databases.split(",")
    pg = PgCluster() if "postgresql" in databases else None
    results: dict[str, Any] = {
        "command": "python -m bench.waits " + " ".join(args),
        "revision": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": options.rows,
        "connections": options.connections,
        "after_fill": options.after_fill,
    }
    try:
        if pg is not None:
            pg.start()
        with SmtpSink(ensure_installed()) as sink:
            for database in databases:
                if database == "sqlite":
                    url = f"sqlite:///{tempfile.mkdtemp(prefix='waits-db-')}/robot.db"
                else:
                    assert pg is not None
                    url = pg.create_database(f"waits_{int(time.time())}")
                results[database] = drain(url, options.rows, options.connections, sink)
                print(database, json.dumps(results[database]), flush=True)
    finally:
        if pg is not None:
            pg.stop()
    results["load1_at_end"] = os.getloadavg()[0]
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
