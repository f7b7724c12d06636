"""Claiming on real SQLite and PostgreSQL: the due rule, order, leases, no double claims."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from robot.outbox import claims as claims_module
from robot.outbox.both_sides import Outbox
from robot.outbox.claims import LEASE_CHUNK
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision
from robot.outbox.schema import Status
from robot.outcome.replies import Outcome
from robot.outcome.retry import RetryPolicy
from tests.integration.host import host_sql, insert_many, now_plus_sql, series_sql

mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))


def insert(url: str, recipient: str = "a@example.org", **columns: str) -> int:
    names = ["recipient", "body_text", *columns]
    values = ["'" + recipient + "'", "'body'", *columns.values()]
    host_sql(url, f"INSERT INTO outbox ({', '.join(names)}) VALUES ({', '.join(values)})")
    return int(host_sql(url, "SELECT max(id) FROM outbox")[0][0])


def outbox(engine: Engine, grace: float = 0, lease: float = 60) -> Outbox:
    return Outbox(engine, grace_seconds=grace, lease_seconds=lease)


def test_grace_delay_send_after_and_priority(db_url: str, engine: Engine) -> None:
    past = now_plus_sql(db_url, -120)
    fresh = insert(db_url, "fresh@example.org")  # created now: inside the 60 s grace delay
    old_low = insert(db_url, "old-low@example.org", created_at=past)
    old_high = insert(db_url, "old-high@example.org", created_at=past, priority="5")
    scheduled = insert(
        db_url, "later@example.org", created_at=past, send_after=now_plus_sql(db_url, 3600)
    )
    held = insert(db_url, "held@example.org", created_at=past, status="'held'")
    rows = outbox(engine, grace=60).claim("w1", 10, mid)
    assert [r.id for r in rows] == [old_high, old_low]
    assert {fresh, scheduled, held}.isdisjoint(r.id for r in rows)
    assert all(r.status == "sending" and r.claimed_by == "w1" and r.attempts == 1 for r in rows)
    assert re.fullmatch(rf"<{old_high}\.[0-9a-f]{{16}}@example\.org>", rows[0].message_id or "")
    # the Message-ID is stored, as the header will carry it
    assert host_sql(db_url, f"SELECT message_id FROM outbox WHERE id = {old_high}") == [
        (rows[0].message_id,)
    ]


def test_send_after_in_the_past_but_grace_not_over_waits_for_grace(
    db_url: str, engine: Engine
) -> None:
    insert(db_url, send_after=now_plus_sql(db_url, -600))
    assert outbox(engine, grace=60).claim("w1", 10, mid) == []
    assert len(outbox(engine, grace=0).claim("w1", 10, mid)) == 1


def test_claim_limit_and_oldest_first(db_url: str, engine: Engine) -> None:
    ids = [
        insert(db_url, f"r{n}@example.org", created_at=now_plus_sql(db_url, -100 + n))
        for n in range(5)
    ]
    first = outbox(engine).claim("w1", 3, mid)
    second = outbox(engine).claim("w2", 3, mid)
    assert [r.id for r in first] == ids[:3]
    assert [r.id for r in second] == ids[3:]
    assert outbox(engine).claim("w3", 3, mid) == []


def test_a_claim_of_more_rows_than_one_statement_leases_each_row_once(
    db_url: str, engine: Engine
) -> None:
    """More rows than LEASE_CHUNK: two statements on SQLite and MariaDB/MySQL, one of
    arrays on PostgreSQL. Each row is leased once with one 'claimed' line; a row keeps the
    Message-ID it has, the others are given theirs."""
    ids = insert_many(db_url, LEASE_CHUNK + 100)
    own = ids[LEASE_CHUNK + 7]
    host_sql(db_url, f"UPDATE outbox SET message_id = '<own@host.example>' WHERE id = {own}")
    rows = outbox(engine).claim("w1", len(ids) + 10, mid)
    assert sorted(r.id for r in rows) == ids
    given = {r.id: r.message_id for r in rows}
    assert given[own] == "<own@host.example>"
    for row_id in ids:
        if row_id != own:
            assert re.fullmatch(rf"<{row_id}\.[0-9a-f]{{16}}@example\.org>", given[row_id] or "")
    assert dict(host_sql(db_url, "SELECT id, message_id FROM outbox")) == given
    assert host_sql(db_url, "SELECT DISTINCT status, claimed_by, attempts FROM outbox") == [
        ("sending", "w1", 1)
    ]
    claimed = "SELECT count(*), count(DISTINCT outbox_id), min(detail), max(detail) "
    claimed += "FROM outbox_event WHERE kind = 'claimed'"
    assert host_sql(db_url, claimed) == [(len(ids), len(ids), "w1", "w1")]


def test_claims_one_after_another_lease_each_row_once_in_order(db_url: str, engine: Engine) -> None:
    """One robot's claims, one after another: on PostgreSQL each resumes where the last
    one ended (claims.ResumePoint); the rows come once each, in the queue's order."""
    ids = insert_many(db_url, 30)  # one INSERT: one created_at, so the id decides
    queue = outbox(engine)
    claimed = [[r.id for r in queue.claim("w1", 7, mid)] for _ in range(5)]
    assert claimed == [ids[0:7], ids[7:14], ids[14:21], ids[21:28], ids[28:30]]
    assert queue.claim("w1", 7, mid) == []


