"""An outcome the database refuses never holds up the others: both group commits record the
rest of the batch at once, the refused one in a safer form (its texts sanitised, then bare),
or log it as unrecordable and answer False. An outage is still retried as it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping, Sequence
from typing import Any

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from robot.logs import get_logger
from robot.outbox.both_sides import Outbox
from robot.outbox.engine import libpq_dsn
from robot.outbox.group_commit import AsyncGroupCommit, GroupCommit
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision, Finish, HistoryLine
from robot.outbox.schema import Status
from tests.integration.host import host_sql, insert_many

SENT = Decision(Status.SENT, None, None, "sent")
WAIT = 10.0  # seconds a test waits for what should take milliseconds
mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))


def claimed(url: str, queue: Outbox, n: int) -> list[int]:
    ids = insert_many(url, n)
    assert sorted(r.id for r in queue.claim("w1", n, mid)) == ids
    return ids


def replies(url: str) -> dict[int, tuple[str, str | None]]:
    return {
        int(i): (str(s), r)
        for i, s, r in host_sql(url, "SELECT id, status, smtp_reply FROM outbox")
    }


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.fixture
def queue(engine: Engine) -> Outbox:
    return Outbox(engine, grace_seconds=0, lease_seconds=60)


@pytest.fixture
async def thread_group(queue: Outbox) -> AsyncIterator[GroupCommit]:
    group = GroupCommit(lambda o: queue.finish_many("w1", o), get_logger("t"), name="rec-refused")
    yield group
    await asyncio.wait_for(group.close(), WAIT)


async def record_all(group: GroupCommit | AsyncGroupCommit, outcomes: Sequence[Finish]) -> Any:
    """Record `outcomes` at once (one batch) and wait for every answer."""
    return await asyncio.wait_for(asyncio.gather(*(group.record(o) for o in outcomes)), WAIT)


# -- PostgreSQL: a NUL in a reply ----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("kind", ["thread", "async"])
async def test_a_nul_in_one_reply_does_not_hold_up_the_batch_on_postgresql(
    kind: str, db_url: str, queue: Outbox
) -> None:
    ids = claimed(db_url, queue, 5)
    bad = ids[2]
    outcomes = [
        Finish(i, SENT, 250, "2.0.0 queued as \x00\x07ABC" if i == bad else f"2.0.0 ok {i}")
        for i in ids
    ]
    group: GroupCommit | AsyncGroupCommit
    if kind == "thread":
        group = GroupCommit(lambda o: queue.finish_many("w1", o), get_logger("t"), name="rec-nul")
    else:
        group = AsyncGroupCommit(queue, "w1", libpq_dsn(queue.engine.url), get_logger("t"))
    try:
        with capture_logs() as logs:
            assert await record_all(group, outcomes) == [True] * 5
    finally:
        await asyncio.wait_for(group.close(), WAIT)
    assert replies(db_url) == {
        i: ("sent", "2.0.0 queued as ABC" if i == bad else f"2.0.0 ok {i}") for i in ids
    }
    assert not events(logs, "database.unavailable")  # not taken for an outage
    refused = events(logs, "outcome.refused")
    assert [e["outcomes"] for e in refused] == [5]
    assert "NUL" in refused[0]["error"]
    assert [(e["id"], e["form"]) for e in events(logs, "outcome.simplified")] == [
        (bad, "sanitised")
    ]
    closing = host_sql(
        db_url, "SELECT detail FROM outbox_event WHERE outbox_id = ? AND kind = 'sent'", [bad]
    )
    assert closing == [("2.0.0 queued as ABC",)]


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_refused_suppression_is_sanitised_with_its_bounce(
    db_url: str, queue: Outbox
) -> None:
    """A bounce goes through finish_many in a transaction (history lines, a suppression):
    a NUL in it is refused there too, and the sanitised form keeps the suppression."""
    first, second = claimed(db_url, queue, 2)
    bounced = Decision(Status.BOUNCED, None, "550 5.1.1 no\x00 such user", "bounced")
    outcomes = [
        Finish(
            first,
            bounced,
            550,
            "5.1.1 no\x00 such user",
            suppress=(("gone@example.org", "bounced: 5.1.1 no\x00 such user"),),
            history=(HistoryLine("refused", "cc@example.org: 550 no\x00 such user", 550),),
        ),
        Finish(second, SENT, 250, "2.0.0 ok"),
    ]
    group = AsyncGroupCommit(queue, "w1", libpq_dsn(queue.engine.url), get_logger("t"))
    try:
        assert await record_all(group, outcomes) == [True, True]
    finally:
        await asyncio.wait_for(group.close(), WAIT)
    assert replies(db_url) == {
        first: ("bounced", "5.1.1 no such user"),
        second: ("sent", "2.0.0 ok"),
    }
    assert queue.suppressed() and queue.suppressed()[0][:2] == (
        "gone@example.org",
        "bounced: 5.1.1 no such user",
    )
    assert [(e.kind, e.detail) for e in queue.history(first)][1:] == [
        ("refused", "cc@example.org: 550 no such user"),
        ("bounced", "550 5.1.1 no such user"),
    ]


# -- SQLite: what it can refuse ------------------------------------------------------------
# SQLite stores any text, NULs included, so it refuses a statement only for a constraint
# (a host's trigger or CHECK) or when the driver cannot encode a string (a lone surrogate).


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_string_the_driver_cannot_encode_is_sanitised_on_sqlite(
    db_url: str, queue: Outbox, thread_group: GroupCommit
) -> None:
    ids = claimed(db_url, queue, 3)
    bad = ids[1]
    outcomes = [Finish(i, SENT, 250, "2.0.0 Gr\udcfc\udcdfe" if i == bad else "ok") for i in ids]
    with capture_logs() as logs:
        assert await record_all(thread_group, outcomes) == [True] * 3
    assert replies(db_url) == {
        i: ("sent", "2.0.0 Gr\ufffd\ufffde" if i == bad else "ok") for i in ids
    }
    assert [e["outcomes"] for e in events(logs, "outcome.refused")] == [3]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_host_constraint_gets_the_bare_form_or_unrecordable_on_sqlite(
    db_url: str, queue: Outbox, thread_group: GroupCommit
) -> None:
    ids = claimed(db_url, queue, 4)
    lines, never = ids[1], ids[2]
    # A host's triggers: no history line may mention "secret"; row `never` may not change.
    host_sql(
        db_url,
        "CREATE TRIGGER no_secrets BEFORE INSERT ON outbox_event "
        "WHEN NEW.detail LIKE '%secret%' BEGIN SELECT RAISE(ABORT, 'no secrets'); END",
    )
    host_sql(
        db_url,
        f"CREATE TRIGGER frozen BEFORE UPDATE ON outbox WHEN OLD.id = {never} "
        "BEGIN SELECT RAISE(ABORT, 'row is frozen'); END",
    )
    outcomes = [
        Finish(
            i,
            SENT,
            250,
            "ok",
            history=(HistoryLine("note", "a secret"),) if i == lines else (),
        )
        for i in ids
    ]
    with capture_logs() as logs:
        assert await record_all(thread_group, outcomes) == [i != never for i in ids]
    assert {i: s for i, (s, _) in replies(db_url).items()} == {
        i: "sending" if i == never else "sent" for i in ids
    }
    assert [e.kind for e in queue.history(lines)] == ["claimed", "sent"]  # bare: no note
    assert [(e["id"], e["form"]) for e in events(logs, "outcome.simplified")] == [(lines, "bare")]
    unrecordable = events(logs, "outcome.unrecordable")
    assert [(e["log_level"], e["id"], e["reason"]) for e in unrecordable] == [
        ("error", never, "(sqlite3.IntegrityError) row is frozen")
    ]
    assert not events(logs, "database.unavailable")
