"""The host's and operator's side of the outbox: enqueue, look at rows and the queue, change
rows' states, the suppression list, retention, and delivery status notifications. The due
rule and every timestamp use the database clock."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from robot.config import Settings
from robot.outbox.engine import reconnecting
from robot.outbox.rows import RECENT_SECONDS, Attachment, Change, Event, OutboxRow, QueueStatus
from robot.outbox.schema import (
    FINISHED,
    Status,
    UTCDateTime,
    outbox,
    outbox_attachment,
    outbox_event,
    suppression,
    utcnow,
)
from robot.outbox.shared import (
    MIB,
    WAITING,
    OutboxTables,
    insert_events,
    insert_suppression,
)

PURGE_CHUNK = 500  # rows deleted per transaction by the retention job
UNSCHEDULABLE = "{column} is not a time the database can read"


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


class Operations(OutboxTables):
    """The host's and operator's side of the outbox tables (and the robot's housekeeping)."""

    # -- rows in, rows out ---------------------------------------------------------------

    def enqueue(self, fields: dict[str, Any], attachments: Sequence[Attachment] = ()) -> int:
        """Insert one row (and its attachments), as a host application would; returns its id."""
        with self.engine.begin() as conn:
            # The key the database gave (RETURNING, or the driver's last insert id on
            # MariaDB/MySQL, which have no INSERT ... RETURNING all alike).
            inserted = conn.execute(insert(outbox).values(**fields)).inserted_primary_key
            assert inserted is not None  # a single-row INSERT always has its key
            row_id = int(inserted[0])
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

    @reconnecting
    def get(self, row_id: int) -> OutboxRow | None:
        """One row with its attachments, or None."""
        with self.reading() as conn:
            found = (
                conn.execute(select(*self.readable_columns()).where(outbox.c.id == row_id))
                .mappings()
                .first()
            )
            if found is None:
                return None
            files, sizes = self._attachments(conn, [row_id])
            return OutboxRow.from_mapping(found, files.get(row_id, ()), sizes.get(row_id, 0))

    @reconnecting
    def history(self, row_id: int) -> list[Event]:
        """A row's events, oldest first."""
        query = (
            select(outbox_event)
            .where(outbox_event.c.outbox_id == row_id)
            .order_by(outbox_event.c.id)
        )
        with self.reading() as conn:
            return [
                Event(r["at"], r["kind"], r["smtp_code"], r["detail"])
                for r in conn.execute(query).mappings()
            ]

    @reconnecting
    def rows(
        self, *, status: str | None = None, batch: str | None = None, limit: int = 50
    ) -> tuple[datetime, list[tuple[OutboxRow, datetime]]]:
        """The database's now and rows (newest first) with the time each is or was due."""
        due_at = self.statements.readable_time(self.due_at())
        query = select(*self.readable_columns(), due_at.label("due_at")).order_by(
            outbox.c.id.desc()
        )
        if status:
            query = query.where(outbox.c.status == status)
        if batch:
            query = query.where(outbox.c.batch == batch)
        with self.reading() as conn:
            now = conn.execute(select(utcnow())).scalar_one()
            found = conn.execute(query.limit(limit)).mappings().all()
        return now, [(OutboxRow.from_mapping(r), r["due_at"]) for r in found]

    # -- the queue in numbers ------------------------------------------------------------

    @reconnecting
    def depth(self) -> tuple[dict[str, int], int]:
        """Rows per status and the number of waiting rows that are due: for the metrics."""
        with self.reading() as conn:
            due = conn.execute(
                select(func.count()).where(WAITING, self.due_at() <= utcnow())
            ).scalar_one()
            return self._counts(conn), int(due)

    @reconnecting
    def counts(self) -> dict[str, int]:
        """Number of rows in each status."""
        with self.reading() as conn:
            return self._counts(conn)

    @staticmethod
    def _counts(conn: Connection, *where: ColumnElement[bool]) -> dict[str, int]:
        query = select(outbox.c.status, func.count()).where(*where).group_by(outbox.c.status)
        return {status: count for status, count in conn.execute(query)}

    @reconnecting
    def status(self, batch: str | None = None) -> QueueStatus:
        """Counts per status, the due backlog and its spread, and the recent sending rate,
        of the whole outbox or of one batch."""
        of_batch = [outbox.c.batch == batch] if batch is not None else []
        waiting = (
            select(
                self.due_at().label("due_at"),
                func.coalesce(outbox.c.account, "default").label("account"),
            )
            .where(WAITING, *of_batch)
            .subquery()
        )
        readable = self.statements.readable_time
        with self.reading() as conn:
            now = conn.execute(select(utcnow())).scalar_one()
            counts = self._counts(conn, *of_batch)
            # One pass over the waiting rows, by account: rows of a paused account wait.
            # count(CASE ...) rather than FILTER (WHERE ...): MariaDB/MySQL have no FILTER.
            by_account = conn.execute(
                select(
                    waiting.c.account,
                    func.count(case((waiting.c.due_at <= now, 1))),
                    func.count(case((waiting.c.due_at > now, 1))),
                    readable(func.min(case((waiting.c.due_at > now, waiting.c.due_at)))),
                    readable(func.max(waiting.c.due_at)),
                ).group_by(waiting.c.account)
            ).all()
            due_by_account = {str(r[0]): int(r[1]) for r in by_account if r[1]}
            due = sum(int(r[1]) for r in by_account)
            later = sum(int(r[2]) for r in by_account)
            next_due = min((t for r in by_account if (t := _as_time(r[3]))), default=None)
            last_due = max((t for r in by_account if (t := _as_time(r[4]))), default=None)
            recent, first_sent = conn.execute(
                select(func.count(), readable(func.min(outbox.c.sent_at))).where(
                    *of_batch,
                    outbox.c.status == Status.SENT.value,
                    outbox.c.sent_at >= self.statements.now_plus(-RECENT_SECONDS),
                )
            ).one()
        return QueueStatus(
            now=now,
            counts=counts,
            due=due,
            later=later,
            next_due=next_due,
            last_due=last_due,
            sent_recently=recent,
            sending=counts.get(Status.SENDING.value, 0),
            first_sent_recently=_as_time(first_sent),
            due_by_account=due_by_account,
        )

    # -- operator control ----------------------------------------------------------------

    @reconnecting
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
            changed = self.statements.update_ids(
                conn,
                [*chosen, outbox.c.status.in_(move.sources)],
                {**move.values, "updated_at": utcnow()},
            )
            insert_events(conn, changed, move.event, reason)
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

    # -- suppression list ------------------------------------------------------------------

    @reconnecting
    def suppress(self, address: str, reason: str) -> bool:
        """Add `address` (lower-cased); False if it was already there."""
        with self.engine.begin() as conn:
            return insert_suppression(conn, address, reason, None)

    @reconnecting
    def unsuppress(self, address: str) -> bool:
        """Remove `address`; False if it was not there."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(suppression).where(suppression.c.address == address.lower())
            ).rowcount
        return bool(gone)

    @reconnecting
    def suppressed(self, limit: int | None = None) -> list[tuple[str, str | None, datetime]]:
        """The suppression list, newest first: (address, reason, since)."""
        query = select(
            suppression.c.address, suppression.c.reason, suppression.c.created_at
        ).order_by(suppression.c.created_at.desc(), suppression.c.address)
        with self.reading() as conn:
            return [tuple(r) for r in conn.execute(query.limit(limit))]

    @reconnecting
    def is_suppressed(self, addresses: Iterable[str]) -> list[str]:
        """The addresses among `addresses` that are in the suppression list."""
        wanted = {a.lower() for a in addresses}
        if not wanted:
            return []
        with self.reading() as conn:
            found = conn.execute(
                select(suppression.c.address).where(suppression.c.address.in_(wanted))
            ).scalars()
            return sorted(found)

    # -- housekeeping ------------------------------------------------------------------------

    @reconnecting
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

    @reconnecting
    def fail_unschedulable(self) -> list[int]:
        """Fail waiting rows whose times cannot be read (a host wrote text that is not a
        time into created_at, send_after or next_attempt_at on SQLite): they would never
        become due. PostgreSQL's timestamptz columns cannot hold such text: nothing to do."""
        if not self.statements.times_can_be_unreadable:
            return []
        failed: list[int] = []
        with self.engine.begin() as conn:
            for column in (outbox.c.created_at, outbox.c.send_after, outbox.c.next_attempt_at):
                reason = UNSCHEDULABLE.format(column=column.name)
                found = self.statements.update_ids(
                    conn,
                    [WAITING, self.due_at().is_(None), self.statements.unreadable_time(column)],
                    {"status": Status.FAILED.value, "updated_at": utcnow(), "last_error": reason},
                )
                insert_events(conn, found, "failed", reason)
                failed += found
        return failed

    # -- delivery status notifications ------------------------------------------------------

    @reconnecting
    def record_dsn(
        self,
        failures: Sequence[DsnFailure],
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
        failure says to suppress it (5.1.x) is suppressed. A failure the row's history holds
        already (the same report read twice, by two robots on one mailbox) changes nothing.
        Returns (row id, whether the row became bounced), or None when no row matches.
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
        # The row is locked (PostgreSQL; SQLite's BEGIN IMMEDIATE locks it all) so that a
        # second robot with the same report waits, then finds the lines it would add.
        row = select(*columns).with_for_update()
        with self.engine.begin() as conn:
            found = None
            if row_id is not None:
                found = conn.execute(row.where(outbox.c.id == row_id)).first()
                if found is not None and message_id and found.message_id not in (None, message_id):
                    found = None  # the VERP id names another message: go by the Message-ID
            if found is None and message_id:
                by_id = row.where(outbox.c.message_id == message_id).limit(1)
                # The robot's own Message-IDs start with the row id: a primary-key look-up.
                own_form = re.match(r"<(\d{1,18})\.", message_id)
                if own_form:
                    found = conn.execute(by_id.where(outbox.c.id == int(own_form[1]))).first()
                if found is None:
                    found = conn.execute(by_id).first()
            if found is None:
                return None
            source = "delivery status notification" + (f" from {reporter}" if reporter else "")
            failures = _not_recorded(conn, found.id, failures, source)
            if not failures:
                return int(found.id), False
            to = {a.lower() for _, a in getaddresses([found.recipient or ""]) if a}
            copies = {a.lower() for _, a in getaddresses([found.cc or "", found.bcc or ""]) if a}
            about_row = [f for f in failures if f[0].lower() in to or f[0].lower() not in copies]
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
                conn.execute(
                    insert(outbox_event).values(
                        outbox_id=found.id,
                        kind="bounced" if changed else "dsn",
                        smtp_code=code,
                        detail=_dsn_detail(address, status, diagnostic, source),
                    )
                )
                if suppress:
                    reply = f"{status} {diagnostic}" if diagnostic else status
                    insert_suppression(conn, address, f"bounced ({source}): {reply}", found.id)
        return int(found.id), changed

    # -- the operators' console (robot/web): filtered pages by id, counts -------------------
    # A filter is status, batch, account (exact) and text (found in the recipient or the
    # subject, any case). Pages go by id (keyset): `before` is the smallest id of the page
    # shown, so a page costs the same however deep it is.

    @staticmethod
    def console_filter(
        *,
        status: str | None = None,
        batch: str | None = None,
        account: str | None = None,
        text: str | None = None,
        walk_ids: bool = False,
    ) -> list[ColumnElement[bool]]:
        """The conditions of a console filter (none for an empty one). With `walk_ids` the
        status is compared so that no index on it is used: for a status of many rows, walking
        the ids down and skipping the others beats sorting all of that status's rows."""
        where: list[ColumnElement[bool]] = []
        if status:
            where.append((outbox.c.status.concat("") if walk_ids else outbox.c.status) == status)
        if batch:
            where.append(outbox.c.batch == batch)
        if account:
            if account == "default":
                where.append(or_(outbox.c.account.is_(None), outbox.c.account == "default"))
            else:
                where.append(outbox.c.account == account)
        if text:
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"
            where.append(
                or_(
                    outbox.c.recipient.ilike(pattern, escape="\\"),
                    outbox.c.subject.ilike(pattern, escape="\\"),
                )
            )
        return where

    def page(
        self, where: Sequence[ColumnElement[bool]], *, before: int | None = None, limit: int = 50
    ) -> tuple[datetime, list[tuple[OutboxRow, datetime | None]]]:
        """The database's now and up to `limit` rows matching `where` with ids below `before`,
        newest first, each with the time it is or was due."""
        query = select(outbox, self.due_at().label("due_at")).where(*where)
        if before is not None:
            query = query.where(outbox.c.id < before)
        query = query.order_by(outbox.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            now = conn.execute(select(utcnow())).scalar_one()
            found = conn.execute(query).mappings().all()
        return now, [(OutboxRow.from_mapping(r), _as_time(r["due_at"])) for r in found]

    def leaving_soon(
        self, where: Sequence[ColumnElement[bool]], *, limit: int = 50
    ) -> list[tuple[OutboxRow, datetime]]:
        """Waiting rows matching `where` that are not due yet (in their grace window or sent
        later), soonest first, with the time each becomes due."""
        due_at = self.due_at()
        query = (
            select(outbox, due_at.label("due_at"))
            .where(WAITING, due_at > utcnow(), *where)
            .order_by(due_at, outbox.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).mappings().all()
        return [(OutboxRow.from_mapping(r), r["due_at"]) for r in found]

    def counts_where(self, where: Sequence[ColumnElement[bool]]) -> dict[str, int]:
        """Number of rows matching `where` in each status."""
        with self.engine.connect() as conn:
            return self._counts(conn, *where)

    def left_where(
        self,
        where: Sequence[ColumnElement[bool]],
        statuses: Sequence[str],
        *,
        besides: Sequence[int] = (),
        limit: int,
    ) -> list[tuple[int, str]]:
        """(id, status), oldest first, of at most `limit` rows matching `where` whose status
        is none of `statuses` and whose id is not in `besides`: the rows of a filter that
        had left before an action on it was confirmed."""
        query = (
            select(outbox.c.id, outbox.c.status)
            .where(*where, outbox.c.status.not_in(list(statuses)))
            .order_by(outbox.c.id)
            .limit(limit + len(besides))
        )
        skip = set(besides)
        with self.engine.connect() as conn:
            found = [(int(i), str(s)) for i, s in conn.execute(query) if i not in skip]
        return found[:limit]

    def ids_where(
        self, where: Sequence[ColumnElement[bool]], statuses: Sequence[str], *, limit: int
    ) -> list[int]:
        """The ids (oldest first, at most `limit`) of rows matching `where` whose status is
        one of `statuses`."""
        query = (
            select(outbox.c.id)
            .where(*where, outbox.c.status.in_(list(statuses)))
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [int(i) for i in conn.execute(query).scalars()]


DsnFailure = tuple[str, str, str | None, int | None, bool]
DSN_KINDS = ("bounced", "dsn")  # the history lines record_dsn writes


def _dsn_detail(address: str, status: str, diagnostic: str | None, source: str) -> str:
    """The history line of one failure of a delivery status notification."""
    reply = f"{status} {diagnostic}" if diagnostic else status
    return f"{address}: {reply} ({source})"


def _not_recorded(
    conn: Connection, row_id: int, failures: Sequence[DsnFailure], source: str
) -> list[DsnFailure]:
    """The failures that row `row_id`'s history does not hold yet (once each)."""
    seen = {
        (detail, code)
        for detail, code in conn.execute(
            select(outbox_event.c.detail, outbox_event.c.smtp_code).where(
                outbox_event.c.outbox_id == row_id, outbox_event.c.kind.in_(DSN_KINDS)
            )
        )
    }
    fresh = []
    for failure in failures:
        key = (_dsn_detail(*failure[:3], source), failure[3])
        if key not in seen:
            seen.add(key)
            fresh.append(failure)
    return fresh


def operations_for(settings: Settings, engine: Engine) -> Operations:
    """The host's and operator's side with the grace and attachment limit of `settings`."""
    return Operations(
        engine,
        grace_seconds=settings.robot.grace_minutes * 60,
        max_attachment_bytes=int(settings.attachments.max_mb * MIB),
    )


def _as_time(value: Any) -> datetime | None:
    """A time from an aggregate: SQLite hands back its text form."""
    if value is None or isinstance(value, datetime):
        return value
    return UTCDateTime().process_result_value(value, None)  # type: ignore[arg-type]