def first_five_claimed(db_url: str, engine: Engine, rows: int) -> tuple[list[int], Outbox]:
    """`rows` rows in one INSERT (one created_at: the id decides), and one robot's queue
    whose first claim took the first five."""
    ids = insert_many(db_url, rows)
    queue = outbox(engine)
    assert [r.id for r in queue.claim("w1", 5, mid)] == ids[:5]
    return ids, queue


def test_a_due_row_of_a_higher_priority_comes_first_in_the_next_claim(
    db_url: str, engine: Engine
) -> None:
    ids, queue = first_five_claimed(db_url, engine, 20)
    urgent = insert(db_url, "urgent@example.org", priority="5")
    assert [r.id for r in queue.claim("w1", 5, mid)] == [urgent, *ids[5:9]]
    assert [r.id for r in queue.claim("w1", 5, mid)] == ids[9:14]


def test_a_row_given_back_behind_the_claims_is_claimed_once_the_rows_ahead_run_short(
    db_url: str, engine: Engine
) -> None:
    ids, queue = first_five_claimed(db_url, engine, 10)
    assert queue.release([ids[1]], "w1", "stopping") == 1
    # Five rows are left after the first claim's last one: a claim of ten takes them and,
    # from the head of the queue, the row given back, which comes first (older).
    assert [r.id for r in queue.claim("w1", 10, mid)] == [ids[1], *ids[5:]]


