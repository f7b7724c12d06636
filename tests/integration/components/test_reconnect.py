"""PostgreSQL without pre-ping: a pooled connection that died with the server (a restart) is
found out at its first statement, and the outbox's call is done again at once on a new
connection, logged at info level (`database.reconnected`), not as an outage."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from robot.outbox.both_sides import Outbox
from robot.outbox.engine import make_engine
from robot.outbox.message_ids import AccountDomain, MessageIds
from tests.integration.host import host_sql, insert_many

pytestmark = pytest.mark.postgres
mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def end_other_sessions(url: str) -> int:
    """What a server restart does to the robot's pooled connections: the server ends them."""
    ended = host_sql(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    return len(ended)


def test_calls_on_a_connection_that_died_are_done_again_at_once(
    pg_url: str, pg_engine: Engine
) -> None:
    queue = Outbox(pg_engine, grace_seconds=0, lease_seconds=60)
    insert_many(pg_url, 3)
    assert queue.counts() == {"pending": 3}  # a connection in the pool now
    calls: dict[str, Callable[[], object]] = {
        "claim": lambda: len(queue.claim("w1", 2, mid)),
        "counts": queue.counts,
        "is_suppressed": lambda: queue.is_suppressed({"a@example.org"}),
        "reap_expired": lambda: queue.reap_expired(3, "w1", set()),
    }
    answers: dict[str, object] = {}
    with capture_logs() as logs:
        for name, call in calls.items():
            assert end_other_sessions(pg_url) >= 1
            answers[name] = call()
    assert answers == {
        "claim": 2,
        "counts": {"sending": 2, "pending": 1},
        "is_suppressed": [],
        "reap_expired": ([], []),
    }
    assert [(e["event"], e["log_level"], e["doing"]) for e in logs] == [
        ("database.reconnected", "info", name) for name in calls
    ]
