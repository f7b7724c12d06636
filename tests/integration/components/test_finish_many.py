"""Claims.finish_many on real SQLite and PostgreSQL: a batch of outcomes in one call.

Per outcome: status, last_error, the reply (kept when the outcome has none), sent_at,
next_attempt_at, the lease cleared and one history line; False for a row that is no longer
leased to the worker. PostgreSQL takes two paths (one autocommitted statement, or a
transaction when an outcome suppresses an address): the tests run both.
"""

from __future__ import annotations

import queue as queue_module
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import SQLAlchemyError

from robot.outbox.both_sides import Outbox
from robot.outbox.dialects import FINISH_CHUNK
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision, Event, Finish
from robot.outbox.schema import Status, utcnow
from robot.outbox.shared import insert_suppression
from tests.integration.host import host_sql, insert_many, is_mysql

SENT = Decision(Status.SENT, None, None, "sent")
SLACK = timedelta(seconds=1)  # the clocks read around a call, against the one it used


mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))


def outbox(engine: Engine) -> Outbox:
    return Outbox(engine, grace_seconds=0, lease_seconds=60)


def db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        now: datetime = conn.execute(select(utcnow())).scalar_one()
    return now


def between(value: datetime | None, start: datetime, end: datetime) -> bool:
    return value is not None and start - SLACK <= value <= end + SLACK


def deferred(reason: str, retry: timedelta) -> Decision:
    return Decision(Status.DEFERRED, retry, reason, "deferred")


def later_kinds(queue: Outbox, row_id: int) -> list[Event]:
    """The row's history after its claims: what finishing wrote."""
    return [e for e in queue.history(row_id) if e.kind != "claimed"]


@pytest.mark.parametrize("suppressing", [False, True], ids=["plain", "suppressing"])
def test_a_mixed_batch_in_one_call(db_url: str, engine: Engine, suppressing: bool) -> None:
    queue = outbox(engine)
    (earlier,) = insert_many(db_url, 1)
    assert [r.id for r in queue.claim("w1", 1, mid)] == [earlier]
    # a first attempt that leaves a reply behind; due again at once
    assert queue.finish(
        earlier,
        "w1",
        deferred("451 4.4.1 busy (at RCPT)", timedelta(0)),
        smtp_code=451,
        smtp_reply="4.4.1 busy",
    )
    sent, later, bounced, theirs, moved = insert_many(db_url, 5)
    claimed = queue.claim("w1", 10, mid)
    assert sorted(r.id for r in claimed) == [earlier, sent, later, bounced, theirs, moved]
    host_sql(db_url, "UPDATE outbox SET claimed_by = 'w2' WHERE id = ?", [theirs])  # re-leased
    host_sql(db_url, "UPDATE outbox SET status = 'held' WHERE id = ?", [moved])  # not 'sending'
    untouched = {row_id: queue.get(row_id) for row_id in (theirs, moved)}
    outcomes = [
        Finish(sent, SENT, 250, "2.0.0 Ok: queued as 4F2A"),
        Finish(
            later,
            deferred("421 4.7.0 try again later (at DATA)", timedelta(minutes=10)),
            421,
            "4.7.0 try again later",
        ),
        Finish(
            bounced,
            Decision(Status.BOUNCED, None, "550 5.1.1 no such user (at RCPT)", "bounced"),
            550,
            "5.1.1 no such user",
            suppress=(("Gone@Example.org", "bounced: 5.1.1 no such user"),) if suppressing else (),
        ),
        Finish(
            earlier,
            Decision(Status.FAILED, None, "the message cannot be composed", "failed"),
            detail="compose: attachment missing",
        ),
        Finish(
            theirs,
            SENT,
            250,
            "2.0.0 Ok",
            suppress=(("theirs@example.org", "bounced: 2.0.0 Ok"),) if suppressing else (),
        ),
        Finish(moved, SENT, 250, "2.0.0 Ok"),
    ]

    start = db_now(engine)
    results = queue.finish_many("w1", outcomes)
    end = db_now(engine)

    assert results == [True, True, True, True, False, False]

    row = queue.get(sent)
    assert row is not None
    assert (row.status, row.smtp_code, row.smtp_reply, row.last_error, row.attempts) == (
        "sent",
        250,
        "2.0.0 Ok: queued as 4F2A",
        None,
        1,
    )
    assert between(row.sent_at, start, end)
    assert between(row.updated_at, start, end)
    assert (row.claimed_by, row.claimed_until, row.next_attempt_at) == (None, None, None)

    row = queue.get(later)
    assert row is not None
    assert (row.status, row.smtp_code, row.smtp_reply, row.last_error, row.attempts) == (
        "deferred",
        421,
        "4.7.0 try again later",
        "421 4.7.0 try again later (at DATA)",
        1,  # finishing counts no attempt: the claim did
    )
    assert between(row.next_attempt_at, start + timedelta(minutes=10), end + timedelta(minutes=10))
    assert (row.claimed_by, row.claimed_until, row.sent_at) == (None, None, None)

    row = queue.get(bounced)
    assert row is not None
    assert (row.status, row.smtp_code, row.smtp_reply, row.last_error) == (
        "bounced",
        550,
        "5.1.1 no such user",
        "550 5.1.1 no such user (at RCPT)",
    )
    assert (row.claimed_by, row.claimed_until, row.sent_at) == (None, None, None)

    row = queue.get(earlier)
    assert row is not None
    assert (row.status, row.last_error, row.attempts) == (
        "failed",
        "the message cannot be composed",
        2,
    )
    assert (row.smtp_code, row.smtp_reply) == (451, "4.4.1 busy")  # no reply: the old one stays
    assert (row.claimed_by, row.claimed_until) == (None, None)

    for row_id in (theirs, moved):
        assert queue.get(row_id) == untouched[row_id]
        assert later_kinds(queue, row_id) == []

    expected = {
        sent: [("sent", 250, "2.0.0 Ok: queued as 4F2A")],  # no error: the reply
        later: [("deferred", 421, "421 4.7.0 try again later (at DATA)")],  # the error
        bounced: [("bounced", 550, "550 5.1.1 no such user (at RCPT)")],
        earlier: [
            ("deferred", 451, "451 4.4.1 busy (at RCPT)"),
            ("failed", None, "compose: attachment missing"),  # the detail first
        ],
    }
    for row_id, lines in expected.items():
        events = later_kinds(queue, row_id)
        assert [(e.kind, e.smtp_code, e.detail) for e in events] == lines
        assert between(events[-1].at, start, end)

    if suppressing:
        assert [(a, r) for a, r, _ in queue.suppressed()] == [
            ("gone@example.org", "bounced: 5.1.1 no such user")
        ]
        assert host_sql(db_url, "SELECT outbox_id FROM suppression") == [(bounced,)]
    else:
        assert queue.suppressed() == []


