"""The throughput benchmark of email-robot against Postfix's smtp-sink on loopback.

    make bench                                   # everything, the defaults below
    .venv/bin/python -m bench.run --quick        # a small smoke pass (bench/results/quick/)
    .venv/bin/python -m bench.run --only large --large-rows 1000000

Phases (each writes bench/results/PHASE.json as soon as it ends):
  throughput  rounds x connections: the bare aiosmtplib ceiling, smtp-source, then the robot
              draining a fresh outbox of --rows rows on each database (SQLite, PostgreSQL,
              MariaDB: --databases); medians and ratios
  latency     pickup latency at --latency-rate rows/s for --latency-seconds, each database
  large       one drain of a --large-rows backlog (peak RSS, throughput against --rows)
  two         two robots on one PostgreSQL (--two-database) outbox against one robot,
              exactly-once check
  profile     one SQLite drain of --rows rows under py-spy
Then bench/report.py renders docs/benchmarks.md and docs/benchmarks-throughput.png.
Never run in CI: the figures are only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench import ceiling, drain, latency, outbox, profile, report, two_robots
from bench.drain import RobotConfig
from bench.sink import SmtpSink, ensure_installed, postfix_version

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PHASES = ("throughput", "latency", "large", "two", "profile")
DATABASES = ("sqlite", "postgresql", "mariadb")


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Outboxes:
    """Filled outboxes on demand: a template per (database, rows), fresh copies per run."""

    def __init__(self, work: Path, pg_cluster: Any, mariadb: Any = None) -> None:
        self.work = work
        self.pg = pg_cluster
        self.mariadb = mariadb
        self.maker = outbox.RowMaker()
        self.templates: dict[tuple[str, int], str] = {}
        self.fill_seconds: dict[str, float] = {}

    def _schema(self, url: str, tag: str) -> None:
        ini = RobotConfig(url=url, port=25, connections=1).write(self.work / f"schema-{tag}.ini")
        drain.db_upgrade(ini)

    def empty(self, database: str, name: str) -> str:
        """A new outbox with the schema and no rows; its URL."""
        if database == "sqlite":
            path = self.work / f"{name}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            url = f"sqlite:///{path}"
        elif database == "mariadb":
            self.mariadb.drop_database(name)
            url = self.mariadb.create_database(name)
        else:
            self.pg.drop_database(name)
            url = self.pg.create_database(name)
        self._schema(url, name)
        return url

    def filled(self, database: str, name: str, rows: int) -> str:
        """A new outbox of `rows` due rows, filled with plain INSERTs; its URL."""
        url = self.empty(database, name)
        log(f"filling {database} {name} with {rows} rows")
        if database == "sqlite":
            seconds = outbox.sqlite_fill(outbox.sqlite_path(url), rows, self.maker)
        elif database == "mariadb":
            seconds = outbox.mysql_fill(url, rows, self.maker)
        else:
            seconds = outbox.pg_fill(url, rows, self.maker)
        self.fill_seconds[f"{database}:{rows}"] = round(seconds, 2)
        log(f"filled in {seconds:.1f} s")
        return url

    def fresh(self, database: str, rows: int, name: str = "bench_run") -> str:
        """A fresh copy of the template of (database, rows); its URL."""
        key = (database, rows)
        if key not in self.templates:
            self.templates[key] = self.filled(database, f"tmpl_{database}_{rows}", rows)
        template = self.templates[key]
        if database == "sqlite":
            dest = self.work / f"{name}.db"
            outbox.sqlite_copy(outbox.sqlite_path(template), dest)
            return f"sqlite:///{dest}"
        if database == "mariadb":
            name_of_template = make_url(template).database or ""
            return outbox.mysql_clone(template, name_of_template, name)
        return outbox.pg_clone(self.pg.url(), template.rsplit("/", 1)[1], name)

    def drop(self, url: str) -> None:
        """Delete an outbox."""
        if url.startswith("sqlite"):
            path = outbox.sqlite_path(url)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        elif outbox.is_mysql(url):
            self.mariadb.drop_database(make_url(url).database)
        else:
            self.pg.drop_database(url.rsplit("/", 1)[1])


def _load1() -> float:
    """The one-minute load average just after a measurement (others' work shows here)."""
    return round(os.getloadavg()[0], 2)


# -- phases -----------------------------------------------------------------------------------


def phase_throughput(args: argparse.Namespace, boxes: Outboxes, sink_bin: str) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with SmtpSink(sink_bin) as sink:
        for rnd in range(1, args.rounds + 1):
            for conns in args.connections:
                result = ceiling.run_subprocess(str(drain.PYTHON), sink.port, args.rows, conns)
                runs.append({"round": rnd, "kind": "ceiling", "load1": _load1(), **result})
                log(f"round {rnd} c={conns} ceiling {result['msgs_per_s']} msgs/s")
                source = ceiling.smtp_source(sink.port, args.rows, conns, result["message_bytes"])
                if source is not None:
                    runs.append(
                        {"round": rnd, "kind": "smtp-source", "connections": conns, **source}
                    )
                    log(f"round {rnd} c={conns} smtp-source {source['msgs_per_s']} msgs/s")
                for database in args.databases:
                    url = boxes.fresh(database, args.rows)
                    config = RobotConfig(url=url, port=sink.port, connections=conns)
                    tag = f"drain-{database}-c{conns}-r{rnd}"
                    result = drain.drain(config, boxes.work, args.rows, tag=tag)
                    boxes.drop(url)
                    runs.append(
                        {"round": rnd, "kind": f"robot-{database}", "load1": _load1(), **result}
                    )
                    log(
                        f"round {rnd} c={conns} robot {database} {result['msgs_per_s']} msgs/s "
                        f"(wall {result['wall_seconds']} s, peak RSS {result['peak_rss_mb']} MB)"
                    )
    return {"rows": args.rows, "rounds": args.rounds, "runs": runs, "medians": medians(runs)}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind and connection count: median msgs/s (and wall-clock msgs/s for the robot),
    and the robot/ceiling ratio of the medians."""
    out: dict[str, Any] = {}
    kinds = sorted({r["kind"] for r in runs})
    for kind in kinds:
        per: dict[str, Any] = {}
        for conns in sorted({r["connections"] for r in runs if r["kind"] == kind}):
            mine = [r for r in runs if r["kind"] == kind and r["connections"] == conns]
            entry = {
                "msgs_per_s": outbox.median([r["msgs_per_s"] for r in mine]),
                "all": [r["msgs_per_s"] for r in mine],
            }
            if kind.startswith("robot"):
                entry["msgs_per_s_wall"] = outbox.median([r["msgs_per_s_wall"] for r in mine])
                entry["peak_rss_mb"] = max(r["peak_rss_mb"] for r in mine)
            per[str(conns)] = entry
        out[kind] = per
    for kind in kinds:
        if not kind.startswith("robot"):
            continue
        for conns, entry in out[kind].items():
            ceil = out.get("ceiling", {}).get(conns, {}).get("msgs_per_s")
            entry["ratio_to_ceiling"] = round(entry["msgs_per_s"] / ceil, 3) if ceil else None
    return out


def phase_latency(args: argparse.Namespace, boxes: Outboxes, sink_bin: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with SmtpSink(sink_bin) as sink:
        for database in args.databases:
            url = boxes.empty(database, f"latency_{database}")
            config = RobotConfig(
                url=url, port=sink.port, connections=4, poll_seconds=args.poll_seconds
            )
            log(f"latency {database}: {args.latency_rate} rows/s for {args.latency_seconds} s")
            result = latency.measure(
                config,
                boxes.work,
                tag=f"latency-{database}",
                rate=args.latency_rate,
                seconds=args.latency_seconds,
            )
            boxes.drop(url)
            out[database] = result
            log(f"latency {database}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    return out


def phase_large(args: argparse.Namespace, boxes: Outboxes, sink_bin: str) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": args.large_rows, "time_limit_seconds": args.large_seconds}
    conns = max(args.connections)
    with SmtpSink(sink_bin) as sink:
        for database in args.large_databases:
            url = boxes.filled(database, f"large_{database}", args.large_rows)
            # The fill and the drain before it leave gigabytes of dirty pages that the kernel
            # may write back during this drain: on disk first, so the drain is timed alone.
            os.sync()
            config = RobotConfig(url=url, port=sink.port, connections=conns)
            log(f"large {database}: draining {args.large_rows} rows, c={conns}")
            result = drain.drain(
                config,
                boxes.work,
                args.large_rows,
                tag=f"large-{database}",
                time_limit=args.large_seconds or None,
                strict=False,
            )
            result["fill_seconds"] = boxes.fill_seconds.get(f"{database}:{args.large_rows}")
            boxes.drop(url)
            out[database] = result
            log(
                f"large {database}: {result['sent']} sent, {result['msgs_per_s']} msgs/s, "
                f"peak RSS {result['peak_rss_mb']} MB"
            )
    return out


def phase_two(args: argparse.Namespace, boxes: Outboxes, sink_bin: str) -> dict[str, Any]:
    rows = args.two_rows or args.rows
    conns = max(args.connections)
    work = boxes.work

    database = args.two_database

    def fresh(name: str) -> str:
        return boxes.fresh(database, rows, name)

    log(f"two robots on {database}: {rows} rows, c={conns} each")
    result = two_robots.measure(sink_bin, fresh, work, rows=rows, connections=conns)
    for key in ("1_robot", "2_robots"):
        r = result[key]
        log(f"{key}: {r['msgs_per_s']} msgs/s, exactly once: {r['check']['exactly_once']}")
    return {"rows": rows, "database": database, **result}


def phase_profile(args: argparse.Namespace, boxes: Outboxes, sink_bin: str) -> dict[str, Any]:
    spy = profile.py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    conns = max(args.connections)
    raw = args.out / "profile-raw.txt"
    with SmtpSink(sink_bin) as sink:
        url = boxes.fresh("sqlite", args.rows)
        config = RobotConfig(url=url, port=sink.port, connections=conns)
        log(f"profile: sqlite {args.rows} rows, c={conns}, under py-spy")
        result = drain.drain(
            config, boxes.work, args.rows, tag="profile", prefix=profile.prefix(spy, raw)
        )
        boxes.drop(url)
    shown = raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw
    return {"drain": result, "raw": str(shown), **profile.summarise(raw)}


RUNNERS: dict[str, Callable[[argparse.Namespace, Outboxes, str], dict[str, Any]]] = {
    "throughput": phase_throughput,
    "latency": phase_latency,
    "large": phase_large,
    "two": phase_two,
    "profile": phase_profile,
}


# -- environment ------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _git(rev: str | None) -> str:
    try:
        if rev:
            subject = subprocess.run(
                ["git", "log", "-1", '--format=%h "%s"', rev],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
            return f"commit {subject} (robot/ and migrations/ by git archive)"
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "robot", "migrations"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"working tree at {head}" + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "?"


def environment(args: argparse.Namespace, pg_cluster: Any, mariadb: Any = None) -> dict[str, Any]:
    """The machine, the versions and the command of this run."""
    mariadb_version = "-"
    if mariadb is not None:
        with outbox.mysql_connect(mariadb.url("mysql")) as my, my.cursor() as cur:
            cur.execute("SELECT version()")
            mariadb_version = str(cur.fetchone()[0])
    pg_version = "-"
    if pg_cluster is not None:
        import psycopg

        with psycopg.connect(outbox.pg_dsn(pg_cluster.url())) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            pg_version = row[0] if row else "?"
    debian = Path("/etc/debian_version")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.run", *sys.argv[1:]]),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": f"Debian {debian.read_text().strip()}" if debian.exists() else platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "email_robot": f"{_version('email-robot')}, {_git(args.rev)}",
        "aiosmtplib": _version("aiosmtplib"),
        "sqlalchemy": _version("sqlalchemy"),
        "psycopg": _version("psycopg"),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version,
        "postgresql_settings": "throwaway cluster of tests/support/pg.py: fsync, "
        "synchronous_commit and full_page_writes off",
        "mariadb": mariadb_version,
        "mariadb_settings": "throwaway server of tests/support/mariadb.py: "
        "innodb_flush_log_at_trx_commit 2, doublewrite off, no binary log",
        "pymysql": _version("pymysql"),
        "postfix_smtp_sink": postfix_version(),
        "py_spy": _version("py-spy"),
        "settings": {
            "rows": args.rows,
            "rounds": args.rounds,
            "connections": args.connections,
            "databases": args.databases,
            "large_rows": args.large_rows,
            "large_databases": args.large_databases,
            "large_seconds": args.large_seconds,
            "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds,
            "poll_seconds": args.poll_seconds,
            "seed": outbox.SEED,
            "body_chars": outbox.BODY_CHARS,
            "robot_ini": RobotConfig(url="URL", port=0, connections=0)
            .text()
            .replace("url = URL", "url = (a fresh SQLite file or PostgreSQL database)")
            .replace("port = 0", "port = (smtp-sink's)")
            .replace("connections = 0", f"connections = {args.connections}"),
        },
    }


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="email-robot throughput benchmark (never in CI)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    names = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--rows", type=int, default=20000, help="backlog of a drain (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the throughput phase")
    parser.add_argument("--connections", type=ints, default=[1, 4, 16], help="e.g. 1,4,16")
    parser.add_argument("--databases", type=names, default=list(DATABASES))
    parser.add_argument("--large-rows", type=int, default=1_000_000)
    # MariaDB's 1,000,000-row fill alone takes minutes: its large drain only when asked.
    parser.add_argument("--large-databases", type=names, default=["sqlite", "postgresql"])
    parser.add_argument(
        "--large-seconds",
        type=float,
        default=1800,
        help="stop a large drain after this many seconds, measuring what it sent (0: never)",
    )
    parser.add_argument("--latency-rate", type=float, default=20.0, help="rows/s")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="latency robots' poll")
    parser.add_argument("--two-rows", type=int, default=0, help="two-robot backlog (--rows)")
    parser.add_argument(
        "--two-database", default="postgresql", help="the two robots' outbox (or mariadb)"
    )
    parser.add_argument("--only", type=names, default=None, help=",".join(PHASES))
    parser.add_argument("--skip", type=names, default=[])
    parser.add_argument(
        "--rev",
        default=None,
        help="benchmark robot/ and migrations/ of this git revision (git archive) instead of "
        "the working tree",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke pass")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--no-report", action="store_true", help="do not render docs/")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.connections = 2000, 1, [1, 16]
        args.large_rows, args.latency_seconds = 10_000, 5.0
        if args.only is None:
            args.skip = [*args.skip, "profile"]
        args.out = args.out or RESULTS / "quick"
    args.out = args.out or RESULTS
    args.only = args.only or list(PHASES)
    args.phases = [p for p in PHASES if p in args.only and p not in args.skip]
    unknown = set(args.only) - set(PHASES)
    if unknown or set(args.databases) - set(DATABASES):
        parser.error(f"unknown phase or database: {sorted(unknown) or args.databases}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("CI"):
        print("bench: not run in CI (timed figures mean nothing there)", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    sink_bin = ensure_installed()
    needs_pg = "postgresql" in args.databases or (
        "two" in args.phases and args.two_database == "postgresql"
    )
    needs_pg = needs_pg or "postgresql" in args.large_databases
    work = Path(tempfile.mkdtemp(prefix="robot-bench-"))
    work.chmod(0o755)  # smtp-sink writes its dump as an unprivileged user
    pg_cluster = None
    mariadb = None
    timings: dict[str, float] = {}
    try:
        if args.rev:
            args.rev = subprocess.run(
                ["git", "rev-parse", "--verify", f"{args.rev}^{{commit}}"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            source = work / "source"
            source.mkdir()
            archive = subprocess.run(
                ["git", "archive", args.rev, "robot", "migrations"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
            drain.use_source(source)
        if needs_pg:
            from tests.support.pg import PgCluster

            pg_cluster = PgCluster()
            pg_cluster.start()
        mariadb_phases = [*args.databases, *args.large_databases]
        if "two" in args.phases:
            mariadb_phases.append(args.two_database)
        if "mariadb" in mariadb_phases:
            from tests.support.mariadb import MariaDbServer

            mariadb = MariaDbServer()
            mariadb.start()
        env = environment(args, pg_cluster, mariadb)
        (args.out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
        boxes = Outboxes(work, pg_cluster, mariadb)
        for phase in args.phases:
            log(f"phase {phase}")
            t0 = time.perf_counter()
            result = RUNNERS[phase](args, boxes, sink_bin)
            timings[phase] = round(time.perf_counter() - t0, 1)
            result["phase_seconds"] = timings[phase]
            result["load1_at_end"] = _load1()
            result["fill_seconds"] = dict(boxes.fill_seconds)
            path = args.out / f"{'two_robots' if phase == 'two' else phase}.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
            log(f"phase {phase} done in {timings[phase]} s -> {path}")
    finally:
        if pg_cluster is not None:
            pg_cluster.stop()
        if mariadb is not None:
            mariadb.stop()
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_report:
        doc = [] if args.out == RESULTS else ["--doc", str(args.out / "benchmarks.md")]
        report.main(["--results", str(args.out), *doc])
    return 0


if __name__ == "__main__":
    sys.exit(main())
