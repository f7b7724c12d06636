"""GroupCommit against a real Outbox: many outcomes per transaction, database outages retried,
giving up only while stopping, and a clean end of its thread.

The commit callable is GroupCommit's own argument: the tests wrap Claims.finish_many to count
transactions or to fail the way a lost database does.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from robot import backoff
from robot.logs import get_logger
from robot.outbox.both_sides import Outbox
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.group_commit import GroupCommit
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision, Finish
from robot.outbox.schema import Status
from tests.integration.host import host_sql, insert_many

SENT = Decision(Status.SENT, None, None, "sent")
WAIT = 10.0  # seconds a test waits for what should take milliseconds

Commit = Callable[[Sequence[Finish]], list[bool]]


mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))


def claimed(db_url: str, queue: Outbox, n: int) -> list[int]:
    """n new rows, leased to worker w1."""
    ids = insert_many(db_url, n)
    assert sorted(r.id for r in queue.claim("w1", n, mid)) == ids
    return ids


def sent(row_id: int) -> Finish:
    return Finish(row_id, SENT, 250, "2.0.0 Ok")


def lost_database() -> OperationalError:
    return OperationalError(
        "UPDATE outbox SET status = ...",
        None,
        ConnectionError("server closed the connection unexpectedly\nThis probably means"),
    )


class LostThenBack:
    """A commit that fails `failures` times the way a lost database does, then works;
    `failures` counts down to 0."""

    def __init__(self, queue: Outbox, failures: int) -> None:
        self.queue = queue
        self.failures = failures

    def __call__(self, outcomes: Sequence[Finish]) -> list[bool]:
        if self.failures:
            self.failures -= 1
            raise lost_database()
        return self.queue.finish_many("w1", outcomes)


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


@asynccontextmanager
async def group_commit(commit: Commit, log: Any, name: str) -> AsyncIterator[GroupCommit]:
    """A GroupCommit closed at the end, so that no test leaves its thread behind."""
    group = GroupCommit(commit, log, name=name)
    try:
        yield group
    finally:
        await asyncio.wait_for(group.close(), WAIT)


@pytest.fixture
def queue(engine: Engine) -> Outbox:
    return Outbox(engine, grace_seconds=0, lease_seconds=60)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff, "DATABASE_FIRST", 0.01)
    monkeypatch.setattr(backoff, "DATABASE_LONGEST", 0.02)


async def test_concurrent_outcomes_share_transactions(db_url: str, queue: Outbox) -> None:
    ids = claimed(db_url, queue, 50)
    batches: list[int] = []

    def commit(outcomes: Sequence[Finish]) -> list[bool]:
        batches.append(len(outcomes))
        return queue.finish_many("w1", outcomes)

    async with group_commit(commit, get_logger("test"), "rec-share") as group:
        results = await asyncio.wait_for(
            asyncio.gather(*(group.record(sent(row_id)) for row_id in ids)), WAIT
        )
    assert results == [True] * 50
    assert sum(batches) == 50
    assert len(batches) < 50
    assert max(batches) > 1
    assert queue.counts() == {"sent": 50}
    assert host_sql(db_url, "SELECT count(*) FROM outbox_event WHERE kind = 'sent'") == [(50,)]


async def test_each_waiter_hears_of_its_own_row(db_url: str, queue: Outbox) -> None:
    ids = claimed(db_url, queue, 10)
    theirs = {ids[3], ids[4]}  # not symmetric: a mix-up of waiters shows
    for row_id in theirs:  # the lease ran out and another robot took the row
        host_sql(db_url, "UPDATE outbox SET claimed_by = 'w2' WHERE id = ?", [row_id])

    def commit(outcomes: Sequence[Finish]) -> list[bool]:
        return queue.finish_many("w1", outcomes)

    async with group_commit(commit, get_logger("test"), "rec-own") as group:
        results = await asyncio.wait_for(
            asyncio.gather(*(group.record(sent(row_id)) for row_id in ids)), WAIT
        )
    assert results == [row_id not in theirs for row_id in ids]
    assert queue.counts() == {"sent": 8, "sending": 2}


async def test_a_lost_database_is_logged_and_retried(
    db_url: str, queue: Outbox, quick_retries: None
) -> None:
    (row_id,) = claimed(db_url, queue, 1)
    commit = LostThenBack(queue, failures=3)

    with capture_logs() as logs:
        async with group_commit(commit, get_logger("test"), "rec-retry") as group:
            assert await asyncio.wait_for(group.record(sent(row_id)), WAIT) is True
    unavailable = [e for e in logs if e["event"] == "database.unavailable"]
    assert [(e["log_level"], e["doing"], e["retry_in"]) for e in unavailable] == [
        ("error", "record", 0.01),
        ("error", "record", 0.02),  # doubled
        ("error", "record", 0.02),  # up to RETRY_MAX
    ]
    assert all(
        e["error"] == "(builtins.ConnectionError) server closed the connection unexpectedly"
        for e in unavailable
    )  # the first line only: no SQL in the log
    assert queue.counts() == {"sent": 1}


async def test_stopping_gives_up_on_a_database_that_stays_away(
    db_url: str, queue: Outbox, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    monkeypatch.setattr(backoff, "STOP_PATIENCE", 0.3)
    first, second = claimed(db_url, queue, 2)
    down = True
    attempts = 0

    def commit(outcomes: Sequence[Finish]) -> list[bool]:
        nonlocal attempts
        attempts += 1
        if down:
            raise lost_database()
        return queue.finish_many("w1", outcomes)

    with capture_logs() as logs:
        async with group_commit(commit, get_logger("test"), "rec-stop") as group:
            waiting = asyncio.ensure_future(group.record(sent(first)))
            await asyncio.sleep(0.6)  # twice the patience: not stopping, so no giving up
            assert not waiting.done()
            tried = attempts
            assert tried > 1

            started = time.monotonic()
            group.stopping()
            assert await asyncio.wait_for(waiting, WAIT) is False
            assert time.monotonic() - started < 3
            assert attempts > tried  # it went on trying for a while

            down = False  # the thread goes on: the next batch is committed
            assert await asyncio.wait_for(group.record(sent(second)), WAIT) is True
    gave_up = [e for e in logs if e["event"] == "database.gave_up"]
    assert [(e["doing"], e["outcomes"]) for e in gave_up] == [("record", 1)]
    assert host_sql(db_url, "SELECT id, status FROM outbox ORDER BY id") == [
        (first, "sending"),
        (second, "sent"),
    ]


async def test_stopping_waits_for_a_database_that_comes_back_in_time(
    db_url: str, queue: Outbox, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    monkeypatch.setattr(backoff, "STOP_PATIENCE", 5.0)
    (row_id,) = claimed(db_url, queue, 1)
    commit = LostThenBack(queue, failures=5)

    async with group_commit(commit, get_logger("test"), "rec-patience") as group:
        group.stopping()
        assert await asyncio.wait_for(group.record(sent(row_id)), WAIT) is True
    assert commit.failures == 0
    assert queue.counts() == {"sent": 1}


async def test_close_with_nothing_recorded_returns_at_once(queue: Outbox) -> None:
    batches: list[int] = []

    def commit(outcomes: Sequence[Finish]) -> list[bool]:
        batches.append(len(outcomes))
        return queue.finish_many("w1", outcomes)

    group = GroupCommit(commit, get_logger("test"), name="rec-idle")
    started = time.monotonic()
    await asyncio.wait_for(group.close(), WAIT)
    assert time.monotonic() - started < 0.5
    assert threads_named("rec-idle") == []
    assert batches == []


async def test_close_commits_what_is_queued_and_ends_the_thread(db_url: str, queue: Outbox) -> None:
    ids = claimed(db_url, queue, 20)

    def commit(outcomes: Sequence[Finish]) -> list[bool]:
        return queue.finish_many("w1", outcomes)

    group = GroupCommit(commit, get_logger("test"), name="rec-close")
    assert await asyncio.wait_for(group.record(sent(ids[0])), WAIT) is True
    (thread,) = threads_named("rec-close")
    waiting = [asyncio.ensure_future(group.record(sent(row_id))) for row_id in ids[1:]]
    await asyncio.sleep(0)  # they are queued, not yet committed
    await asyncio.wait_for(group.close(), WAIT)
    assert not thread.is_alive()
    assert all(w.done() for w in waiting)
    assert [w.result() for w in waiting] == [True] * 19
    assert queue.counts() == {"sent": 20}


async def test_an_unexpected_error_reaches_the_waiter(
    db_url: str, queue: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    (row_id,) = claimed(db_url, queue, 1)
    died: list[BaseException | None] = []  # a thread that dies says so here, not on stderr
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))

    def commit(outcomes: Sequence[Finish]) -> list[bool]:
        raise RuntimeError("a bug in the commit")

    async with group_commit(commit, get_logger("test"), "rec-bug") as group:
        with pytest.raises(RuntimeError, match="a bug in the commit"):
            await asyncio.wait_for(group.record(sent(row_id)), 2)


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """A migrated SQLite file and an engine on it (SQLite's own locking)."""
    url = f"sqlite:///{tmp_path}/locked.db"
    engine = make_engine(url)
    upgrade(engine)
    yield url, engine
    engine.dispose()


async def test_sqlite_a_locked_database_is_waited_for(sqlite_file: tuple[str, Engine]) -> None:
    url, engine = sqlite_file
    queue = Outbox(engine, grace_seconds=0, lease_seconds=60)
    (row_id,) = claimed(url, queue, 1)

    def commit(outcomes: Sequence[Finish]) -> list[bool]:
        return queue.finish_many("w1", outcomes)

    holder = sqlite3.connect(str(engine.url.database), isolation_level=None)
    async with group_commit(commit, get_logger("test"), "rec-locked") as group:
        holder.execute("BEGIN EXCLUSIVE")  # a host application's long write transaction
        try:
            waiting = asyncio.ensure_future(
                group.record(
                    Finish(
                        row_id, Decision(Status.DEFERRED, timedelta(minutes=5), "451", "deferred")
                    )
                )
            )
            started = time.monotonic()
            await asyncio.sleep(1.0)
            assert time.monotonic() - started < 1.5  # the commit waits on its thread, not here
            assert not waiting.done()
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert await asyncio.wait_for(waiting, WAIT) is True
    assert queue.counts() == {"deferred": 1}