@pytest.mark.parametrize("suppressing", [False, True], ids=["plain", "suppressing"])
def test_a_batch_larger_than_a_chunk(db_url: str, engine: Engine, suppressing: bool) -> None:
    total = 2 * FINISH_CHUNK + 50
    queue = outbox(engine)
    ids = insert_many(db_url, total)
    assert sorted(r.id for r in queue.claim("w1", total, mid)) == ids
    lost = ids[FINISH_CHUNK * 2 - 30]  # in the second chunk: its neighbours must still count
    host_sql(db_url, "UPDATE outbox SET claimed_by = 'w2' WHERE id = ?", [lost])
    outcomes = [
        Finish(row_id, SENT, 250, f"2.0.0 queued as {row_id}")
        if n % 2 == 0
        else Finish(row_id, deferred(f"451 wait {row_id}", timedelta(minutes=1)), 451, "4.2.0 wait")
        for n, row_id in enumerate(ids)
    ]
    last = ids[-1]  # the last chunk: suppression after every chunk went in
    outcomes[-1] = Finish(
        last,
        Decision(Status.BOUNCED, None, "550 5.1.1 gone (at RCPT)", "bounced"),
        550,
        "5.1.1 gone",
        suppress=((f"r{total}@example.org", "bounced"),) if suppressing else (),
    )

    results = queue.finish_many("w1", outcomes)

    assert results == [row_id != lost for row_id in ids]
    wanted_rows: list[tuple[object, ...]] = []
    wanted_events: list[tuple[object, ...]] = []
    for o in outcomes:
        if o.row_id == lost:
            wanted_rows.append((o.row_id, "sending", "w2", None, None))
            continue
        status = o.decision.status.value
        wanted_rows.append((o.row_id, status, None, o.smtp_code, o.smtp_reply))
        detail = o.decision.last_error or o.smtp_reply
        wanted_events.append((o.row_id, o.decision.event, o.smtp_code, detail))
    assert (
        host_sql(
            db_url, "SELECT id, status, claimed_by, smtp_code, smtp_reply FROM outbox ORDER BY id"
        )
        == wanted_rows
    )
    assert (
        host_sql(
            db_url,
            "SELECT outbox_id, kind, smtp_code, detail FROM outbox_event "
            "WHERE kind <> 'claimed' ORDER BY outbox_id",
        )
        == wanted_events
    )
    suppressed = host_sql(db_url, "SELECT address, outbox_id FROM suppression")
    assert suppressed == ([(f"r{total}@example.org", last)] if suppressing else [])


def test_an_empty_batch_records_nothing(db_url: str, engine: Engine) -> None:
    queue = outbox(engine)
    insert_many(db_url, 2)
    queue.claim("w1", 2, mid)
    assert queue.finish_many("w1", []) == []
    assert queue.counts() == {"sending": 2}
    assert host_sql(db_url, "SELECT count(*) FROM outbox_event WHERE kind <> 'claimed'") == [(0,)]


