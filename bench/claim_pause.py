"""What the claim's exclusion of operator-paused accounts costs: the claim's pick of due rows
with and without `account NOT IN (accounts an operator paused)`, alternated on one outbox
(half of it waiting, half finished, three rows in account_state), SQLite and PostgreSQL.

    .venv/bin/python -m bench.claim_pause [--rows 100000] [--rounds 200]

Writes bench/results/claim_pause.json.
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

from sqlalchemy import Engine, func, select

from bench.outbox import RowMaker, pg_fill, sqlite_fill
from bench.plans import claim_query
from robot.outbox.account_states import AccountStates, operator_paused_now
from robot.outbox.claims import Claims
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.schema import account_state, outbox

RESULTS = Path(__file__).parent / "results"
PICK = 250  # rows per claim, a usual batch_size


def picks(box: Claims) -> dict[str, Any]:
    """The pick as it was, and as the claim makes it now."""
    before = claim_query(box, PICK)
    account = func.coalesce(outbox.c.account, "default")
    after = before.where(
        account.not_in(select(account_state.c.account).where(operator_paused_now()))
    )
    return {"without": before, "with": after}


def time_pick(engine: Engine, query: Any) -> float:
    """One pick in a transaction that is rolled back (its locks, on PostgreSQL, go too)."""
    with engine.connect() as conn:
        started = time.perf_counter()
        with conn.begin() as transaction:
            found = conn.execute(query).all()
            transaction.rollback()
        took = (time.perf_counter() - started) * 1000
    assert len(found) == PICK
    return took


def measure(url: str, rows: int, rounds: int, fill: Callable[[int], float]) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade(engine)
    fill(rows)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE outbox SET status = 'sent' WHERE id <= {rows // 2}")
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE outbox")
    states = AccountStates(engine)
    states.pause("news", "bench", "paused for the benchmark")
    states.fault("alerts", "bench", "535 5.7.8 login refused", 600)
    states.pause("old", "bench", None)
    states.resume("old")
    states.pause("staff", "bench", None)
    box = Claims(engine, grace_seconds=0, lease_seconds=300)
    queries = picks(box)
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN (COSTS OFF) "
    compiled = str(queries["with"].compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.begin() as conn:
        plan = [" ".join(str(c) for c in r) for r in conn.exec_driver_sql(explain + compiled)]
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(5):  # warm the caches
        for query in queries.values():
            time_pick(engine, query)
    for n in range(rounds):
        order = ("without", "with") if n % 2 == 0 else ("with", "without")
        for name in order:
            times[name].append(time_pick(engine, queries[name]))
    engine.dispose()
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "rows": rows,
        "waiting_rows": rows - rows // 2,
        "pick": PICK,
        "rounds": rounds,
        "pick_ms_median": {name: round(value, 3) for name, value in medians.items()},
        "ratio": round(medians["with"] / medians["without"], 3),
        "plan_with_exclusion": plan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    from tests.support.pg import PgCluster

    maker = RowMaker()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pause.db"
        results["sqlite"] = measure(
            f"sqlite:///{path}", args.rows, args.rounds, lambda n: sqlite_fill(path, n, maker)
        )
        cluster = PgCluster()
        cluster.start()
        try:
            pg_url = cluster.create_database("claim_pause")
            results["postgresql"] = measure(
                pg_url, args.rows, args.rounds, lambda n: pg_fill(pg_url, n, maker)
            )
        finally:
            cluster.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "claim_pause.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
