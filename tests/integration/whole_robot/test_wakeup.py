"""The robot does not wait for its next poll: PostgreSQL wakes it on INSERT (LISTEN/NOTIFY),
and a row it deferred wakes it when the retry is due."""

from __future__ import annotations

import asyncio

from robot.config import load_settings
from robot.daemon.robot import Robot
from robot.outbox.engine import make_engine
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.support.smtpd import TestSMTPServer

SLOW_POLL = "[robot]\npoll_seconds = 120\nretry_minutes = 0.01\n"  # a poll never comes


async def run_until(robot: Robot, condition: asyncio.Future[None]) -> None:
    running = asyncio.create_task(robot.run())
    try:
        await asyncio.wait_for(condition, 20)
    finally:
        robot.stop()
        assert await asyncio.wait_for(running, 20) == 0


async def test_new_rows_wake_the_robot_on_postgresql(
    pg_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    engine = make_engine(pg_url)
    robot = Robot(load_settings(write_ini(pg_url, smtp_server.port, SLOW_POLL), environ={}), engine)

    async def insert_then_wait() -> None:
        await asyncio.sleep(1)  # the robot is up, has found nothing and waits
        for n in range(3):
            await asyncio.to_thread(
                host_sql,
                pg_url,
                "INSERT INTO outbox (recipient, body_text) VALUES (?, 'x')",
                [f"n{n}@example.org"],
            )
            await smtp_server.wait_for(n + 1, timeout=15)

    await run_until(robot, asyncio.ensure_future(insert_then_wait()))
    engine.dispose()
    assert len(smtp_server.received) == 3


async def test_a_deferred_row_is_retried_when_due_not_at_the_next_poll(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    smtp_server.fault("RCPT", "451 4.7.1 Try later", times=1)
    host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('g@example.org', 'x')")
    engine = make_engine(db_url)
    robot = Robot(load_settings(write_ini(db_url, smtp_server.port, SLOW_POLL), environ={}), engine)
    await run_until(robot, asyncio.ensure_future(smtp_server.wait_for(1, timeout=15)))
    engine.dispose()
    assert host_sql(db_url, "SELECT status, attempts FROM outbox") == [("sent", 2)]
