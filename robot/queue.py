"""All job-state SQL: claim due rows, record outcomes, leases, history, operator queries.

The due rule and every timestamp use the database clock. Claiming is atomic: PostgreSQL
`FOR UPDATE SKIP LOCKED`, SQLite one `BEGIN IMMEDIATE` write transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    case,
    func,
    insert,
    select,
    text,
    type_coerce,
    update,
)

from robot.models import (
    WAITING_SQL,
    Status,
    UTCDateTime,
    outbox,
    outbox_attachment,
    outbox_event,
    suppression,
    utcnow,
)
from robot.policy import Decision

SQLITE_TIME = "%Y-%m-%d %H:%M:%f"
WAITING = text(WAITING_SQL)  # literal, so that the planners match the partial index
CLAIM_ORDER = (outbox.c.priority.desc(), outbox.c.created_at, outbox.c.id)


@dataclass(frozen=True)
class Attachment:
    """One file attached to a row."""

    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class OutboxRow:
    """An outbox row as the robot reads it."""

    id: int
    created_at: datetime
    send_after: datetime | None
    status: str
    priority: int
    account: str | None
    sender: str | None
    sender_name: str | None
    reply_to: str | None
    recipient: str
    cc: str | None
    bcc: str | None
    subject: str
    body_text: str | None
    body_html: str | None
    headers: str | None
    context: str | None
    batch: str | None
    transactional: bool
    attempts: int
    next_attempt_at: datetime | None
    claimed_by: str | None
    claimed_until: datetime | None
    message_id: str | None
    smtp_code: int | None
    smtp_reply: str | None
    last_error: str | None
    sent_at: datetime | None
    updated_at: datetime | None
    attachments: tuple[Attachment, ...] = ()

    @classmethod
    def from_mapping(cls, values: Any, attachments: tuple[Attachment, ...] = ()) -> OutboxRow:
        """Build from a result row mapping with every outbox column."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "attachments"]
        return cls(**{name: values[name] for name in names}, attachments=attachments)


@dataclass(frozen=True)
class Event:
    """One line of a row's history."""

    at: datetime
    kind: str
    smtp_code: int | None
    detail: str | None


@dataclass(frozen=True)
class Change:
    """What an operator command changed, and what it found too late to change."""

    changed: list[int]
    too_late: list[tuple[int, str]]  # (id, current status), or status 'missing'