def test_a_row_due_behind_where_claims_resume_waits_at_most_a_second(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The price of resuming (PostgreSQL only): a row of the same priority that becomes
    due behind the point waits for the next claim from the head, FROM_HEAD_EVERY (one
    second) at most; elsewhere every claim starts from the head."""
    ids, queue = first_five_claimed(db_url, engine, 20)
    assert queue.release([ids[1]], "w1", "stopping") == 1
    resumed = [r.id for r in queue.claim("w1", 5, mid)]
    if engine.dialect.name == "postgresql":
        assert resumed == ids[5:10]
        monkeypatch.setattr(claims_module, "FROM_HEAD_EVERY", 0.0)  # the second has passed
        assert [r.id for r in queue.claim("w1", 5, mid)] == [ids[1], *ids[10:14]]
    else:
        assert resumed == [ids[1], *ids[5:9]]


def test_message_id_is_kept_across_retries(db_url: str, engine: Engine) -> None:
    insert(db_url)
    queue = outbox(engine)
    (row,) = queue.claim("w1", 1, mid)
    decision = RetryPolicy(retry_minutes=0, max_errors=3).decide(Outcome.DEFERRED, 1, "451 later")
    assert queue.finish(row.id, "w1", decision, smtp_code=451, smtp_reply="later")
    (again,) = queue.claim(
        "w1", 1, MessageIds(fallback=AccountDomain("x@different.example.org", "x"))
    )
    assert again.id == row.id
    assert again.message_id == row.message_id
    assert again.attempts == 2
    assert again.status == "sending"


def test_deferred_row_waits_for_next_attempt_at(db_url: str, engine: Engine) -> None:
    insert(db_url)
    queue = outbox(engine)
    (row,) = queue.claim("w1", 1, mid)
    queue.finish(row.id, "w1", Decision(Status.DEFERRED, timedelta(minutes=10), "451", "deferred"))
    assert queue.claim("w1", 1, mid) == []
    (status,) = host_sql(db_url, f"SELECT status FROM outbox WHERE id = {row.id}")[0]
    assert status == "deferred"


def test_finish_only_by_the_lease_holder(db_url: str, engine: Engine) -> None:
    insert(db_url)
    queue = outbox(engine)
    (row,) = queue.claim("w1", 1, mid)
    sent = Decision(Status.SENT, None, None, "sent")
    assert not queue.finish(row.id, "intruder", sent)
    assert queue.finish(row.id, "w1", sent, smtp_code=250, smtp_reply="2.0.0 OK")
    assert not queue.finish(row.id, "w1", sent)  # already finished
    assert host_sql(
        db_url, f"SELECT status, smtp_code, attempts FROM outbox WHERE id={row.id}"
    ) == [("sent", 250, 1)]
    kinds = [e.kind for e in queue.history(row.id)]
    assert kinds == ["claimed", "sent"]


def test_release_gives_back_the_attempt(db_url: str, engine: Engine) -> None:
    insert(db_url)
    queue = outbox(engine)
    (row,) = queue.claim("w1", 1, mid)
    assert queue.release([row.id], "w1", "stopping") == 1
    assert host_sql(
        db_url, f"SELECT status, attempts, claimed_by FROM outbox WHERE id={row.id}"
    ) == [("pending", 0, None)]


def test_expired_lease_is_taken_back_and_renew_keeps_it(db_url: str, engine: Engine) -> None:
    insert(db_url)
    insert(db_url, "b@example.org")
    queue = outbox(engine, lease=60)
    rows = queue.claim("dead-robot", 2, mid)
    assert len(rows) == 2
    assert queue.reap_expired() == ([], [])  # leases still valid
    host_sql(
        db_url,
        f"UPDATE outbox SET claimed_until = {now_plus_sql(db_url, -1)} WHERE id = {rows[0].id}",
    )
    assert queue.renew("dead-robot", [r.id for r in rows]) == 2  # renewing pushes both...
    host_sql(
        db_url,
        f"UPDATE outbox SET claimed_until = {now_plus_sql(db_url, -1)} WHERE id = {rows[0].id}",
    )
    assert queue.reap_expired() == ([rows[0].id], [])  # ...only the expired one comes back
    assert queue.renew("dead-robot", []) == 0
    (again,) = queue.claim("new-robot", 5, mid)
    assert again.id == rows[0].id
    assert again.message_id == rows[0].message_id
    assert "lease-expired" in [e.kind for e in queue.history(again.id)]


def test_concurrent_claimers_never_share_a_row(db_url: str, engine: Engine) -> None:
    total = 300
    host_sql(
        db_url,
        f"INSERT INTO outbox (recipient, body_text) SELECT 'x@example.org', 'b' FROM {series_sql(db_url, 300)}",
    )
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        queue = outbox(engine)
        got: list[int] = []
        try:
            while rows := queue.claim(name, 7, mid):
                got.extend(r.id for r in rows)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        claimed[name] = got

    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    every = [row_id for got in claimed.values() for row_id in got]
    assert len(every) == total
    assert len(set(every)) == total
    assert sum(1 for got in claimed.values() if got) >= 2  # they really ran side by side


def test_a_row_whose_lease_keeps_expiring_fails_after_max_errors(
    db_url: str, engine: Engine
) -> None:
    row_id = insert(db_url)
    queue = outbox(engine, lease=60)
    for attempt in range(1, 4):
        (row,) = queue.claim(f"robot-{attempt}", 5, mid)
        assert row.attempts == attempt
        host_sql(db_url, f"UPDATE outbox SET claimed_until = {now_plus_sql(db_url, -1)}")
        reaped, failed = queue.reap_expired(max_errors=3)
        assert (reaped, failed) == (([row_id], []) if attempt < 3 else ([], [row_id]))
    status, error = host_sql(db_url, f"SELECT status, last_error FROM outbox WHERE id = {row_id}")[
        0
    ]
    assert status == "failed"
    assert "stopped answering" in error
