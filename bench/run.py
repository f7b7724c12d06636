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
  wan         through bench/netdelay.py at --wan-rtts ms of round-trip time, --wan-connections
              connections, to smtp-sink with and without PIPELINING: the robot (SQLite, each
              --rev), its protocol alone, aiosmtplib, smtp-source, smtplib, one-rtt, lockstep
  durable     --rows rows drained on the throwaway PostgreSQL cluster (fsync off) and on a
              durable one (PostgreSQL's defaults), --durable-rounds rounds: commits, WAL syncs
  fair        account a (rate = --fair-rate, --fair-a-rows rows) beside unlimited b
              (--fair-b-rows rows), against b alone
Then bench/report.py renders docs/benchmarks.md and docs/benchmarks-throughput.png.
Never run in CI: the figures are only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import itertools
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

from bench import ceiling, drain, fair, latency, netdelay, outbox, profile, report, two_robots
from bench.drain import RobotConfig
from bench.sink import SmtpSink, ensure_installed, postfix_version

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PHASES = ("throughput", "latency", "large", "two", "profile", "wan", "durable", "fair")
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
        self.templates: dict[tuple[str, int, str], str] = {}
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
        """A fresh copy of the template of (database, rows) with the schema of the robot
        under test (revisions may differ by a migration); its URL."""
        source = drain.SOURCE.name if drain.SOURCE else ""
        key = (database, rows, source)
        if key not in self.templates:
            tag = f"tmpl_{database}_{rows}" + (f"_{source[-12:]}" if source else "")
            self.templates[key] = self.filled(database, tag.replace("-", "_"), rows)
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
                result = robot_ceiling(boxes.work, sink.port, args.rows, conns)
                runs.append({"round": rnd, "kind": "ceiling-robot", "load1": _load1(), **result})
                log(f"round {rnd} c={conns} robot protocol {result['msgs_per_s']} msgs/s")
                source = ceiling.smtp_source(sink.port, args.rows, conns, result["message_bytes"])
                if source is not None:
                    runs.append(
                        {"round": rnd, "kind": "smtp-source", "connections": conns, **source}
                    )
                    log(f"round {rnd} c={conns} smtp-source {source['msgs_per_s']} msgs/s")
                for database, procs in itertools.product(args.databases, args.robot_processes):
                    url = boxes.fresh(database, args.rows)
                    config = RobotConfig(
                        url=url, port=sink.port, connections=conns, processes=procs
                    )
                    kind = f"robot-{database}" + (f"-p{procs}" if procs != 1 else "")
                    tag = f"drain-{kind.removeprefix('robot-')}-c{conns}-r{rnd}"
                    result = drain.drain(config, boxes.work, args.rows, tag=tag)
                    boxes.drop(url)
                    runs.append({"round": rnd, "kind": kind, "load1": _load1(), **result})
                    log(
                        f"round {rnd} c={conns} {kind} {result['msgs_per_s']} msgs/s "
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
            mine = out.get("ceiling-robot", {}).get(conns, {}).get("msgs_per_s")
            entry["ratio_to_robot_ceiling"] = round(entry["msgs_per_s"] / mine, 3) if mine else None
    return out


def robot_ceiling(work: Path, port: int, total: int, conns: int) -> dict[str, Any]:
    """bench/robot_ceiling.py in a fresh interpreter, with the robot under test."""
    args = ["--port", str(port), "--messages", str(total), "--connections", str(conns)]
    return drain.run_module("bench.robot_ceiling", args, work)


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
            config,
            boxes.work,
            args.rows,
            tag="profile",
            prefix=profile.prefix(spy, raw, gil=args.profile_gil),
        )
        boxes.drop(url)
    shown = raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw
    return {"drain": result, "raw": str(shown), **profile.summarise(raw)}


# -- issue 15: latency, durable commits, fair accounts ---------------------------------------


def wan_rows(args: argparse.Namespace, rtt: float, conns: int, pipelining: bool) -> int:
    """The backlog of one WAN run: about --wan-seconds of sending for a client that pays two
    round trips a message (four without PIPELINING), at least 2 messages a connection."""
    trips = 2 if pipelining else 4
    rows = round(conns / rtt / trips * float(args.wan_seconds) / 100) * 100
    return max(rows, 2 * conns, 100)


def _wan_senders(pipelining: bool) -> list[str]:
    """The bare senders of a WAN configuration (besides the robot and its protocol)."""
    return ["ceiling", "smtp-source", "smtplib", "one-rtt" if pipelining else "lockstep"]


def _bare_sender(
    kind: str, port: int, rows: int, conns: int, message_bytes: int, work: Path
) -> dict[str, Any] | None:
    if kind == "ceiling":
        return ceiling.run_subprocess(str(drain.PYTHON), port, rows, conns)
    if kind == "smtp-source":
        return ceiling.smtp_source(port, rows, conns, message_bytes)
    wan_args = ["--client", kind, "--port", str(port), "--messages", str(rows)]
    return drain.run_module("bench.wan", [*wan_args, "--connections", str(conns)], work)


def phase_wan(args: argparse.Namespace, boxes: Outboxes, sink_bin: str) -> dict[str, Any]:
    checks = []
    for rtt_ms in args.wan_rtts:
        result = netdelay.check(rtt_ms / 1000)
        checks.append(result)
        pings = ", ".join(f"{k} B {v['median_ms']} ms" for k, v in result["ping_pong"].items())
        log(f"netdelay check at {rtt_ms} ms: {pings}, passed {result['passed']}")
    runs: list[dict[str, Any]] = []
    message_bytes = 0
    for rnd in range(1, args.wan_rounds + 1):
        for pipelining in (True, False):
            server = "pipelining" if pipelining else "no-pipelining"
            with SmtpSink(sink_bin, pipelining=pipelining) as sink:
                for rtt_ms in args.wan_rtts:
                    rtt = rtt_ms / 1000
                    with netdelay.NetDelay(sink.port, rtt, str(drain.PYTHON)) as port:
                        for conns in args.wan_connections:
                            rows = wan_rows(args, rtt, conns, pipelining)
                            where = {
                                "round": rnd,
                                "server": server,
                                "rtt_ms": rtt_ms,
                                "connections": conns,
                                "rows": rows,
                                "limit_msgs_per_s": round(conns / rtt, 1),
                            }
                            for label, tree in args.sources.items():
                                drain.use_source(tree)
                                result = robot_ceiling(boxes.work, port, rows, conns)
                                message_bytes = result["message_bytes"]
                                runs.append(
                                    {**where, "kind": "ceiling-robot", "rev": label, **result}
                                )
                                runs[-1]["load1"] = _load1()
                                log(
                                    f"wan {server} {rtt_ms} ms c={conns} robot protocol "
                                    f"{label}: {result['msgs_per_s']} msgs/s"
                                )
                                for database in args.wan_databases:
                                    url = boxes.fresh(database, rows)
                                    config = RobotConfig(url=url, port=port, connections=conns)
                                    tag = f"wan-{server}-{rtt_ms}-c{conns}-{database}"
                                    result = drain.drain(config, boxes.work, rows, tag=tag)
                                    window = outbox.sent_window_from_claim(url)
                                    boxes.drop(url)
                                    result["msgs_per_s_from_claim"] = (
                                        round(result["sent"] / window, 1) if window else 0.0
                                    )
                                    runs.append(
                                        {
                                            **where,
                                            "kind": f"robot-{database}",
                                            "rev": label,
                                            "load1": _load1(),
                                            **result,
                                        }
                                    )
                                    log(
                                        f"wan {server} {rtt_ms} ms c={conns} robot {database} "
                                        f"{label}: {result['msgs_per_s']} msgs/s "
                                        f"({result['msgs_per_s_from_claim']} from first claim)"
                                    )
                            drain.use_source(args.sources.get(args.rev_labels[0]))
                            for kind in _wan_senders(pipelining):
                                got = _bare_sender(
                                    kind, port, rows, conns, message_bytes or 2000, boxes.work
                                )
                                if got is None:
                                    continue
                                runs.append({**where, "kind": kind, "load1": _load1(), **got})
                                runs[-1]["connections"] = conns
                                log(
                                    f"wan {server} {rtt_ms} ms c={conns} {kind}: "
                                    f"{got['msgs_per_s']} msgs/s"
                                )
    return {
        "rtts_ms": args.wan_rtts,
        "connections": args.wan_connections,
        "seconds_sized_for": args.wan_seconds,
        "rounds": args.wan_rounds,
        "revs": args.rev_labels,
        "netdelay_check": checks,
        "runs": runs,
        "summary": wan_summary(runs),
    }


def wan_summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (server, RTT, connections): the median msgs/s of each sender (the robot's from its
    first claim, so that its connections' set-up counts as the clients' does), its share of
    connections / RTT, the robot's ratios to the smtplib loop and to the best
    one-command-at-a-time client (servers without PIPELINING)."""
    out = []
    keys = sorted({(r["server"], r["rtt_ms"], r["connections"]) for r in runs})
    for server, rtt_ms, conns in keys:
        mine = [
            r
            for r in runs
            if (r["server"], r["rtt_ms"], r["connections"]) == (server, rtt_ms, conns)
        ]
        limit = mine[0]["limit_msgs_per_s"]
        senders: dict[str, float] = {}
        for name in sorted({_sender_name(r) for r in mine}):
            values = [_rate_of(r) for r in mine if _sender_name(r) == name]
            senders[name] = outbox.median(values)
        lockstep = [v for k, v in senders.items() if not k.startswith(("robot", "one-rtt"))]
        best_one_at_a_time = max(lockstep) if server == "no-pipelining" and lockstep else None
        smtplib_rate = senders.get("smtplib")
        entry: dict[str, Any] = {
            "server": server,
            "rtt_ms": rtt_ms,
            "connections": conns,
            "rows": mine[0]["rows"],
            "limit_msgs_per_s": limit,
            "senders": {
                name: {
                    "msgs_per_s": rate,
                    "of_limit": round(rate / limit, 3),
                    "to_smtplib": round(rate / smtplib_rate, 2) if smtplib_rate else None,
                    "to_best_one_at_a_time": round(rate / best_one_at_a_time, 3)
                    if best_one_at_a_time
                    else None,
                    "round_trips_a_message": round(conns / (rtt_ms / 1000) / rate, 2)
                    if rate
                    else None,
                }
                for name, rate in senders.items()
            },
            "best_one_at_a_time": best_one_at_a_time,
        }
        out.append(entry)
    return out


def _sender_name(run: dict[str, Any]) -> str:
    return f"{run['kind']} {run['rev']}" if run.get("rev") else str(run["kind"])


def _rate_of(run: dict[str, Any]) -> float:
    return float(run.get("msgs_per_s_from_claim") or run["msgs_per_s"])


def phase_durable(args: argparse.Namespace, boxes: Outboxes, sink_bin: str) -> dict[str, Any]:
    from tests.support.pg import PgCluster

    conns = max(args.connections)
    durable = PgCluster(durable=True)
    durable.start()
    work = boxes.work / "durable"
    work.mkdir(exist_ok=True)
    durable_boxes = Outboxes(work, durable)
    clusters = {"fsync off": boxes, "durable": durable_boxes}
    settings_shown = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
    runs: list[dict[str, Any]] = []
    settings: dict[str, dict[str, str]] = {}
    try:
        with SmtpSink(sink_bin) as sink:
            for rnd in range(1, args.durable_rounds + 1):
                for label, tree in args.sources.items():
                    drain.use_source(tree)
                    for name, bx in clusters.items():
                        url = bx.fresh("postgresql", args.rows, name="bench_durable")
                        settings[name] = outbox.pg_settings(url, settings_shown)
                        tag = f"durable-{name.replace(' ', '-')}-{len(runs)}"
                        config = RobotConfig(url=url, port=sink.port, connections=conns)
                        result = _counted_drain(config, work, args.rows, tag)
                        bx.drop(url)
                        runs.append(
                            {
                                "round": rnd,
                                "rev": label or "working tree",
                                "cluster": name,
                                "load1": _load1(),
                                **result,
                            }
                        )
                        log(
                            f"durable r{rnd} {label} {name}: {result['msgs_per_s']} msgs/s, "
                            f"{result['commits']} commits, "
                            f"{result['messages_per_commit']} msgs/commit"
                        )
        drain.use_source(args.sources[args.rev_labels[0]])
    finally:
        durable.stop()
    by_rev = {}
    for label in args.rev_labels:
        rev = label or "working tree"
        medians_of = {
            name: {
                key: outbox.median(
                    [r[key] for r in runs if (r["rev"], r["cluster"]) == (rev, name) and r[key]]
                )
                for key in (
                    "msgs_per_s",
                    "commits_per_s",
                    "messages_per_commit",
                    "wal_syncs_per_s",
                )
            }
            for name in clusters
        }
        fast, slow = medians_of["fsync off"]["msgs_per_s"], medians_of["durable"]["msgs_per_s"]
        by_rev[rev] = {
            "medians": medians_of,
            "ratio_durable_to_fast": round(slow / fast, 3) if fast else None,
        }
    first = by_rev[args.rev_labels[0] or "working tree"]
    return {
        "rows": args.rows,
        "connections": conns,
        "rounds": args.durable_rounds,
        "settings": settings,
        "filesystem": _filesystem(),
        "fdatasync": fdatasync_probe(durable.base_dir.parent),
        "runs": runs,
        "by_rev": by_rev,
        **first,
    }


def _counted_drain(config: RobotConfig, work: Path, rows: int, tag: str) -> dict[str, Any]:
    """A PostgreSQL drain with its commits (pg_stat_database) and WAL syncs (pg_stat_wal)."""
    before = outbox.pg_counters(config.url)
    result = drain.drain(config, work, rows, tag=tag)
    time.sleep(1.0)  # the robot's backends report their counts as they exit
    after = outbox.pg_counters(config.url)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    commits = delta["xact_commit"] - 1  # our own reading of the counters
    window = result["window_seconds"]
    return result | {
        "commits": commits,
        "commits_per_s": round(commits / window, 1) if window else None,
        "messages_per_commit": round(result["sent"] / commits, 2) if commits else None,
        "wal_syncs": delta.get("wal_sync"),
        "wal_syncs_per_s": round(delta["wal_sync"] / window, 1)
        if window and "wal_sync" in delta
        else None,
        "wal_bytes_per_message": round(delta["wal_bytes"] / result["sent"])
        if "wal_bytes" in delta
        else None,
    }


def fdatasync_probe(folder: Path, seconds: float = 2.0) -> dict[str, Any]:
    """How long one 8 KiB write + fdatasync takes in `folder` (the clusters' disk): what a
    durable commit waits for at least."""
    path = folder / "fdatasync-probe"
    times = []
    block = os.urandom(8192)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "syncs": len(times),
        "median_ms": round(outbox.median(times) * 1000, 3),
        "p90_ms": round(outbox.percentile(times, 90) * 1000, 3),
        "per_s": round(len(times) / sum(times), 1) if times else 0.0,
    }


def _filesystem() -> str:
    """The file system the clusters live on (/tmp)."""
    try:
        out = subprocess.run(
            ["df", "--output=fstype,source", "/tmp"], capture_output=True, text=True
        ).stdout.split()
        return " ".join(out[2:]) if len(out) >= 4 else "?"
    except OSError:
        return "?"


def phase_fair(args: argparse.Namespace, boxes: Outboxes, sink_bin: str) -> dict[str, Any]:
    conns = max(args.connections)
    out: dict[str, Any] = {
        "rate": args.fair_rate,
        "a_rows": args.fair_a_rows,
        "b_rows": args.fair_b_rows,
        "connections": conns,
        "revs": [label or "working tree" for label in args.rev_labels],
        "by_rev": {},
    }
    with SmtpSink(sink_bin) as sink:
        for database in args.fair_databases:
            rounds: dict[str, list[dict[str, Any]]] = {}
            for rnd in range(1, args.fair_rounds + 1):
                for label, tree in args.sources.items():
                    drain.use_source(tree)
                    rev = label or "working tree"
                    rounds.setdefault(rev, []).append(
                        _fair_round(args, boxes, sink, database, rnd, rev)
                    )
            drain.use_source(args.sources[args.rev_labels[0]])
            for rev, done in rounds.items():
                got = _fair_medians(done)
                out["by_rev"].setdefault(rev, {})[database] = got
                log(f"fair {database} {rev}: b beside a / b alone {got['b_ratio']}")
            out[database] = out["by_rev"][out["revs"][0]][database]
    return out


def _fair_round(
    args: argparse.Namespace, boxes: Outboxes, sink: SmtpSink, database: str, rnd: int, rev: str
) -> dict[str, Any]:
    """b alone, then b beside a, on fresh outboxes with the schema of the robot in use."""
    conns = max(args.connections)
    name = rev.split(" ")[0].replace("/", "_")
    url = boxes.fresh(database, args.fair_b_rows, name="bench_fair_b")
    base = RobotConfig(url=url, port=sink.port, connections=conns)
    config = fair.config_for(base, args.fair_rate)
    tag = f"fair-b-{database}-{name}-r{rnd}"
    alone = fair.b_alone(config, boxes.work, args.fair_b_rows, tag=tag)
    alone["load1"] = _load1()
    boxes.drop(url)
    log(f"fair {database} {rev} r{rnd}: b alone {alone['msgs_per_s']} msgs/s")
    total = args.fair_a_rows + args.fair_b_rows
    url = boxes.fresh(database, total, name="bench_fair_ab")
    config = fair.config_for(dataclasses.replace(base, url=url), args.fair_rate)
    both = fair.a_and_b(
        config,
        boxes.work,
        a_rows=args.fair_a_rows,
        b_rows=args.fair_b_rows,
        rate=args.fair_rate,
        tag=f"fair-ab-{database}-{name}-r{rnd}",
    )
    both["load1"] = _load1()
    boxes.drop(url)
    log(
        f"fair {database} {rev} r{rnd}: b beside a {both['b_msgs_per_s']} msgs/s, "
        f"a {both['a_rate_in_b_window']}/s in b's window, "
        f"a's rows claimed at most {both.get('a_sending_max')}"
    )
    return {"round": rnd, "b_alone": alone, "a_and_b": both}


def _fair_medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """b's medians alone and beside a over the rounds of one revision, their ratio."""
    alone_median = outbox.median([r["b_alone"]["msgs_per_s"] for r in rounds])
    beside = outbox.median([r["a_and_b"]["b_msgs_per_s"] for r in rounds])
    ratio = beside / alone_median if alone_median else None
    return {
        "rounds": rounds,
        "b_alone_median": alone_median,
        "b_beside_a_median": beside,
        "b_ratio": round(ratio, 3) if ratio else None,
        # the last round in full, for the tables
        "b_alone": rounds[-1]["b_alone"],
        "a_and_b": rounds[-1]["a_and_b"],
    }


RUNNERS: dict[str, Callable[[argparse.Namespace, Outboxes, str], dict[str, Any]]] = {
    "throughput": phase_throughput,
    "latency": phase_latency,
    "large": phase_large,
    "two": phase_two,
    "profile": phase_profile,
    "wan": phase_wan,
    "durable": phase_durable,
    "fair": phase_fair,
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
            "wan_rtts_ms": args.wan_rtts,
            "wan_connections": args.wan_connections,
            "wan_seconds": args.wan_seconds,
            "revs": [r or "working tree" for r in args.rev_labels],
            "fair": f"a: rate {args.fair_rate:g}, {args.fair_a_rows} rows; "
            f"b: unlimited, {args.fair_b_rows} rows",
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
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="profile: sample only the thread holding the GIL (py-spy --gil, 250 Hz)",
    )
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
        "the working tree; several, comma-separated (main,pipeline), run the robot of each "
        "in the wan phase, the first one everywhere else",
    )
    parser.add_argument(
        "--robot-processes",
        type=ints,
        default=[1],
        help="throughput: run the robot with each [robot] processes count, e.g. 1,2 "
        "(kind robot-DATABASE-pN for N > 1)",
    )
    parser.add_argument("--wan-rtts", type=ints, default=[20, 50], help="ms, e.g. 20,50")
    parser.add_argument("--wan-connections", type=ints, default=[4, 16])
    parser.add_argument(
        "--wan-seconds",
        type=float,
        default=10.0,
        help="size each WAN backlog for this long at two round trips a message",
    )
    parser.add_argument("--wan-rounds", type=int, default=1)
    parser.add_argument("--wan-databases", type=names, default=["sqlite"])
    parser.add_argument("--durable-rounds", type=int, default=2)
    parser.add_argument("--fair-rate", type=float, default=5.0, help="account a's rate")
    parser.add_argument("--fair-a-rows", type=int, default=10_000)
    parser.add_argument("--fair-b-rows", type=int, default=20_000)
    parser.add_argument("--fair-databases", type=names, default=["sqlite", "postgresql"])
    parser.add_argument("--fair-rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a small smoke pass")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--no-report", action="store_true", help="do not render docs/")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.connections = 2000, 1, [1, 16]
        args.large_rows, args.latency_seconds = 10_000, 5.0
        args.wan_seconds, args.wan_connections, args.durable_rounds = 3.0, [4], 1
        args.fair_a_rows, args.fair_b_rows, args.fair_rounds = 1000, 2000, 1
        if args.only is None:
            args.skip = [*args.skip, "profile"]
        args.out = args.out or RESULTS / "quick"
    args.out = args.out or RESULTS
    args.only = args.only or list(PHASES)
    args.phases = [p for p in PHASES if p in args.only and p not in args.skip]
    unknown = set(args.only) - set(PHASES)
    if unknown or set(args.databases) - set(DATABASES):
        parser.error(f"unknown phase or database: {sorted(unknown) or args.databases}")
    args.rev_labels = [r for r in (args.rev or "").split(",") if r] or [None]
    args.sources = {}
    return args


def extract(rev: str, work: Path) -> tuple[str, Path]:
    """robot/ and migrations/ of `rev` (git archive) in a folder of `work`; the full hash
    and the folder."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    source = work / f"source-{full[:12]}"
    source.mkdir(exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", full, "robot", "migrations"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return full, source


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("CI"):
        print("bench: not run in CI (timed figures mean nothing there)", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    sink_bin = ensure_installed()
    wanted = {
        "throughput": args.databases,
        "latency": args.databases,
        "large": args.large_databases,
        "two": [args.two_database],
        "profile": [],
        "wan": args.wan_databases,
        "durable": ["postgresql"],
        "fair": args.fair_databases,
    }
    needs_pg = any("postgresql" in wanted[phase] for phase in args.phases)
    work = Path(tempfile.mkdtemp(prefix="robot-bench-"))
    work.chmod(0o755)  # smtp-sink writes its dump as an unprivileged user
    pg_cluster = None
    mariadb = None
    timings: dict[str, float] = {}
    try:
        revs = []
        for label in args.rev_labels:
            if label is None:
                args.sources[None] = None
                continue
            full, source = extract(label, work)
            revs.append(full)
            args.sources[f"{label} ({full[:7]})" if not full.startswith(label) else label] = source
        args.rev_labels = list(args.sources)
        args.rev = revs[0] if revs else None
        drain.use_source(args.sources[args.rev_labels[0]])
        if needs_pg:
            from tests.support.pg import PgCluster

            pg_cluster = PgCluster()
            pg_cluster.start()
        mariadb_phases = [db for phase in args.phases for db in wanted[phase]]
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
            result["measured"] = {"date": env["date"], "command": env["command"]}
            result["measured"]["robot"] = env["email_robot"]
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
