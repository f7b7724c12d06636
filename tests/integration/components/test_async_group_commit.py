"""AsyncGroupCommit, the PostgreSQL group commit on the event loop: one statement per batch
over its own psycopg connection, the transactional Claims.finish_many for batches that need
it, a lost connection retried, and a bug reaching the waiters instead of a silent False."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from robot import backoff
from robot.logs import get_logger
from robot.outbox import group_commit as recorder
from robot.outbox.both_sides import Outbox
from robot.outbox.engine import libpq_dsn, make_engine
from robot.outbox.group_commit import AsyncGroupCommit
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision, Finish
from robot.outbox.schema import Status
from tests.integration.host import host_sql, insert_many

pytestmark = pytest.mark.postgres

SENT = Decision(Status.SENT, None, None, "sent")
BOUNCED = Decision(Status.BOUNCED, None, "550 5.1.1 no such user", "bounced")
WAIT = 10.0


mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def queue(pg_engine: Engine) -> Outbox:
    return Outbox(pg_engine, grace_seconds=0, lease_seconds=60)


@pytest.fixture
async def group(queue: Outbox) -> AsyncIterator[AsyncGroupCommit]:
    committer = AsyncGroupCommit(queue, "w1", libpq_dsn(queue.engine.url), get_logger("t"))
    yield committer
    await asyncio.wait_for(committer.close(), WAIT)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff, "DATABASE_FIRST", 0.01)
    monkeypatch.setattr(backoff, "DATABASE_LONGEST", 0.02)


def claimed(pg_url: str, queue: Outbox, n: int) -> list[int]:
    ids = insert_many(pg_url, n)
    assert sorted(r.id for r in queue.claim("w1", n, mid)) == ids
    return ids


def count_statements(queue: Outbox, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the batches that went as one statement (not through finish_many)."""
    sizes: list[int] = []
    original = queue.finish_statement

    def counted(worker: str, outcomes: Any) -> Any:
        statement = original(worker, outcomes)
        if statement is not None:
            sizes.append(len(outcomes))
        return statement

    monkeypatch.setattr(queue, "finish_statement", counted)
    return sizes


async def test_concurrent_outcomes_go_in_few_statements(
    pg_url: str, queue: Outbox, group: AsyncGroupCommit, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = claimed(pg_url, queue, 40)
    host_sql(pg_url, "UPDATE outbox SET claimed_by = 'w2' WHERE id = ?", [ids[7]])
    sizes = count_statements(queue, monkeypatch)
    results = await asyncio.wait_for(
        asyncio.gather(*(group.record(Finish(i, SENT, 250, "2.0.0 Ok")) for i in ids)), WAIT
    )
    assert results == [i != ids[7] for i in ids]
    assert sum(sizes) == 40 and len(sizes) < 40
    assert queue.counts() == {"sent": 39, "sending": 1}
    events = host_sql(pg_url, "SELECT count(*) FROM outbox_event WHERE kind = 'sent'")
    assert events == [(39,)]


async def test_a_suppression_goes_through_one_transaction(
    pg_url: str, queue: Outbox, group: AsyncGroupCommit, monkeypatch: pytest.MonkeyPatch
) -> None:
    (row_id,) = claimed(pg_url, queue, 1)
    sizes = count_statements(queue, monkeypatch)
    outcome = Finish(
        row_id,
        BOUNCED,
        550,
        "5.1.1 no such user",
        suppress=(("Gone@Example.org", "bounced: 5.1.1 no such user"),),
    )
    assert await asyncio.wait_for(group.record(outcome), WAIT) is True
    assert sizes == []  # not the one-statement path
    assert queue.counts() == {"bounced": 1}
    assert queue.is_suppressed({"gone@example.org"}) == ["gone@example.org"]


async def test_a_large_batch_is_one_statement(
    pg_url: str, queue: Outbox, group: AsyncGroupCommit, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = claimed(pg_url, queue, recorder.BATCH)
    sizes = count_statements(queue, monkeypatch)
    outcomes = [Finish(i, SENT, 250, "2.0.0 Ok") for i in ids]
    results = await asyncio.wait_for(asyncio.gather(*(group.record(o) for o in outcomes)), WAIT)
    assert results == [True] * recorder.BATCH
    assert queue.counts() == {"sent": recorder.BATCH}
    assert sum(sizes) == recorder.BATCH  # one statement each, however large: atomic


async def test_a_connection_that_died_is_replaced_at_once(
    pg_url: str, queue: Outbox, group: AsyncGroupCommit, quick_retries: None
) -> None:
    """A connection the server ended (a restart, here pg_terminate_backend) is found broken
    at the next commit: a new one at once, logged at info level, not as an outage."""
    first, second = claimed(pg_url, queue, 2)
    assert await asyncio.wait_for(group.record(Finish(first, SENT, 250, "ok")), WAIT)
    killed = host_sql(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
        [recorder.APPLICATION_NAME],
    )
    assert killed and all(row[0] for row in killed)
    with capture_logs() as logs:
        assert await asyncio.wait_for(group.record(Finish(second, SENT, 250, "ok")), WAIT)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == []
    reconnected = [e for e in logs if e["event"] == "database.reconnected"]
    assert [(e["log_level"], e["doing"]) for e in reconnected] == [("info", "record")]
    assert queue.counts() == {"sent": 2}


async def test_a_bug_reaches_the_waiter_and_the_next_batch_still_goes(
    pg_url: str, queue: Outbox, group: AsyncGroupCommit, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = claimed(pg_url, queue, 2)
    original = queue.finish_statement

    def broken(worker: str, outcomes: Any) -> Any:
        raise RuntimeError("a bug in the commit")

    monkeypatch.setattr(queue, "finish_statement", broken)
    with pytest.raises(RuntimeError, match="a bug in the commit"):
        await asyncio.wait_for(group.record(Finish(first, SENT, 250, "ok")), WAIT)
    monkeypatch.setattr(queue, "finish_statement", original)
    assert await asyncio.wait_for(group.record(Finish(second, SENT, 250, "ok")), WAIT)
    assert queue.counts() == {"sending": 1, "sent": 1}


async def test_while_stopping_an_absent_database_is_given_up(
    pg_url: str, queue: Outbox, quick_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (row_id,) = claimed(pg_url, queue, 1)
    monkeypatch.setattr(backoff, "STOP_PATIENCE", 0.3)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = psycopg.conninfo.make_conninfo(libpq_dsn(queue.engine.url), port=port)
    committer = AsyncGroupCommit(queue, "w1", dsn, get_logger("t"))
    committer.stopping()
    with capture_logs() as logs:
        recorded = await asyncio.wait_for(committer.record(Finish(row_id, SENT, 250, "ok")), WAIT)
    await committer.close()
    assert recorded is False
    assert any(e["event"] == "database.gave_up" for e in logs)
    assert queue.counts() == {"sending": 1}
