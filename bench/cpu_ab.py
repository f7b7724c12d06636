"""CPU time per message of two revisions of the robot, alternated in one run: a comparison
that a busy machine disturbs much less than a throughput figure (the robot's own user and
system seconds, start-up included, for `run --drain` of the same SQLite outbox into Postfix's
smtp-sink).

    .venv/bin/python -m bench.cpu_ab 0a94d6f HEAD --rows 20000 --connections 16 --pairs 3

Writes bench/results/cpu_ab.json (--out FILE elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.sink import SmtpSink, ensure_installed

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
INI = """[database]
url = {url}
[robot]
grace_minutes = 0
poll_seconds = 1
batch_size = 500
connections = {connections}
[smtp]
host = 127.0.0.1
port = {port}
security = none
helo_name = bench.example.org
[sender]
address = robot@example.org
[log]
level = warning
format = json
"""


def export(rev: str, into: Path) -> str:
    """robot/ and migrations/ of `rev` in a folder of their own; the commit it names."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "robot", "migrations"],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def drain(code: Path, rows: int, connections: int, port: int) -> dict[str, float]:
    """One drain: CPU seconds of the robot process, wall seconds, messages sent."""
    work = Path(tempfile.mkdtemp(prefix="cpu-ab-"))
    db = work / "r.db"
    ini = work / "robot.ini"
    ini.write_text(INI.format(url=f"sqlite:///{db}", connections=connections, port=port))
    env = {**os.environ, "PYTHONPATH": str(code)}
    robot = [sys.executable, "-m", "robot", "-c", str(ini)]
    # From the drain's own folder: `python -m` puts the current folder first on sys.path,
    # and from the working tree its robot/ would run instead of `code`'s.
    subprocess.run([*robot, "db", "upgrade"], env=env, check=True, capture_output=True, cwd=work)
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO outbox (recipient, subject, body_text, created_at) "
            "VALUES (?, 'Booking confirmed', ?, '2020-01-01 00:00:00.000')",
            [(f"Name {i} <n{i}@example.org>", "x" * 1700) for i in range(rows)],
        )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run([*robot, "run", "--drain"], env=env, check=True, capture_output=True, cwd=work)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with sqlite3.connect(db) as conn:
        sent = conn.execute("SELECT count(*) FROM outbox WHERE status = 'sent'").fetchone()[0]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": cpu, "wall_s": wall, "sent": sent, "cpu_us_per_msg": cpu / sent * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_ab.json")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="cpu-ab-code-"))
    commits = {
        name: export(rev, base / name) for name, rev in (("old", args.old), ("new", args.new))
    }
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with SmtpSink(ensure_installed()) as sink:
        for pair in range(args.pairs):
            for name in ("old", "new") if pair % 2 == 0 else ("new", "old"):
                run = drain(base / name, args.rows, args.connections, sink.port)
                runs[name].append(run)
                us, wall = run["cpu_us_per_msg"], run["wall_s"]
                print(f"{name} {commits[name]}: {us:.0f} us/msg, wall {wall:.2f} s", flush=True)
    medians = {
        name: statistics.median(r["cpu_us_per_msg"] for r in found) for name, found in runs.items()
    }
    result = {
        "old": commits["old"],
        "new": commits["new"],
        "rows": args.rows,
        "connections": args.connections,
        "load_1min_at_end": os.getloadavg()[0],
        "runs": runs,
        "median_cpu_us_per_msg": medians,
        "new_over_old": medians["new"] / medians["old"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median: old {medians['old']:.0f} us/msg, new {medians['new']:.0f} us/msg, "
          f"new/old {result['new_over_old']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
