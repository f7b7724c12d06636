"""All job-state SQL: claim due rows, record outcomes, leases, history, operator queries.

The due rule and every timestamp use the database clock. Claiming is atomic: PostgreSQL
`FOR UPDATE SKIP LOCKED`, SQLite one `BEGIN IMMEDIATE` write transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    case,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from robot.config import Settings
from robot.outbox.dialects import statements_for
from robot.outbox.message_ids import MessageIds
from robot.outbox.rows import (
    NOT_RETURNED_BY_CLAIM,
    RECENT_SECONDS,
    Attachment,
    Change,
    Decision,
    Event,
    Finish,
    HistoryLine,
    OutboxRow,
    QueueStatus,
)
from robot.outbox.schema import (
    FINISHED,
    WAITING_SQL,
    Status,
    UTCDateTime,
    outbox,
    outbox_attachment,
    outbox_event,
    suppression,
    utcnow,
)

MIB = 1024 * 1024
PURGE_CHUNK = 500  # rows deleted per transaction by the retention job
LEASE_CHUNK = 500  # claimed rows given Message-IDs, or history lines, by one statement
LEASE_GIVE_UP = (
    "the robot sending it stopped answering on every attempt (lease expired); "
    "it may have been delivered before that: check before `email-robot retry`"
)
UNSCHEDULABLE = "created_at or send_after is not a time the database can read"
WAITING = text(WAITING_SQL)  # literal, so that the planners match the partial index
CLAIM_ORDER = (outbox.c.priority.desc(), outbox.c.created_at, outbox.c.id)


class ClaimRef(NamedTuple):
    """A row just leased, before it is read whole."""

    id: int
    account: str | None
    sender: str | None
    message_id: str | None


@dataclass(frozen=True)
class Transition:
    """An operator's state change: from which statuses, to which, and its history event."""

    verb: str
    event: str
    sources: tuple[str, ...]  # statuses it applies to
    already: tuple[str, ...]  # statuses that mean "nothing to do" (not too late)
    values: dict[str, Any]


TRANSITIONS = {
    "retract": Transition(
        "retract",
        "retracted",
        (Status.PENDING.value, Status.DEFERRED.value, Status.HELD.value),
        (Status.RETRACTED.value,),
        {"status": Status.RETRACTED.value},
    ),
    "hold": Transition(
        "hold",
        "held",
        (Status.PENDING.value, Status.DEFERRED.value),
        (Status.HELD.value,),
        {"status": Status.HELD.value},
    ),
    "release": Transition(
        "release",
        "released",
        (Status.HELD.value,),
        (Status.PENDING.value, Status.DEFERRED.value),
        {"status": Status.PENDING.value},
    ),
    # A new start: attempts count from zero again and the row is due now (Message-ID kept).
    "retry": Transition(
        "retry",
        "retried",
        (Status.FAILED.value, Status.BOUNCED.value, Status.DEFERRED.value),
        (Status.PENDING.value,),
        {"status": Status.PENDING.value, "attempts": 0, "next_attempt_at": None},
    ),
}


