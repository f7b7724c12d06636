"""What the robot's side (claims.py) and the host's and operator's side (operations.py) share:
the engine with its database's statements, the due rule, reading attachments, and the history
lines and suppressions both write."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from robot.outbox.dialects import Statements, statements_for
from robot.outbox.rows import Attachment
from robot.outbox.schema import (
    WAITING_SQL,
    UTCDateTime,
    outbox,
    outbox_attachment,
    outbox_event,
    suppression,
)

MIB = 1024 * 1024
WAITING = text(WAITING_SQL)  # literal, so that the planners match the partial index


class OutboxTables:
    """The outbox tables through one engine: its database's statements, the grace before a
    new row is due, and the size over which a row's attachments are not read."""

    def __init__(
        self,
        engine: Engine,
        *,
        grace_seconds: float,
        max_attachment_bytes: int = 10 * MIB,
    ) -> None:
        self.engine = engine
        self.statements: Statements = statements_for(engine)
        self.grace_seconds = grace_seconds
        self.max_attachment_bytes = max_attachment_bytes
        # The two reads of _attachments, built once: a claim runs them every time.
        of_rows = self.statements.among(outbox_attachment.c.outbox_id, "ids")
        self._attachment_sizes = (
            select(
                outbox_attachment.c.outbox_id,
                func.sum(self.statements.octets(outbox_attachment.c.content)),
            )
            .where(of_rows)
            .group_by(outbox_attachment.c.outbox_id)
        )
        self._attachment_files = (
            select(outbox_attachment).where(of_rows).order_by(outbox_attachment.c.id)
        )

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite a deferred BEGIN, which takes no write lock and
        so never waits behind a claim or a host's write transaction (WAL reads beside them)."""
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_read_only=True)
            with conn.begin():
                yield conn

    def readable_columns(self) -> list[ColumnElement[Any]]:
        """The outbox's columns, its times as the driver can read them (PostgreSQL keeps
        '-infinity', which Python's datetime cannot hold: Statements.readable_time)."""
        readable = self.statements.readable_time
        return [
            readable(c).label(c.name) if isinstance(c.type, UTCDateTime) else c for c in outbox.c
        ]

    def due_at(self) -> ColumnElement[datetime]:
        """When a row is or was due, with this outbox's grace (Statements.due_at)."""
        return self.statements.due_at(self.grace_seconds)

    def _attachments(
        self, conn: Connection, ids: list[int]
    ) -> tuple[dict[int, tuple[Attachment, ...]], dict[int, int]]:
        """The files of rows `ids` and each row's total; files of rows over the limit are
        not read."""
        sizes: dict[int, int] = {
            row_id: int(size) for row_id, size in conn.execute(self._attachment_sizes, {"ids": ids})
        }
        wanted = [i for i, size in sizes.items() if size <= self.max_attachment_bytes]
        found: dict[int, list[Attachment]] = {}
        if wanted:
            for r in conn.execute(self._attachment_files, {"ids": wanted}).mappings():
                found.setdefault(r["outbox_id"], []).append(
                    Attachment(r["filename"], r["content_type"], _as_bytes(r["content"]))
                )
        return {key: tuple(value) for key, value in found.items()}, sizes


def _as_bytes(content: object) -> bytes:
    """A file's content as bytes: SQLite keeps text (or a number) where a host wrote one
    into the BLOB column, and that text's UTF-8 bytes are what it means."""
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    return str(content).encode("utf-8", "surrogateescape")


def insert_events(conn: Connection, ids: Sequence[int], kind: str, detail: str) -> None:
    """The same history line for each row of `ids`."""
    if ids:
        conn.execute(
            insert(outbox_event),
            [{"outbox_id": i, "kind": kind, "detail": detail} for i in ids],
        )


def insert_suppression(conn: Connection, address: str, reason: str, row_id: int | None) -> bool:
    """Add `address` (lower-cased) to the list; False if it was there already, also when
    another transaction added it meanwhile (PostgreSQL and SQLite: ON CONFLICT DO NOTHING;
    MariaDB/MySQL look first, as INSERT IGNORE would also let a value too long for its
    column through as a warning)."""
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        added = conn.execute(
            upsert(suppression)
            .values(address=address.lower(), reason=reason, outbox_id=row_id)
            .on_conflict_do_nothing(index_elements=[suppression.c.address])
            .returning(suppression.c.address)
        )
        return added.first() is not None
    exists = conn.execute(
        select(suppression.c.address).where(suppression.c.address == address.lower())
    ).first()
    if exists is not None:
        return False
    conn.execute(
        insert(suppression).values(address=address.lower(), reason=reason, outbox_id=row_id)
    )
    return True
