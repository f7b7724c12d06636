"""Reads never wait for SQLite's write lock: `status`, `list`, `show`, the metrics and the
suppression look-up answer while a claim, or a host's write transaction, holds it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from robot.outbox import engine as engine_module
from robot.outbox.both_sides import Outbox
from robot.outbox.engine import make_engine, schema_is_current, upgrade
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision, Finish, OutboxRow
from robot.outbox.schema import Status
from tests.integration.host import insert_many

SHORT_BUSY_MS = 200  # a read that waits for the write lock fails after this instead of 30 s
mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))


@pytest.fixture
def locked_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outbox]:
    """An outbox with a sent row, a pending row and a suppressed address, while another
    connection holds the write lock (BEGIN IMMEDIATE, as a claim does)."""
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_MS", SHORT_BUSY_MS)
    url = f"sqlite:///{tmp_path}/reads.db"
    engine = make_engine(url)
    upgrade(engine)
    box = Outbox(engine, grace_seconds=0, lease_seconds=60)
    first, _ = insert_many(url, 2, batch="june")
    (claimed,) = box.claim("w1", 1, mid)
    assert claimed.id == first
    assert box.finish_many("w1", [Finish(first, Decision(Status.SENT, None, None, "sent"))])
    box.suppress("gone@example.org", "by the operator")
    locker = sqlite3.connect(tmp_path / "reads.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        yield box
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        engine.dispose()


def test_reads_answer_while_another_connection_holds_the_write_lock(
    locked_outbox: Outbox,
) -> None:
    box = locked_outbox
    first = 1
    reads: dict[str, Callable[[], object]] = {
        "get": lambda: box.get(first),
        "history": lambda: [e.kind for e in box.history(first)],
        "rows": lambda: [r.status for r, _ in box.rows(batch="june")[1]],
        "counts": box.counts,
        "depth": box.depth,
        "status": lambda: (lambda s: (s.counts, s.due, s.sent_recently))(box.status()),
        "suppressed": lambda: [address for address, _, _ in box.suppressed()],
        "is_suppressed": lambda: box.is_suppressed({"Gone@example.org", "here@example.org"}),
        "schema_is_current": lambda: schema_is_current(box.engine),
    }
    answers: dict[str, object] = {}
    locked: list[str] = []
    for name, read in reads.items():
        try:
            answers[name] = read()
        except OperationalError as exc:
            assert "database is locked" in str(exc)
            locked.append(name)
    assert locked == []
    row = answers.pop("get")
    assert isinstance(row, OutboxRow) and row.status == "sent"
    assert answers == {
        "history": ["claimed", "sent"],
        "rows": ["pending", "sent"],
        "counts": {"sent": 1, "pending": 1},
        "depth": ({"sent": 1, "pending": 1}, 1),
        "status": ({"sent": 1, "pending": 1}, 1, 1),
        "suppressed": ["gone@example.org"],
        "is_suppressed": ["gone@example.org"],
        "schema_is_current": True,
    }