class Outbox:
    """The narrow gateway between the robot and the outbox tables."""

    def __init__(
        self,
        engine: Engine,
        *,
        grace_seconds: float,
        lease_seconds: float,
        max_body_bytes: int = 10 * MIB,
        max_attachment_bytes: int = 10 * MIB,
    ) -> None:
        self.engine = engine
        self.grace_seconds = grace_seconds
        self.lease_seconds = lease_seconds
        self.max_body_bytes = max_body_bytes
        self.max_attachment_bytes = max_attachment_bytes
        self.statements = statements_for(engine)
        self._lease_sql_cache: dict[int, str] = {}

    # -- due rule ----------------------------------------------------------------------

    def due_at(self) -> ColumnElement[datetime]:
        """When a row is or was due, with this outbox's grace (Statements.due_at)."""
        return self.statements.due_at(self.grace_seconds)

    # -- the robot's side --------------------------------------------------------------

    def claim(
        self,
        worker: str,
        limit: int,
        message_ids: MessageIds,
        exclude_accounts: Sequence[str] = (),
    ) -> list[OutboxRow]:
        """Lease up to `limit` due rows to `worker`, best first; fix their Message-IDs.

        Rows of `exclude_accounts` ("default" for NULL) are left alone: those accounts are
        paused after a transport fault.
        """
        pick = (
            select(outbox.c.id, outbox.c.account, outbox.c.sender, outbox.c.message_id)
            .where(WAITING, self.due_at() <= utcnow())
            .order_by(*CLAIM_ORDER)
            .limit(limit)
        )
        if exclude_accounts:
            pick = pick.where(func.coalesce(outbox.c.account, "default").not_in(exclude_accounts))
        pick = self.statements.lock_for_claim(pick)
        # Two transactions, so that SQLite's write lock is held only for the first: lease
        # the rows and fix their Message-IDs (pick, then one UPDATE: one new version of
        # each row), then read what sending needs (a read, which WAL runs beside writers).
        leased = self.statements.with_lenient_retry(
            self.engine.begin, lambda conn: self._lease(conn, pick, worker, message_ids)
        )
        if not leased:
            return []
        try:
            rows = self._read_leased(leased)
        except SQLAlchemyError:
            self.release(leased, worker, "reading the claimed rows failed")
            raise
        rows.sort(key=lambda r: (-r.priority, r.created_at, r.id))
        return rows

    def _lease(
        self,
        conn: Connection,
        pick: Select[Any],
        worker: str,
        message_ids: MessageIds,
    ) -> list[int]:
        """Pick rows with `pick` (locked), lease them to `worker` with their Message-IDs in
        one UPDATE, and write their claimed events; the leased ids."""
        refs = [ClaimRef(*r) for r in conn.execute(pick)]
        if not refs:
            return []
        # One statement each for all rows (not executemany): this runs while the claim holds
        # its locks, and SQLite gives up the GIL, and waits to get it back, at every row.
        for start in range(0, len(refs), LEASE_CHUNK):
            chunk = refs[start : start + LEASE_CHUNK]
            conn.exec_driver_sql(
                self._lease_sql(len(chunk)),
                (
                    *(
                        v
                        for r in chunk
                        for v in (
                            r.id,
                            r.message_id or message_ids.for_row(r.id, r.account, r.sender),
                        )
                    ),
                    worker,
                ),
            )
            conn.exec_driver_sql(
                self.statements.claimed_events_sql(len(chunk)),
                tuple(value for r in chunk for value in (r.id, worker)),
            )
        return [r.id for r in refs]

    def _lease_sql(self, rows: int) -> str:
        """The UPDATE that leases `rows` picked rows (Statements.lease_sql), kept per size."""
        cached = self._lease_sql_cache.get(rows)
        if cached is not None:
            return cached
        sql = self.statements.lease_sql(rows, self.lease_seconds)
        self._lease_sql_cache[rows] = sql
        return sql

    def _read_leased(self, ids: list[int]) -> list[OutboxRow]:
        """The leased rows with what sending needs, and their files."""
        query = select(*self._sized_columns()).where(outbox.c.id.in_(ids))
        return self.statements.with_lenient_retry(
            self._reading, lambda conn: self._rows_with_files(conn, query, ids)
        )

    def _rows_with_files(
        self, conn: Connection, query: Select[Any], ids: list[int]
    ) -> list[OutboxRow]:
        result = conn.execute(query)
        names = list(result.keys())
        # Plain dicts: a RowMapping looks up a column it lacks through an exception, and a
        # claim leaves out several (NOT_RETURNED_BY_CLAIM) of every row.
        found = [dict(zip(names, values, strict=True)) for values in result]
        files, sizes = self._attachments(conn, ids)
        return [
            OutboxRow.from_mapping(r, files.get(r["id"], ()), sizes.get(r["id"], 0)) for r in found
        ]

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite a deferred BEGIN, which takes no write lock."""
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_read_only=True)
            with conn.begin():
                yield conn

    def _sized_columns(self) -> list[ColumnElement[Any]]:
        """The columns a claim returns: what sending needs (the robot's bookkeeping columns
        stay out, None in the row), bodies left out (NULL) when together over the limit."""
        octets = self.statements.octets
        size = octets(outbox.c.body_text) + octets(outbox.c.body_html)
        fits = size <= self.max_body_bytes
        return [
            *(c for c in outbox.c if c.name not in NOT_RETURNED_BY_CLAIM),
            case((fits, outbox.c.body_text), else_=None).label("body_text"),
            case((fits, outbox.c.body_html), else_=None).label("body_html"),
            size.label("body_bytes"),
        ]

    def _attachments(
        self, conn: Connection, ids: list[int]
    ) -> tuple[dict[int, tuple[Attachment, ...]], dict[int, int]]:
        """The files of rows `ids` and each row's total; files of rows over the limit are
        not read."""
        sizes: dict[int, int] = {
            row_id: int(size)
            for row_id, size in conn.execute(
                select(
                    outbox_attachment.c.outbox_id,
                    func.sum(self.statements.octets(outbox_attachment.c.content)),
                )
                .where(outbox_attachment.c.outbox_id.in_(ids))
                .group_by(outbox_attachment.c.outbox_id)
            )
        }
        wanted = [i for i, size in sizes.items() if size <= self.max_attachment_bytes]
        found: dict[int, list[Attachment]] = {}
        if wanted:
            query = (
                select(outbox_attachment)
                .where(outbox_attachment.c.outbox_id.in_(wanted))
                .order_by(outbox_attachment.c.id)
            )
            for r in conn.execute(query).mappings():
                found.setdefault(r["outbox_id"], []).append(
                    Attachment(r["filename"], r["content_type"], bytes(r["content"]))
                )
        return {key: tuple(value) for key, value in found.items()}, sizes

    def finish(
        self,
        row_id: int,
        worker: str,
        decision: Decision,
        *,
        smtp_code: int | None = None,
        smtp_reply: str | None = None,
        detail: str | None = None,
        suppress: tuple[tuple[str, str], ...] = (),
        history: tuple[HistoryLine, ...] = (),
    ) -> bool:
        """Record the end of an attempt; False if the row was no longer leased to `worker`."""
        outcome = Finish(row_id, decision, smtp_code, smtp_reply, detail, suppress, history)
        return self.finish_many(worker, [outcome])[0]

    def finish_many(self, worker: str, outcomes: Sequence[Finish]) -> list[bool]:
        """Record many attempts at once (the group commit of the robot's connections); for
        each, False if the row was no longer leased to `worker`. An outcome's history lines
        and suppressions are written in the same transaction, before its closing line.

        The hot path of the robot, written for few statements rather than few characters.
        On PostgreSQL one statement updates the rows and adds their history lines (a
        data-modifying WITH over the rows as arrays), on its own: one round trip. On SQLite,
        where the database thread gives up the GIL around every statement and every row it
        steps through and gets it back only when the event loop lets go, three single-step
        statements in a transaction (the rows as one VALUES list).
        """
        if not outcomes:
            return []
        alone = self.statements.finish_statement(worker, outcomes)
        if alone is not None:  # atomic on its own: no transaction
            with self.engine.connect() as conn:
                autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
                held = {row[0] for row in autocommit.exec_driver_sql(*alone)}
            return [o.row_id in held for o in outcomes]
        with self.engine.begin() as conn:
            held = self.statements.record_finishes(conn, worker, outcomes)
            self._suppress_bounced(conn, outcomes, held)
        return [o.row_id in held for o in outcomes]

    def _suppress_bounced(
        self, conn: Connection, outcomes: Sequence[Finish], recorded: set[int]
    ) -> None:
        for o in outcomes:
            if o.row_id in recorded:
                for address, reason in o.suppress:
                    self._suppress(conn, address, reason, o.row_id)

    def finish_statement(
        self, worker: str, outcomes: Sequence[Finish]
    ) -> tuple[str, tuple[Any, ...]] | None:
        """PostgreSQL: the one statement (SQL, parameters) that records `outcomes` and
        returns the ids it recorded, for a driver connection in autocommit mode. None when
        finish_many must do it: on SQLite, or with history lines or suppressions to add in
        a transaction."""
        return self.statements.finish_statement(worker, outcomes)

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

    def renew(self, worker: str, ids: Sequence[int]) -> int:
        """Extend the lease of rows `ids` that `worker` still holds. Only the rows the robot
        really has in hand: a claim whose reply was lost must expire and be taken back."""
        if not ids:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(
                update(outbox)
                .where(
                    outbox.c.id.in_(list(ids)),
                    outbox.c.claimed_by == worker,
                    outbox.c.status == Status.SENDING.value,
                )
                .values(claimed_until=self.statements.now_plus(self.lease_seconds))
            ).rowcount

    def reap_expired(self, max_errors: int | None = None) -> tuple[list[int], list[int]]:
        """Take back rows whose lease ran out (their robot died): they become due again, or
        `failed` once they have used `max_errors` attempts (a row that keeps killing robots
        must not kill them for ever). Returns (taken back, failed)."""
        expired: list[ColumnElement[bool]] = [
            text("status = 'sending'"),  # type: ignore[list-item]
            outbox.c.claimed_until < utcnow(),
        ]
        with self.engine.begin() as conn:
            failed: list[int] = []
            if max_errors is not None:
                failed = list(
                    conn.execute(
                        update(outbox)
                        .where(*expired, outbox.c.attempts >= max_errors)
                        .values(
                            status=Status.FAILED.value,
                            claimed_by=None,
                            claimed_until=None,
                            updated_at=utcnow(),
                            last_error=LEASE_GIVE_UP,
                        )
                        .returning(outbox.c.id)
                    ).scalars()
                )
                self._events(conn, failed, "failed", LEASE_GIVE_UP)
            reaped = list(
                conn.execute(
                    update(outbox)
                    .where(*expired)
                    .values(
                        status=self._waiting_status(),
                        claimed_by=None,
                        claimed_until=None,
                        updated_at=utcnow(),
                    )
                    .returning(outbox.c.id)
                ).scalars()
            )
            self._events(conn, reaped, "lease-expired", "the robot holding it stopped answering")
        return reaped, failed

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

    def _suppress(self, conn: Connection, address: str, reason: str, row_id: int | None) -> bool:
        """Add `address` (lower-cased) to the list; False if it was there already."""
        exists = conn.execute(
            select(suppression.c.address).where(suppression.c.address == address.lower())
        ).first()
        if exists is not None:
            return False
        conn.execute(
            insert(suppression).values(address=address.lower(), reason=reason, outbox_id=row_id)
        )
        return True

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
            files, sizes = self._attachments(conn, [row_id])
            return OutboxRow.from_mapping(found, files.get(row_id, ()), sizes.get(row_id, 0))

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

    def depth(self) -> tuple[dict[str, int], int]:
        """Rows per status and the number of waiting rows that are due: for the metrics."""
        with self.engine.connect() as conn:
            due = conn.execute(
                select(func.count()).where(WAITING, self.due_at() <= utcnow())
            ).scalar_one()
            return self._counts(conn), int(due)

    def counts(self) -> dict[str, int]:
        """Number of rows in each status."""
        with self.engine.connect() as conn:
            return self._counts(conn)

    @staticmethod
    def _counts(conn: Connection, *where: ColumnElement[bool]) -> dict[str, int]:
        query = select(outbox.c.status, func.count()).where(*where).group_by(outbox.c.status)
        return {status: count for status, count in conn.execute(query)}

    # -- operator control ----------------------------------------------------------------

    def transition(
        self,
        verb: str,
        *,
        ids: Sequence[int] = (),
        batch: str | None = None,
        statuses: Sequence[str] = (),
        reason: str = "by the operator",
    ) -> Change:
        """Apply an operator `verb` (retract, hold, release, retry) to rows `ids`, to every
        row of `batch`, or to every row in `statuses`: one conditional UPDATE, so that a row
        a robot claims at the same moment is either changed or claimed, never both."""
        move = TRANSITIONS[verb]
        chosen: list[ColumnElement[bool]] = []
        if ids:
            chosen.append(outbox.c.id.in_(list(ids)))
        if batch is not None:
            chosen.append(outbox.c.batch == batch)
        if statuses:
            chosen.append(outbox.c.status.in_(list(statuses)))
        if not chosen:
            raise ValueError("transition needs ids, a batch or statuses")
        with self.engine.begin() as conn:
            changed = list(
                conn.execute(
                    update(outbox)
                    .where(*chosen, outbox.c.status.in_(move.sources))
                    .values(**move.values, updated_at=utcnow())
                    .returning(outbox.c.id)
                ).scalars()
            )
            self._events(conn, changed, move.event, reason)
            if changed and move.values["status"] == Status.PENDING.value:
                self.statements.wake_robots(conn)
            chosen_rows = conn.execute(
                select(outbox.c.id, outbox.c.status).where(*chosen).order_by(outbox.c.id)
            )
            done = set(changed)
            unchanged: list[tuple[int, str]] = []
            too_late: list[tuple[int, str]] = []
            for row_id, status in chosen_rows:
                if row_id not in done:
                    (unchanged if status in move.already else too_late).append((row_id, status))
        missing = sorted(set(ids) - set(changed) - {i for i, _ in unchanged + too_late})
        too_late += [(row_id, "missing") for row_id in missing]
        return Change(sorted(changed), unchanged, too_late)

    def status(self, batch: str | None = None) -> QueueStatus:
        """Counts per status, the due backlog and its spread, and the recent sending rate,
        of the whole outbox or of one batch."""
        of_batch = [outbox.c.batch == batch] if batch is not None else []
        waiting = select(self.due_at().label("due_at")).where(WAITING, *of_batch).subquery()
        with self.engine.connect() as conn:
            now = conn.execute(select(utcnow())).scalar_one()
            counts = self._counts(conn, *of_batch)
            due, later, next_due, last_due = conn.execute(
                select(
                    func.count().filter(waiting.c.due_at <= now),
                    func.count().filter(waiting.c.due_at > now),
                    func.min(waiting.c.due_at).filter(waiting.c.due_at > now),
                    func.max(waiting.c.due_at),
                )
            ).one()
            recent = conn.execute(
                select(func.count()).where(
                    *of_batch,
                    outbox.c.status == Status.SENT.value,
                    outbox.c.sent_at >= self.statements.now_plus(-RECENT_SECONDS),
                )
            ).scalar_one()
        return QueueStatus(
            now=now,
            counts=counts,
            due=due,
            later=later,
            next_due=_as_time(next_due),
            last_due=_as_time(last_due),
            sent_recently=recent,
            sending=counts.get(Status.SENDING.value, 0),
        )

    # -- suppression list ------------------------------------------------------------------

    def suppress(self, address: str, reason: str) -> bool:
        """Add `address` (lower-cased); False if it was already there."""
        with self.engine.begin() as conn:
            return self._suppress(conn, address, reason, None)

    def unsuppress(self, address: str) -> bool:
        """Remove `address`; False if it was not there."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(suppression).where(suppression.c.address == address.lower())
            ).rowcount
        return bool(gone)

    def suppressed(self, limit: int | None = None) -> list[tuple[str, str | None, datetime]]:
        """The suppression list, newest first: (address, reason, since)."""
        query = select(
            suppression.c.address, suppression.c.reason, suppression.c.created_at
        ).order_by(suppression.c.created_at.desc(), suppression.c.address)
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query.limit(limit))]

    # -- housekeeping ------------------------------------------------------------------------

    def purge_finished(self, retention_days: float, chunk: int = PURGE_CHUNK) -> int:
        """Delete finished rows last changed more than `retention_days` ago, `chunk` rows per
        transaction so that no lock is held for long. Their events and files go with them."""
        if retention_days <= 0:
            return 0
        old = (
            select(outbox.c.id)
            .where(
                outbox.c.status.in_(FINISHED),
                outbox.c.updated_at < self.statements.now_plus(-retention_days * 86400),
            )
            .limit(chunk)
        )
        purged = 0
        while True:
            with self.engine.begin() as conn:
                ids = list(conn.execute(old).scalars())
                if ids:
                    conn.execute(delete(outbox_event).where(outbox_event.c.outbox_id.in_(ids)))
                    conn.execute(
                        delete(outbox_attachment).where(outbox_attachment.c.outbox_id.in_(ids))
                    )
                    conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))
            purged += len(ids)
            if len(ids) < chunk:
                return purged

    def fail_unschedulable(self) -> list[int]:
        """Fail waiting rows whose times cannot be read (a host wrote text that is not a
        time into created_at or send_after on SQLite): they would never become due.
        PostgreSQL's timestamptz columns cannot hold such text: nothing to look for."""
        if not self.statements.times_can_be_unreadable:
            return []
        with self.engine.begin() as conn:
            failed = list(
                conn.execute(
                    update(outbox)
                    .where(WAITING, self.due_at().is_(None))
                    .values(
                        status=Status.FAILED.value,
                        updated_at=utcnow(),
                        last_error=UNSCHEDULABLE,
                    )
                    .returning(outbox.c.id)
                ).scalars()
            )
            self._events(conn, failed, "failed", UNSCHEDULABLE)
        return failed

    # -- delivery status notifications ------------------------------------------------------

    def record_dsn(
        self,
        failures: Sequence[tuple[str, str, str | None, int | None, bool]],
        *,
        row_id: int | None = None,
        message_id: str | None = None,
        reporter: str | None = None,
    ) -> tuple[int, bool] | None:
        """Apply the permanent failures of a delivery status notification to the row it is
        about. Each failure is (address, status, diagnostic, smtp_code, suppress).

        The row is `row_id` (from a VERP address) unless its Message-ID contradicts
        `message_id`, else the row whose Message-ID is `message_id`. A `sent` row becomes
        `bounced` when a failure is about its own recipient (a cc or bcc alone only goes into
        the history); a row in any other state only gets the history lines. An address whose
        failure says to suppress it (5.1.x) is suppressed. Returns (row id, whether the row
        became bounced), or None when no row matches.
        """
        if not failures or (row_id is None and not message_id):
            return None
        columns = (
            outbox.c.id,
            outbox.c.status,
            outbox.c.recipient,
            outbox.c.cc,
            outbox.c.bcc,
            outbox.c.message_id,
        )
        with self.engine.begin() as conn:
            found = None
            if row_id is not None:
                found = conn.execute(select(*columns).where(outbox.c.id == row_id)).first()
                if found is not None and message_id and found.message_id not in (None, message_id):
                    found = None  # the VERP id names another message: go by the Message-ID
            if found is None and message_id:
                by_id = select(*columns).where(outbox.c.message_id == message_id).limit(1)
                # The robot's own Message-IDs start with the row id: a primary-key look-up.
                own_form = re.match(r"<(\d{1,18})\.", message_id)
                if own_form:
                    found = conn.execute(by_id.where(outbox.c.id == int(own_form[1]))).first()
                if found is None:
                    found = conn.execute(by_id).first()
            if found is None:
                return None
            to = {a.lower() for _, a in getaddresses([found.recipient or ""]) if a}
            copies = {a.lower() for _, a in getaddresses([found.cc or "", found.bcc or ""]) if a}
            about_row = [f for f in failures if f[0].lower() in to or f[0].lower() not in copies]
            source = "delivery status notification" + (f" from {reporter}" if reporter else "")
            changed = False
            if about_row:
                address, status, diagnostic, code, _ = about_row[0]
                reply = f"{status} {diagnostic}" if diagnostic else status
                changed = bool(
                    conn.execute(
                        update(outbox)
                        .where(outbox.c.id == found.id, outbox.c.status == Status.SENT.value)
                        .values(
                            status=Status.BOUNCED.value,
                            smtp_code=code,
                            smtp_reply=reply,
                            last_error=f"{address}: {reply} ({source})",
                            updated_at=utcnow(),
                        )
                    ).rowcount
                )
            for address, status, diagnostic, code, suppress in failures:
                reply = f"{status} {diagnostic}" if diagnostic else status
                conn.execute(
                    insert(outbox_event).values(
                        outbox_id=found.id,
                        kind="bounced" if changed else "dsn",
                        smtp_code=code,
                        detail=f"{address}: {reply} ({source})",
                    )
                )
                if suppress:
                    self._suppress(conn, address, f"bounced ({source}): {reply}", found.id)
        return int(found.id), changed


def outbox_for(settings: Settings, engine: Engine) -> Outbox:
    """The gateway with the grace, lease and size limits of `settings`."""
    return Outbox(
        engine,
        grace_seconds=settings.robot.grace_minutes * 60,
        lease_seconds=settings.robot.lease_seconds,
        max_body_bytes=int(settings.robot.max_body_mb * MIB),
        max_attachment_bytes=int(settings.attachments.max_mb * MIB),
    )


def _as_time(value: Any) -> datetime | None:
    """A time from an aggregate: SQLite hands back its text form."""
    if value is None or isinstance(value, datetime):
        return value
    return UTCDateTime().process_result_value(value, None)  # type: ignore[arg-type]
