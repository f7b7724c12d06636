"""What only MariaDB/MySQL need: UTC whatever a host session's time zone, utf8mb4 text, the
queue index over the generated column that stands in for PostgreSQL's partial index, and
telling an outage from a refusal by the server's error number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pymysql
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from robot.outbox.both_sides import Outbox
from robot.outbox.claims import CLAIM_ORDER
from robot.outbox.engine import is_outage, make_engine
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision
from robot.outbox.schema import Status, outbox, utcnow
from robot.outbox.shared import WAITING
from tests.integration.host import host_sql, series_sql
from tests.support.mariadb import MariaDbServer

pytestmark = pytest.mark.mariadb
mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))
EMOJI_SUBJECT = "📬 Post für Zoë: ✅ 🎉"  # four-byte characters: utf8mb3 would refuse them


def open_outbox(url: str, grace: float = 0) -> tuple[Engine, Outbox]:
    engine = make_engine(url)
    return engine, Outbox(engine, grace_seconds=grace, lease_seconds=60)


def host_in_zone(url: str, zone: str, sql: str) -> None:
    """One statement of a host whose session is in time zone `zone`."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SET time_zone = '{zone}'")
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def test_a_host_in_another_time_zone_writes_utc_created_at(mariadb_url: str) -> None:
    """The default is UTC_TIMESTAMP(6), not NOW(): a host session at +05:00 (or -08:00) still
    writes UTC, so its row is due after the grace delay, not five hours off."""
    host_in_zone(
        mariadb_url,
        "+05:00",
        "INSERT INTO outbox (recipient, subject, body_text) VALUES ('east@example.org', 's', 'b')",
    )
    host_in_zone(
        mariadb_url,
        "-08:00",
        "INSERT INTO outbox (recipient, subject, body_text) VALUES ('west@example.org', 's', 'b')",
    )
    engine, box = open_outbox(mariadb_url)
    try:
        rows = box.claim("robot", 10, mid)
        assert sorted(r.recipient for r in rows) == ["east@example.org", "west@example.org"]
        utc_now = datetime.now(UTC)
        for row in rows:
            assert row.created_at is not None
            assert abs(row.created_at - utc_now) < timedelta(minutes=1), row.created_at
        status = box.status()
        assert abs(status.now - utc_now) < timedelta(minutes=1)  # the robot's session: UTC
    finally:
        engine.dispose()


def test_an_emoji_subject_survives_the_round_trip(mariadb_url: str) -> None:
    host_sql(
        mariadb_url,
        "INSERT INTO outbox (recipient, subject, body_text) VALUES (?, ?, ?)",
        ["zoe@example.org", EMOJI_SUBJECT, "🙂 " * 3],
    )
    engine, box = open_outbox(mariadb_url)
    try:
        (row,) = box.claim("robot", 1, mid)
        assert row.subject == EMOJI_SUBJECT
        assert row.body_text == "🙂 " * 3
        assert box.finish(row.id, "robot", Decision(Status.SENT, None, None, "sent"))
    finally:
        engine.dispose()
    assert host_sql(mariadb_url, "SELECT subject, status FROM outbox") == [(EMOJI_SUBJECT, "sent")]


def test_the_claim_reads_the_queue_index_in_order(mariadb_url: str) -> None:
    """MySQL has no partial index: ix_outbox_queue is (queue_waiting, priority DESC,
    created_at, id), and the claim, which asks for queue_waiting = 1, reads it in claim order
    and stops at its limit: no sort, whatever the number of finished rows."""
    host_sql(
        mariadb_url,
        "INSERT INTO outbox (recipient, body_text, status) "
        f"SELECT 'r' || i || '@example.org', 'x', "
        f"CASE WHEN i % 10 = 0 THEN 'pending' ELSE 'sent' END FROM {series_sql(mariadb_url, 5000)}",
    )
    host_sql(mariadb_url, "ANALYZE TABLE outbox")
    engine, box = open_outbox(mariadb_url)
    try:
        due = select(outbox.c.id).where(WAITING, box.due_at() <= utcnow())
        pick = box.statements.lock_for_claim(due.order_by(*CLAIM_ORDER).limit(100))
        sql = str(pick.compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            plan = conn.execute(text("ANALYZE FORMAT=JSON " + sql)).scalar_one()
        assert '"key": "ix_outbox_queue"' in plan, plan
        assert "filesort" not in plan, plan
        assert '"r_rows": 100' in plan, plan  # read the 100 it returns, no more
        claimed = box.claim("robot", 100, mid)
        assert len(claimed) == 100 and all(r.id % 10 == 0 for r in claimed)
        assert [r.id for r in claimed] == sorted(r.id for r in claimed)  # created_at, id
    finally:
        engine.dispose()


def test_server_errors_are_outages_or_refusals_by_their_number(
    mariadb_url: str, mariadb_server: MariaDbServer
) -> None:
    """PyMySQL reports a failed CHECK as OperationalError, as it does a lost connection: the
    error number decides. A refused statement must not be retried for ever as an outage."""
    engine = make_engine(mariadb_url)
    try:
        with engine.begin() as conn:
            try:
                conn.exec_driver_sql(
                    "INSERT INTO outbox (recipient, body_text, status) VALUES ('a@b', 'x', 'odd')"
                )
            except DBAPIError as exc:
                refused = exc
            else:
                raise AssertionError("a status outside the check was accepted")
        assert isinstance(refused.orig, pymysql.err.OperationalError)
        assert not is_outage(refused)
        with engine.connect() as conn:
            own = conn.exec_driver_sql("SELECT connection_id()").scalar_one()
            mariadb_server.execute(f"KILL {int(own)}")
            try:
                conn.exec_driver_sql("SELECT 1")
            except DBAPIError as exc:
                lost = exc
            else:
                raise AssertionError("a killed connection answered")
        assert is_outage(lost)
        assert is_outage(pymysql.err.OperationalError(1213, "Deadlock found"))
        assert not is_outage(pymysql.err.OperationalError(4025, "CONSTRAINT failed"))
    finally:
        engine.dispose()


def test_a_claim_beside_another_robots_open_claim_takes_the_next_rows(mariadb_url: str) -> None:
    """The claim reads its candidates without a lock, so while another robot's claim holds
    the first rows (its transaction still open) they come back as candidates and are
    skipped: the claim then reads the next ones instead of coming back empty."""
    host_sql(
        mariadb_url,
        "INSERT INTO outbox (recipient, body_text) "
        f"SELECT 'r' || i || '@example.org', 'x' FROM {series_sql(mariadb_url, 30)}",
    )
    engine, box = open_outbox(mariadb_url)
    try:
        with engine.begin() as other:  # another robot, mid-claim: the first 10 rows locked
            held = other.exec_driver_sql(
                "SELECT id FROM outbox ORDER BY id LIMIT 10 FOR UPDATE"
            ).scalars()
            held_ids = list(held)
            claimed = box.claim("robot", 10, mid)
            assert [r.id for r in claimed] == list(range(11, 21))
        assert set(held_ids).isdisjoint(r.id for r in claimed)
    finally:
        engine.dispose()