class Outbox:
    """The narrow gateway between the robot and the outbox tables."""

    def __init__(self, engine: Engine, *, grace_seconds: float, lease_seconds: float) -> None:
        self.engine = engine
        self.grace_seconds = grace_seconds
        self.lease_seconds = lease_seconds
        self.sqlite = engine.dialect.name == "sqlite"

    # -- clock and due rule ------------------------------------------------------------

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """The database clock plus `seconds`."""
        expr: ColumnElement[Any]
        if self.sqlite:
            expr = func.strftime(SQLITE_TIME, "now", f"{seconds:+.3f} seconds")
        else:
            expr = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
        return type_coerce(expr, UTCDateTime())

    def due_at(self) -> ColumnElement[datetime]:
        """coalesce(next_attempt_at, max(created_at + grace, coalesce(send_after, created_at)))."""
        expr: ColumnElement[Any]
        graced: ColumnElement[Any]
        if self.sqlite:
            # Host applications write what datetime() writes, or ISO text: normalise it so
            # that the text comparison is a time comparison.
            created = func.strftime(SQLITE_TIME, outbox.c.created_at)
            graced = func.strftime(
                SQLITE_TIME, outbox.c.created_at, f"{self.grace_seconds:+.3f} seconds"
            )
            scheduled = func.coalesce(func.strftime(SQLITE_TIME, outbox.c.send_after), created)
            expr = func.coalesce(outbox.c.next_attempt_at, func.max(graced, scheduled))
        else:
            graced = outbox.c.created_at + func.make_interval(0, 0, 0, 0, 0, 0, self.grace_seconds)
            scheduled = func.coalesce(outbox.c.send_after, outbox.c.created_at)
            expr = func.coalesce(outbox.c.next_attempt_at, func.greatest(graced, scheduled))
        return type_coerce(expr, UTCDateTime())

    # -- the robot's side --------------------------------------------------------------

    def claim(
        self,
        worker: str,
        limit: int,
        message_id_for: Callable[[OutboxRow], str],
        exclude_accounts: Sequence[str] = (),
    ) -> list[OutboxRow]:
        """Lease up to `limit` due rows to `worker`, best first; fix their Message-IDs.

        Rows of `exclude_accounts` ("default" for NULL) are left alone: those accounts are
        paused after a transport fault.
        """
        due = (
            select(outbox.c.id)
            .where(WAITING, self.due_at() <= utcnow())
            .order_by(*CLAIM_ORDER)
            .limit(limit)
        )
        if exclude_accounts:
            due = due.where(func.coalesce(outbox.c.account, "default").not_in(exclude_accounts))
        values = {
            "status": Status.SENDING.value,
            "claimed_by": worker,
            "claimed_until": self.now_plus(self.lease_seconds),
            "attempts": outbox.c.attempts + 1,
            "updated_at": utcnow(),
        }
        if self.sqlite:
            stmt = update(outbox).where(outbox.c.id.in_(due.scalar_subquery()))
        else:
            locked = due.with_for_update(skip_locked=True).subquery()
            stmt = update(outbox).where(outbox.c.id == locked.c.id, WAITING)
        with self.engine.begin() as conn:
            found = conn.execute(stmt.values(values).returning(*outbox.c)).mappings().all()
            if not found:
                return []
            files = self._attachments(conn, [r["id"] for r in found])
            rows = [OutboxRow.from_mapping(r, files.get(r["id"], ())) for r in found]
            rows = self._fix_message_ids(conn, rows, message_id_for)
            conn.execute(
                insert(outbox_event),
                [{"outbox_id": r.id, "kind": "claimed", "detail": worker} for r in rows],
            )
        rows.sort(key=lambda r: (-r.priority, r.created_at, r.id))
        return rows

    def _attachments(self, conn: Connection, ids: list[int]) -> dict[int, tuple[Attachment, ...]]:
        found: dict[int, list[Attachment]] = {}
        query = (
            select(outbox_attachment)
            .where(outbox_attachment.c.outbox_id.in_(ids))
            .order_by(outbox_attachment.c.id)
        )
        for r in conn.execute(query).mappings():
            found.setdefault(r["outbox_id"], []).append(
                Attachment(r["filename"], r["content_type"], bytes(r["content"]))
            )
        return {key: tuple(value) for key, value in found.items()}

    def _fix_message_ids(
        self, conn: Connection, rows: list[OutboxRow], message_id_for: Callable[[OutboxRow], str]
    ) -> list[OutboxRow]:
        """Give rows claimed for the first time a Message-ID that retries will reuse."""
        fresh = {r.id: message_id_for(r) for r in rows if not r.message_id}
        if fresh:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == bindparam("row_id"))
                .values(message_id=bindparam("mid")),
                [{"row_id": key, "mid": value} for key, value in fresh.items()],
            )
        return [
            dataclasses.replace(r, message_id=fresh[r.id]) if r.id in fresh else r for r in rows
        ]

    def finish(
        self,
        row_id: int,
        worker: str,
        decision: Decision,
        *,
        smtp_code: int | None = None,
        smtp_reply: str | None = None,
        detail: str | None = None,
        suppress: str | None = None,
    ) -> bool:
        """Record the end of an attempt; False if the row was no longer leased to `worker`."""
        values: dict[str, Any] = {
            "status": decision.status.value,
            "claimed_by": None,
            "claimed_until": None,
            "updated_at": utcnow(),
            "last_error": decision.last_error,
        }
        if smtp_code is not None or smtp_reply is not None:
            values |= {"smtp_code": smtp_code, "smtp_reply": smtp_reply}
        if decision.status is Status.SENT:
            values["sent_at"] = utcnow()
        if decision.retry_after is not None:
            values["next_attempt_at"] = self.now_plus(decision.retry_after.total_seconds())
        with self.engine.begin() as conn:
            done = conn.execute(
                update(outbox)
                .where(
                    outbox.c.id == row_id,
                    outbox.c.claimed_by == worker,
                    outbox.c.status == Status.SENDING.value,
                )
                .values(values)
            ).rowcount
            if not done:
                return False
            conn.execute(
                insert(outbox_event).values(
                    outbox_id=row_id,
                    kind=decision.event,
                    smtp_code=smtp_code,
                    detail=detail or decision.last_error or smtp_reply,
                )
            )
            if suppress:
                self._suppress(conn, suppress, f"bounced: {smtp_reply or detail}", row_id)
        return True

    def add_event(self, row_id: int, kind: str, detail: str, smtp_code: int | None = None) -> None:
        """Append a line to a row's history without changing the row."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(outbox_event).values(
                    outbox_id=row_id, kind=kind, smtp_code=smtp_code, detail=detail
                )
            )

    def release(self, ids: Sequence[int], worker: str, reason: str) -> int:
        """Give back claimed rows that were never tried; their attempt is not counted."""
        if not ids:
            return 0
        with self.engine.begin() as conn:
            released = (
                conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.id.in_(list(ids)),
                        outbox.c.claimed_by == worker,
                        outbox.c.status == Status.SENDING.value,
                    )
                    .values(
                        status=self._waiting_status(),
                        attempts=outbox.c.attempts - 1,
                        claimed_by=None,
                        claimed_until=None,
                        updated_at=utcnow(),
                    )
                    .returning(outbox.c.id)
                )
                .scalars()
                .all()
            )
            self._events(conn, released, "unclaimed", reason)
        return len(released)

    def renew(self, worker: str) -> int:
        """Extend the lease of every row `worker` still holds."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(outbox)
                .where(outbox.c.claimed_by == worker, outbox.c.status == Status.SENDING.value)
                .values(claimed_until=self.now_plus(self.lease_seconds))
            ).rowcount

    def reap_expired(self) -> list[int]:
        """Take back rows whose lease ran out (their robot died); they become due again."""
        with self.engine.begin() as conn:
            reaped = (
                conn.execute(
                    update(outbox)
                    .where(
                        text("status = 'sending'"),
                        outbox.c.claimed_until < utcnow(),
                    )
                    .values(
                        status=self._waiting_status(),
                        claimed_by=None,
                        claimed_until=None,
                        updated_at=utcnow(),
                    )
                    .returning(outbox.c.id)
                )
                .scalars()
                .all()
            )
            self._events(conn, reaped, "lease-expired", "the robot holding it stopped answering")
        return list(reaped)

    def is_suppressed(self, addresses: Iterable[str]) -> list[str]:
        """The addresses among `addresses` that are in the suppression list."""
        wanted = {a.lower() for a in addresses}
        if not wanted:
            return []
        with self.engine.connect() as conn:
            found = conn.execute(
                select(suppression.c.address).where(suppression.c.address.in_(wanted))
            ).scalars()
            return sorted(found)

    @staticmethod
    def _waiting_status() -> ColumnElement[str]:
        return case(
            (outbox.c.next_attempt_at.is_(None), Status.PENDING.value),
            else_=Status.DEFERRED.value,
        )

    @staticmethod
    def _events(conn: Connection, ids: Sequence[int], kind: str, detail: str) -> None:
        if ids:
            conn.execute(
                insert(outbox_event),
                [{"outbox_id": i, "kind": kind, "detail": detail} for i in ids],
            )

    def _suppress(self, conn: Connection, address: str, reason: str, row_id: int | None) -> None:
        exists = conn.execute(
            select(suppression.c.address).where(suppression.c.address == address.lower())
        ).first()
        if exists is None:
            conn.execute(
                insert(suppression).values(address=address.lower(), reason=reason, outbox_id=row_id)
            )

    # -- host and operator side --------------------------------------------------------

    def enqueue(self, fields: dict[str, Any], attachments: Sequence[Attachment] = ()) -> int:
        """Insert one row (and its attachments), as a host application would; returns its id."""
        with self.engine.begin() as conn:
            row_id: int = conn.execute(
                insert(outbox).values(**fields).returning(outbox.c.id)
            ).scalar_one()
            if attachments:
                conn.execute(
                    insert(outbox_attachment),
                    [
                        {
                            "outbox_id": row_id,
                            "filename": a.filename,
                            "content_type": a.content_type,
                            "content": a.content,
                        }
                        for a in attachments
                    ],
                )
        return row_id

    def get(self, row_id: int) -> OutboxRow | None:
        """One row with its attachments, or None."""
        with self.engine.connect() as conn:
            found = conn.execute(select(outbox).where(outbox.c.id == row_id)).mappings().first()
            if found is None:
                return None
            files = self._attachments(conn, [row_id])
            return OutboxRow.from_mapping(found, files.get(row_id, ()))

    def history(self, row_id: int) -> list[Event]:
        """A row's events, oldest first."""
        query = (
            select(outbox_event)
            .where(outbox_event.c.outbox_id == row_id)
            .order_by(outbox_event.c.id)
        )
        with self.engine.connect() as conn:
            return [
                Event(r["at"], r["kind"], r["smtp_code"], r["detail"])
                for r in conn.execute(query).mappings()
            ]

    def rows(
        self, *, status: str | None = None, batch: str | None = None, limit: int = 50
    ) -> tuple[datetime, list[tuple[OutboxRow, datetime]]]:
        """The database's now and rows (newest first) with the time each is or was due."""
        query = select(outbox, self.due_at().label("due_at")).order_by(outbox.c.id.desc())
        if status:
            query = query.where(outbox.c.status == status)
        if batch:
            query = query.where(outbox.c.batch == batch)
        with self.engine.connect() as conn:
            now = conn.execute(select(utcnow())).scalar_one()
            found = conn.execute(query.limit(limit)).mappings().all()
        return now, [(OutboxRow.from_mapping(r), r["due_at"]) for r in found]

    def counts(self) -> dict[str, int]:
        """Number of rows in each status."""
        query = select(outbox.c.status, func.count()).group_by(outbox.c.status)
        with self.engine.connect() as conn:
            return {status: count for status, count in conn.execute(query).tuples()}
