"""A robot never takes back the rows it is itself sending: its reaper leaves the rows it has
in hand alone, and a renewal the database did not take is tried again, not skipped."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from robot import backoff
from robot.config import load_settings
from robot.daemon.robot import Robot
from robot.outbox import engine as engine_module
from robot.outbox.both_sides import Outbox
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.message_ids import AccountDomain, MessageIds
from tests.conftest import WriteIni
from tests.integration.host import host_sql, insert_many, now_plus_sql

mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))
WAIT = 10.0  # seconds for what takes a second or two


def expire(url: str, ids: list[int]) -> None:
    """The leases of rows `ids` ran out a second ago."""
    host_sql(
        url,
        f"UPDATE outbox SET claimed_until = {now_plus_sql(url, -1)} "
        f"WHERE id IN ({', '.join(map(str, ids))})",
    )


def test_the_reaper_leaves_the_rows_its_robot_has_in_hand(db_url: str, engine: Engine) -> None:
    queue = Outbox(engine, grace_seconds=0, lease_seconds=60)
    insert_many(db_url, 5)
    ours = [r.id for r in queue.claim("robot-a", 3, mid)]
    theirs = [r.id for r in queue.claim("robot-b", 2, mid)]
    expire(db_url, ours + theirs)
    in_hand = ours[:2]  # the third was claimed, but the claim's answer never arrived
    reaped, failed = queue.reap_expired(3, "robot-a", set(in_hand))
    assert (sorted(reaped), failed) == (sorted([ours[2], *theirs]), [])
    assert {r.id: r.status for r in (queue.get(i) for i in ours) if r} == {
        ours[0]: "sending",
        ours[1]: "sending",
        ours[2]: "pending",
    }
    # Another robot's reaper: only rows leased to the reaping robot itself are kept.
    assert sorted(queue.reap_expired(3, "robot-b", set(in_hand))[0]) == sorted(in_hand)


async def test_a_renewal_the_database_refused_is_tried_again(
    tmp_path: Path, write_ini: WriteIni, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_MS", 200)  # a locked write fails at once
    monkeypatch.setattr(backoff, "DATABASE_FIRST", 0.3)
    url = f"sqlite:///{tmp_path}/robot.db"
    settings = load_settings(write_ini(url, extra="[robot]\nlease_seconds = 30\n"), environ={})
    engine = make_engine(url)
    upgrade(engine)
    robot = Robot(settings, engine)
    try:
        insert_many(url, 3)
        ids = [r.id for r in robot.outbox.claim(robot.worker_id, 3, robot.setup.message_ids)]
        robot.dispatcher.leased.update(ids)
        expire(url, ids)
        locker = sqlite3.connect(tmp_path / "robot.db", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # a host's long transaction
        with capture_logs() as logs:
            renewal = asyncio.create_task(robot.jobs.renew())
            await asyncio.sleep(1.0)
            locker.execute("ROLLBACK")
            locker.close()
            await asyncio.wait_for(renewal, WAIT)
        renewed = host_sql(
            url,
            "SELECT count(*) FROM outbox WHERE claimed_until > "
            "strftime('%Y-%m-%d %H:%M:%f', 'now', '+20 seconds')",
        )
        assert renewed == [(3,)]
        failures = [e for e in logs if e["event"] == "database.unavailable"]
        assert failures and all(e["doing"] == "renew" and e["retry_in"] for e in failures)
    finally:
        robot.db.close()
        engine.dispose()
