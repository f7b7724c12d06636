"""The claim's query plan on a large outbox: it walks the partial queue index and stops at
the batch, so its cost does not grow with the table. Prints EXPLAIN for SQLite, PostgreSQL
and MariaDB (ANALYZE: the rows it really read) with N waiting rows and N finished ones, and
times claims at that size.

    .venv/bin/python -m bench.plans [--rows 1000000] [--databases sqlite,postgresql,mariadb]

Writes bench/results/plans.json (a database not run keeps its figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.outbox import RowMaker, mysql_fill, pg_fill, sqlite_fill
from robot.outbox.claims import CLAIM_ORDER, Claims
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.schema import outbox, utcnow
from robot.outbox.shared import WAITING

RESULTS = Path(__file__).parent / "results"
# Rows with no sender and no account: their Message-IDs take the fallback's HELO name.
MESSAGE_IDS = MessageIds(fallback=AccountDomain("", "example.org"))


def claim_query(box: Claims, limit: int) -> Any:
    due = select(outbox.c.id).where(WAITING, box.due_at() <= utcnow()).order_by(*CLAIM_ORDER)
    due = due.limit(limit)
    return box.statements.lock_for_claim(due)


def measure(url: str, rows: int, fill: Callable[[int], float]) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    fill(rows)
    filled = time.perf_counter() - started
    with engine.begin() as conn:  # half the table finished: the claim must not read them
        conn.exec_driver_sql(f"UPDATE outbox SET status = 'sent' WHERE id <= {rows // 2}")
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE outbox")
    box = Claims(engine, grace_seconds=0, lease_seconds=300)
    query = claim_query(box, 500)
    compiled = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = {
        "sqlite": "EXPLAIN QUERY PLAN ",
        "postgresql": "EXPLAIN (ANALYZE, COSTS OFF) ",
    }.get(engine.dialect.name, "ANALYZE ")  # MariaDB: the plan with the rows it read
    with engine.begin() as conn:
        result = conn.exec_driver_sql(explain + compiled)
        if engine.dialect.name in ("sqlite", "postgresql"):
            plan = [" ".join(str(c) for c in r) for r in result]
        else:
            plan = [
                ", ".join(
                    f"{k}={v}" for k, v in zip(result.keys(), r, strict=True) if v is not None
                )
                for r in result
            ]
    times = []
    for _ in range(10):
        started = time.perf_counter()
        claimed = box.claim("plans", 500, MESSAGE_IDS)
        times.append((time.perf_counter() - started) * 1000)
        assert len(claimed) == 500
    engine.dispose()
    return {
        "rows": rows,
        "finished_rows": rows // 2,
        "fill_seconds": round(filled, 1),
        "plan": plan,
        "claim_500_ms_median": round(statistics.median(times), 1),
        "claim_500_ms_all": [round(t, 1) for t in times],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql,mariadb")
    args = parser.parse_args()
    from tests.support.mariadb import MariaDbServer
    from tests.support.pg import PgCluster

    wanted = args.databases.split(",")
    maker = RowMaker()
    saved = RESULTS / "plans.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in wanted:
            path = Path(tmp) / "plans.db"
            url = f"sqlite:///{path}"
            results["sqlite"] = measure(url, args.rows, lambda n: sqlite_fill(path, n, maker))
        if "postgresql" in wanted:
            cluster = PgCluster()
            cluster.start()
            try:
                pg_url = cluster.create_database("plans")
                results["postgresql"] = measure(
                    pg_url, args.rows, lambda n: pg_fill(pg_url, n, maker)
                )
            finally:
                cluster.stop()
        if "mariadb" in wanted:
            server = MariaDbServer()
            server.start()
            try:
                my_url = server.create_database("plans")
                results["mariadb"] = measure(
                    my_url, args.rows, lambda n: mysql_fill(my_url, n, maker)
                )
            finally:
                server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plans.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