def refuse_events_of(db_url: str, row_id: int) -> None:
    """A trigger that makes the database refuse the history line of `row_id`."""
    if db_url.startswith("sqlite"):
        host_sql(
            db_url,
            "CREATE TRIGGER refuse_event BEFORE INSERT ON outbox_event "
            f"WHEN NEW.outbox_id = {row_id} AND NEW.kind <> 'claimed' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        return
    if is_mysql(db_url):  # SIGNAL: error 1644, which PyMySQL raises as OperationalError
        host_sql(
            db_url,
            "CREATE TRIGGER refuse_event BEFORE INSERT ON outbox_event FOR EACH ROW "
            f"BEGIN IF NEW.outbox_id = {row_id} AND NEW.kind <> 'claimed' THEN "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; END IF; END",
        )
        return
    host_sql(
        db_url,
        "CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
    )
    host_sql(
        db_url,
        "CREATE TRIGGER refuse_event BEFORE INSERT ON outbox_event FOR EACH ROW "
        f"WHEN (NEW.outbox_id = {row_id} AND NEW.kind <> 'claimed') "
        "EXECUTE FUNCTION refuse_event()",
    )


def allow_events(db_url: str) -> None:
    if db_url.startswith("sqlite") or is_mysql(db_url):
        host_sql(db_url, "DROP TRIGGER refuse_event")
    else:
        host_sql(db_url, "DROP TRIGGER refuse_event ON outbox_event")


def test_a_batch_the_database_refuses_part_way_records_nothing(db_url: str, engine: Engine) -> None:
    """The group commit retries a refused batch whole, so a batch must go in whole or not
    at all: else the retry reports the outcomes that did go in as "not ours" (False)."""
    total = FINISH_CHUNK + 50
    queue = outbox(engine)
    ids = insert_many(db_url, total)
    queue.claim("w1", total, mid)
    refuse_events_of(db_url, ids[FINISH_CHUNK + 20])  # in the second chunk
    outcomes = [Finish(row_id, SENT, 250, "2.0.0 Ok") for row_id in ids]

    with pytest.raises(SQLAlchemyError, match="refused by the test"):
        queue.finish_many("w1", outcomes)
    assert queue.counts() == {"sending": total}

    allow_events(db_url)
    assert queue.finish_many("w1", outcomes) == [True] * total
    assert queue.counts() == {"sent": total}


def test_a_claim_and_a_group_commit_at_the_same_time_take_turns_on_sqlite(tmp_path: Path) -> None:
    """The robot's claim thread and its group commit thread write the same SQLite file all
    the time: they take turns in Python (Statements.one_writer), not in SQLite's busy
    handler. With that handler off (busy_timeout 0) neither ever finds the file locked."""
    url = f"sqlite:///{tmp_path}/robot.db"
    engine = make_engine(url)
    upgrade(engine)

    @event.listens_for(engine, "connect")
    def _no_busy_handler(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    engine.dispose()  # the connections opened so far had the handler
    queue = outbox(engine)
    ids = insert_many(url, 600)
    claimed: queue_module.SimpleQueue[list[int] | None] = queue_module.SimpleQueue()
    errors: list[BaseException] = []

    def claim_all() -> None:
        try:
            while rows := queue.claim("w1", 10, mid):
                claimed.put([r.id for r in rows])
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            claimed.put(None)

    def finish_all() -> None:
        try:
            while (batch := claimed.get()) is not None:
                for row_id in batch:  # one commit per outcome: as often as it can
                    assert queue.finish_many("w1", [Finish(row_id, SENT, 250, "ok")]) == [True]
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=claim_all), threading.Thread(target=finish_all)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    engine.dispose()
    assert errors == []
    statuses = dict(host_sql(url, "SELECT id, status FROM outbox"))
    assert sorted(statuses) == ids and set(statuses.values()) == {"sent"}


@pytest.mark.postgres
def test_two_robots_suppressing_one_address_at_once_both_succeed(pg_url: str) -> None:
    """Two robots record a bounce of the same address at the same moment: the second one's
    insert waits for the first's, then finds the address there (False), not a refusal that
    would record its outcome without its history (PostgreSQL; SQLite takes one writer at a
    time, MariaDB looks first, as before)."""
    engine = make_engine(pg_url)
    added: dict[str, bool] = {}
    errors: list[BaseException] = []

    def second_robot() -> None:
        try:
            with engine.begin() as conn:
                added["second"] = insert_suppression(conn, "gone@example.org", "bounced", None)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    with engine.connect() as first:
        with first.begin():
            added["first"] = insert_suppression(first, "Gone@Example.org", "bounced", None)
            thread = threading.Thread(target=second_robot)
            thread.start()
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            deadline = time.monotonic() + 10
            while host_sql(pg_url, waiting) != [(1,)] and time.monotonic() < deadline:
                time.sleep(0.02)  # until the second insert waits for the first's row
        thread.join(10)
    engine.dispose()
    assert errors == []
    assert added == {"first": True, "second": False}
    assert host_sql(pg_url, "SELECT address FROM suppression") == [("gone@example.org",)]
