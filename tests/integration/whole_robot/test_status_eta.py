"""`status` estimates the backlog at the rate a robot really sent at, not at the rows sent in
the last five minutes spread over the whole five minutes."""

from __future__ import annotations

import time

from sqlalchemy import Engine

from robot.cli.output import estimate
from robot.outbox.operations import Operations
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.support.smtpd import TestSMTPServer

DRAINED, WAITING = 600, 3000


def insert_rows(url: str, count: int, batch: str) -> None:
    values = ", ".join(f"('r{n}@example.org', 'x', '{batch}')" for n in range(count))
    host_sql(url, f"INSERT INTO outbox (recipient, body_text, batch) VALUES {values}")


async def test_status_eta_follows_the_rate_of_a_real_drain(
    db_url: str, engine: Engine, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    insert_rows(db_url, DRAINED, "drained")
    ini = write_ini(db_url, smtp_server.port, "[robot]\ngrace_minutes = 0\n")
    started = time.monotonic()
    code, _ = await drain(ini, timeout=120)
    took = time.monotonic() - started
    assert code == 0 and len(smtp_server.received) == DRAINED
    insert_rows(db_url, WAITING, "waiting")

    status = Operations(engine, grace_seconds=0).status()
    eta = estimate(status, configured_rate=0)

    assert status.due == WAITING and status.sent_recently == DRAINED
    assert eta.rate is not None and eta.due_done_at is not None
    estimated = (eta.due_done_at - status.now).total_seconds()
    expected = WAITING / (DRAINED / took)  # at the rate the drain went
    print(f"drain {took:.2f}s, ETA {estimated:.2f}s, expected {expected:.2f}s")
    # The estimate counts from the first row sent to now, the measure from the robot's
    # start to its stop (and it cannot go under a second): the same, give or take a few.
    assert expected / 4 <= estimated <= max(expected, WAITING / DRAINED) * 4
