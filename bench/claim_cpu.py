"""CPU and wall time of the robot's claim alone: one thread, no contention, a due backlog.

    .venv/bin/python -m bench.claim_cpu --database postgresql --rows 60000 --claims 150

Fills `--rows` plain due rows (bench.waits.fill), then times `--claims` claims of `--size`
rows each (Claims.claim: pick, lease, history lines, read) and prints the medians as JSON.
Measures the robot of the tree it is run from (`python -m` puts the working directory
first on the path): run it from another checkout to measure another revision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from bench.waits import fill
from robot.outbox.claims import Claims
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.message_ids import MessageIds
from tests.support.pg import PgCluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--claims", type=int, default=150)
    parser.add_argument("--size", type=int, default=260, help="rows a claim (260: a drain's)")
    options = parser.parse_args()
    pg = PgCluster() if options.database == "postgresql" else None
    try:
        if pg is None:
            url = f"sqlite:///{tempfile.mkdtemp(prefix='claim-cpu-')}/robot.db"
        else:
            pg.start()
            url = pg.create_database("claim_cpu")
        engine = make_engine(url)
        upgrade(engine)
        fill(url, options.rows)
        claims = Claims(engine, grace_seconds=0, lease_seconds=60)
        cpu: list[float] = []
        wall: list[float] = []
        for _ in range(options.claims):
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            rows = claims.claim("bench", options.size, MessageIds())
            cpu.append(time.process_time() - cpu_before)
            wall.append(time.perf_counter() - wall_before)
            if len(rows) != options.size:
                raise SystemExit(f"a claim leased {len(rows)} rows, not {options.size}")
        engine.dispose()
    finally:
        if pg is not None:
            pg.stop()
    result = {
        "database": options.database,
        "rows": options.rows,
        "claims": options.claims,
        "size": options.size,
        "claim_cpu_ms": round(statistics.median(cpu) * 1000, 2),
        "claim_wall_ms": round(statistics.median(wall) * 1000, 2),
        # Medians of each quarter of the claims: does a claim cost more as the queue's head
        # fills with the rows claimed before (PostgreSQL's dead index entries)?
        "claim_wall_ms_by_quarter": [
            round(statistics.median(wall[q * len(wall) // 4 : (q + 1) * len(wall) // 4]) * 1000, 2)
            for q in range(4)
        ],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
