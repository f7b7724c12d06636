"""The console's queue page on a large outbox: 1,000,000 rows (mostly sent, some pending in
their grace window or scheduled, some deferred, failed or bounced, in several batches and
accounts) on SQLite and on a throwaway PostgreSQL cluster, served by a real `email-robot web`
process and read over a socket with httpx, as a signed-in admin's browser does.

    PYTHONPATH=. .venv/bin/python -m bench.console [--rows 1000000] [--requests 20]

Each request is made 3 times to warm up, then timed `--requests` times (median and p95, ms).
Also prints the query plans of the page's queries (EXPLAIN) at that size.
Writes bench/results/console.json (a database not run keeps its figures there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import Engine, event

from bench.outbox import RowMaker, median, percentile, pg_dsn
from robot.config import load_settings
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.operations import operations_for
from robot.web.app import PAGE_ROWS, SOON_ROWS, SORTED_ROWS, QueueFilter
from robot.web.users import Users

RESULTS = Path(__file__).parent / "results"
USER, PASSWORD = "bench", "bench-console-password-1"
GRACE_MINUTES = 60
SPACING_SECONDS = 2  # between two rows' created_at: 1M rows span 23 days
BATCH_ROWS = 50_000  # rows of one batch id range (30 % of them are transactional, no batch)
COLUMNS = (
    "id created_at send_after status account recipient subject body_text batch attempts "
    "next_attempt_at message_id smtp_code smtp_reply last_error sent_at updated_at"
).split()
CHUNK = 5000
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
OLDER = re.compile(r"\?(?:[^\"]*&amp;)?before=(\d+)")
WARM_UPS = 3
QUERIES = ("counts", "page", "leaving soon")  # in the order the page runs them

INI = """\
[database]
url = {url}

[robot]
grace_minutes = {grace}

[smtp]
host = 127.0.0.1
port = 2525
security = none

[sender]
address = robot@example.org

[account:shop]
address = shop@example.org

[account:news]
address = news@example.org

[log]
format = json
level = warning
"""


# -- the rows ---------------------------------------------------------------------------------


def _status(row_id: int, rows: int) -> str:
    """The mix: the newest 2,000 rows pending (in their grace window), one in a thousand
    pending and scheduled for tomorrow, ~1 % deferred, 0.5 % failed, 0.3 % bounced, a few
    held, retracted and suppressed, the rest (~97 %) sent."""
    if row_id > rows - 2000:
        return "pending"
    k = row_id % 1000
    if k == 500:
        return "pending"
    if 1 <= k <= 9:
        return "deferred"
    if 10 <= k <= 14:
        return "failed"
    if 15 <= k <= 17:
        return "bounced"
    return {18: "held", 19: "retracted", 20: "suppressed"}.get(k, "sent")


def outbox_rows(rows: int, now: datetime, maker: RowMaker) -> Iterator[tuple[Any, ...]]:
    """Every column the console shows, for ids 1..rows (created_at of id `rows` is `now`)."""
    for row_id in range(1, rows + 1):
        made = maker.row(row_id - 1)
        created = now - timedelta(seconds=(rows - row_id) * SPACING_SECONDS)
        status = _status(row_id, rows)
        finished = status not in ("pending", "held")
        sent = created + timedelta(seconds=5) if status == "sent" else None
        next_attempt = now + timedelta(minutes=30) if status == "deferred" else None
        send_after = (
            now + timedelta(days=1) if status == "pending" and row_id % 1000 == 500 else None
        )
        code, reply, error = {
            "sent": (250, "250 2.0.0 Ok: queued", None),
            "deferred": (451, "451 4.7.1 Greylisted, try again later", "greylisted"),
            "failed": (550, "550 5.1.1 No such user", "no such user"),
            "bounced": (550, "550 5.1.1 No such user (DSN)", "bounced"),
        }.get(status, (None, None, None))
        attempts = {"sent": 1, "deferred": 2, "failed": 1, "bounced": 1}.get(status, 0)
        yield (
            row_id,
            created,
            send_after,
            status,
            {4: "shop", 5: "shop", 6: "news"}.get(row_id % 7),
            made.recipient,
            made.subject,
            made.body_text,
            f"campaign-{row_id // BATCH_ROWS}" if row_id % 10 >= 3 else None,
            attempts,
            next_attempt,
            f"<{row_id}.bench@example.org>" if attempts else None,
            code,
            reply,
            error,
            sent,
            (sent or created + timedelta(seconds=5)) if finished else None,
        )


def _chunks(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _sqlite_time(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"
    return value


def sqlite_fill(path: Path, rows: int, now: datetime, maker: RowMaker) -> None:
    """INSERT the rows in one transaction, then ANALYZE (as `db maintain` would)."""
    insert = f"INSERT INTO outbox ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for chunk in _chunks(outbox_rows(rows, now, maker)):
            conn.executemany(insert, [tuple(_sqlite_time(v) for v in row) for row in chunk])
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def pg_fill(url: str, rows: int, now: datetime, maker: RowMaker) -> None:
    """COPY the rows, move the id sequence past them, then VACUUM (FREEZE, ANALYZE): the
    visibility map set, as autovacuum leaves a table of old rows (a plain VACUUM right after
    the COPY left most pages unmarked, and the counts read the whole table instead of the
    status index)."""
    with psycopg.connect(pg_dsn(url)) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY outbox ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in outbox_rows(rows, now, maker):
                    copy.write_row(row)
            cur.execute("SELECT setval(pg_get_serial_sequence('outbox', 'id'), %s)", (rows,))
        conn.commit()
    with psycopg.connect(pg_dsn(url), autocommit=True) as conn:
        conn.execute("VACUUM (FREEZE, ANALYZE) outbox")


# -- the requests -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_console(ini: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`python -m robot -c INI web --listen 127.0.0.1:PORT`, once it answers."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    command = [sys.executable, "-m", "robot", "-c", str(ini), "web"]
    process = subprocess.Popen(
        [*command, "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the console exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the console did not answer within 60 s")


def signed_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=120, follow_redirects=True)
    found = CSRF.search(client.get("/login").text)
    assert found is not None
    data = {"username": USER, "password": PASSWORD, "csrf": found.group(1)}
    response = client.post("/login", data=data)
    assert response.url.path == "/", response.text[:500]
    return client


def timed(client: httpx.Client, path: str, count: int) -> dict[str, Any]:
    """`WARM_UPS` requests, then `count` timed ones (ms, wall clock around the request)."""
    times: list[float] = []
    size = 0
    for i in range(WARM_UPS + count):
        started = time.perf_counter()
        response = client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200 and not response.history, (path, response.status_code)
        size = len(response.content)
        if i >= WARM_UPS:
            times.append(elapsed)
    return {
        "path": path,
        "median_ms": round(median(times), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "max_ms": round(max(times), 1),
        "bytes": size,
    }


def requests(client: httpx.Client, rows: int, count: int) -> dict[str, dict[str, Any]]:
    """The requests a browser makes, each timed."""
    first = client.get("/").text
    older = OLDER.search(first)
    assert older is not None, "no link to the second page"
    paths = {
        "queue": "/",
        "status pending": "/?status=pending",
        "status sent": "/?status=sent",
        "batch": "/?batch=campaign-7",
        "recipient text": "/?q=keiko",
        "second page (keyset)": f"/?before={older.group(1)}",
        "live refresh": "/queue/live",
        "live refresh, status sent": "/queue/live?status=sent",
        "row page": f"/row/{rows // 2}",
    }
    out = {}
    for name, path in paths.items():
        out[name] = timed(client, path, count)
        print(f"  {name:28} {out[name]['median_ms']:8.1f} ms  p95 {out[name]['p95_ms']:8.1f}")
    return out


# -- the query plans --------------------------------------------------------------------------


def page_statements(engine: Engine, settings_ini: Path, values: dict[str, str]) -> list[Any]:
    """The SQL the queue page runs for a filter (as Console.queue_context does), captured."""
    ops = operations_for(load_settings(settings_ini), engine)
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        chosen = QueueFilter.from_values(values)
        counts = ops.counts_where(chosen.where(ops, with_status=False))
        walk = counts.get(chosen.status, 0) > SORTED_ROWS
        ops.page(chosen.where(ops, walk_ids=walk), limit=PAGE_ROWS + 1)
        ops.leaving_soon(chosen.where(ops), limit=SOON_ROWS)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return [(s, p) for s, p in captured if "FROM outbox" in s]


def plans(engine: Engine, ini: Path) -> dict[str, list[dict[str, Any]]]:
    """EXPLAIN (PostgreSQL: ANALYZE) of each query of each filter, and the median time of the
    query alone."""
    sqlite = engine.dialect.name == "sqlite"
    explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, COSTS OFF) "
    filters = {
        "queue": {},
        "status pending": {"status": "pending"},
        "status sent": {"status": "sent"},
        "batch": {"batch": "campaign-7"},
        "recipient text": {"q": "keiko"},
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for name, values in filters.items():
        out[name] = []
        statements = page_statements(engine, ini, values)
        for kind, (statement, parameters) in zip(QUERIES, statements, strict=True):
            with engine.connect() as conn:
                plan = [
                    " ".join(str(c) for c in r)
                    for r in conn.exec_driver_sql(explain + statement, parameters)
                ]
                runs = []
                for _ in range(WARM_UPS + 5):  # the query alone, rows fetched: what it costs
                    started = time.perf_counter()
                    conn.exec_driver_sql(statement, parameters).fetchall()
                    runs.append((time.perf_counter() - started) * 1000)
            out[name].append(
                {
                    "query": kind,
                    "run_ms_median": round(median(runs[WARM_UPS:]), 1),
                    "plan": plan,
                    "sql": statement,
                }
            )
    return out


# -- one database -----------------------------------------------------------------------------


def measure(url: str, rows: int, count: int, work: Path, fill: Any) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade(engine)
    now = datetime.now(UTC)
    started = time.perf_counter()
    fill(rows, now)
    filled = time.perf_counter() - started
    print(f"  filled {rows} rows in {filled:.0f} s")
    Users(engine).add(USER, "admin", PASSWORD)
    ini = work / f"robot-{engine.dialect.name}.ini"
    ini.write_text(INI.format(url=url, grace=GRACE_MINUTES))
    port = free_port()
    process = start_console(ini, port, work / f"web-{engine.dialect.name}.log")
    try:
        client = signed_in(f"http://127.0.0.1:{port}")
        timings = requests(client, rows, count)
        client.close()
    finally:
        process.terminate()
        process.wait(30)
    query_plans = plans(engine, ini)
    with engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT status, count(*) FROM outbox GROUP BY 1")
        by_status = {str(status): int(n) for status, n in found}
    engine.dispose()
    return {
        "rows": rows,
        "statuses": dict(sorted(by_status.items())),
        "fill_seconds": round(filled, 1),
        "requests": timings,
        "plans": query_plans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20, help="timed requests of each page")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    from tests.support.pg import PgCluster

    maker = RowMaker()
    results: dict[str, Any] = {"requests_each": args.requests, "warm_ups": WARM_UPS}
    databases = args.databases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "sqlite" in databases:
            print("sqlite")
            path = work / "console.db"
            results["sqlite"] = measure(
                f"sqlite:///{path}",
                args.rows,
                args.requests,
                work,
                lambda n, now: sqlite_fill(path, n, now, maker),
            )
        if "postgresql" in databases:
            print("postgresql")
            cluster = PgCluster()
            cluster.start()
            try:
                url = cluster.create_database("console")
                results["postgresql"] = measure(
                    url,
                    args.rows,
                    args.requests,
                    work,
                    lambda n, now: pg_fill(url, n, now, maker),
                )
            finally:
                cluster.stop()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "console.json"
    if path.exists():  # a database not run this time keeps its figures
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2) + "\n")
    for database in ("sqlite", "postgresql"):
        for name, found in results.get(database, {}).get("plans", {}).items():
            for query in found:
                print(f"{database} {name}: {query['query']} ({query['run_ms_median']} ms)")
                print("    " + "\n    ".join(query["plan"]))


if __name__ == "__main__":
    main()
