"""The robot's side of the outbox: claim due rows under a lease, renew, release or reap
leases, and record how each attempt ended. Claiming is atomic: PostgreSQL and MariaDB/MySQL
`FOR UPDATE SKIP LOCKED`, SQLite one `BEGIN IMMEDIATE` write transaction."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    case,
    func,
    insert,
    literal,
    select,
    text,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import NullType

from robot.outbox.account_states import operator_paused_now
from robot.outbox.dialects import NotAllLeased
from robot.outbox.engine import reconnecting
from robot.outbox.message_ids import MessageIds
from robot.outbox.rows import NOT_RETURNED_BY_CLAIM, Decision, Finish, HistoryLine, OutboxRow
from robot.outbox.schema import Status, account_state, outbox, outbox_event, utcnow
from robot.outbox.shared import (
    MIB,
    WAITING,
    OutboxTables,
    insert_events,
    insert_suppression,
)

LEASE_CHUNK = 500  # SQLite, MariaDB/MySQL: claimed rows leased, or history lines, by one statement
LEASE_GIVE_UP = (
    "the robot sending it stopped answering on every attempt (lease expired); "
    "it may have been delivered before that: check before `email-robot retry`"
)
CLAIM_ORDER = (outbox.c.priority.desc(), outbox.c.created_at, outbox.c.id)
FROM_HEAD_EVERY = 1.0  # seconds: a claim starts from the head of the queue at least this often


def _text(value: object) -> str | None:
    """A text column's value when it is text (SQLite may hold bytes)."""
    return value if isinstance(value, str) else None


class ResumePoint(NamedTuple):
    """The claim order's key of the last row a claim leased. On PostgreSQL the next claim
    starts there (an index bound on ix_outbox_queue: this priority, then after this
    created_at and id) rather than at the head of the queue: the rows claimed before leave
    dead entries at the head of the index until vacuum, and a claim from the head steps
    over all of them (6 of a claim's 7 ms in mid-drain at a million rows). A claim from the
    head still runs at least every FROM_HEAD_EVERY seconds and whenever the resumed one
    comes up short; and a due row of a higher priority makes the resumed claim lease
    nothing. A row of the same priority that becomes due behind the point (a retry, a row
    given back, one scheduled or written with an older created_at) thus waits at most
    FROM_HEAD_EVERY longer."""

    priority: int
    created_at: datetime
    id: int


class ClaimRef(NamedTuple):
    """A row just leased, before it is read whole; with its place in the claim order when
    the claim resumes (PostgreSQL: created_at None when Python cannot hold the time)."""

    id: int
    account: str | None
    sender: str | None
    message_id: str | None
    priority: int | None = None
    created_at: datetime | None = None


class Claims(OutboxTables):
    """The robot's side of the outbox tables: leases, and the outcomes of attempts."""

    def __init__(
        self,
        engine: Engine,
        *,
        grace_seconds: float,
        lease_seconds: float,
        max_body_bytes: int = 10 * MIB,
        max_attachment_bytes: int = 10 * MIB,
    ) -> None:
        super().__init__(
            engine, grace_seconds=grace_seconds, max_attachment_bytes=max_attachment_bytes
        )
        self.lease_seconds = lease_seconds
        self.max_body_bytes = max_body_bytes
        self._lease_sql_cache: dict[int, str] = {}
        self._read_queries: dict[int, Select[Any]] = {}  # _read_query, by max_body_bytes
        self._resume: ResumePoint | None = None  # where the last claim ended (PostgreSQL)
        self._from_head_at = 0.0  # time.monotonic() of the last claim from the queue's head

    # -- claiming ----------------------------------------------------------------------

    @reconnecting
    def claim(
        self,
        worker: str,
        limit: int,
        message_ids: MessageIds,
        exclude_accounts: Sequence[str] = (),
        only_account: str | None = None,
    ) -> list[OutboxRow]:
        """Lease up to `limit` due rows to `worker`, best first; fix their Message-IDs.

        Rows of `exclude_accounts` ("default" for NULL) are left alone: those accounts are
        paused after a transport fault, or waiting for their rate; so are the rows of
        accounts an operator paused (account_state). With `only_account`, only rows of that
        account are leased (a rate-limited account's next few).
        """
        account = func.coalesce(outbox.c.account, "default")
        due: list[ColumnElement[bool] | TextClause] = [WAITING]
        # The accounts left out first: a row of one is stepped over in the index
        # (ix_outbox_queue ends with the account) before its due time is worked out.
        if exclude_accounts:
            due.append(account.not_in(exclude_accounts))
        if only_account is not None:
            due.append(account == only_account)
        due.append(self.due_at() <= utcnow())
        # An operator's pause counts from the moment it is written (a small table).
        due.append(account.not_in(select(account_state.c.account).where(operator_paused_now())))
        resumes = self.statements.resumes_claims and only_account is None
        columns: list[ColumnElement[Any]] = [
            outbox.c.id,
            outbox.c.account,
            outbox.c.sender,
            outbox.c.message_id,
        ]
        if resumes:  # what the next claim resumes from; NULL for a time Python cannot hold
            columns += [outbox.c.priority, self.statements.readable_time(outbox.c.created_at)]
        pick = select(*columns).where(*due).order_by(*CLAIM_ORDER).limit(limit)
        resumed = self._resumed(pick, due) if resumes else None
        # Two transactions, so that SQLite's write lock is held only for the first: lease
        # the rows and fix their Message-IDs (pick, then one UPDATE: one new version of
        # each row), then read what sending needs (a read, which WAL runs beside writers).
        with self.statements.one_writer():
            picked = self.statements.with_lenient_retry(
                self.engine.begin,
                lambda conn: self._lease_in_order(conn, pick, resumed, limit, worker, message_ids),
            )
        if resumes:  # after a row whose created_at Python cannot hold, from the head again
            last = picked[-1] if picked else None
            if last is None or last.priority is None or last.created_at is None:
                self._resume = None
            else:
                self._resume = ResumePoint(last.priority, last.created_at, last.id)
        if not picked:
            return []
        leased = [r.id for r in picked]
        try:
            rows = self._read_leased(leased)
        except SQLAlchemyError:
            self.release(leased, worker, "reading the claimed rows failed")
            raise
        # In the order of the pick (CLAIM_ORDER): the database compares what Python cannot
        # (a priority a host wrote as text, a time it cannot read).
        order = {row_id: n for n, row_id in enumerate(leased)}
        rows.sort(key=lambda r: order[r.id])
        return rows

    def _resumed(
        self, pick: Select[Any], due: list[ColumnElement[bool] | TextClause]
    ) -> Select[Any] | None:
        """PostgreSQL: `pick` from where the last claim ended rather than from the head of
        the queue (see ResumePoint); it picks nothing while a due row of a higher priority
        waits. None when a claim from the head is due."""
        point = self._resume
        if point is None or time.monotonic() - self._from_head_at >= FROM_HEAD_EVERY:
            return None
        higher = (
            select(outbox.c.id)
            .where(*due, outbox.c.priority > point.priority)
            .limit(1)
            .correlate(None)  # its own outbox, not the pick's row
        )
        return pick.where(
            outbox.c.priority == point.priority,
            tuple_(outbox.c.created_at, outbox.c.id)
            > tuple_(
                literal(point.created_at, outbox.c.created_at.type),
                literal(point.id, outbox.c.id.type),  # bigint: not the int a Python int binds as
            ),
            ~higher.exists(),
        )

    def _lease_in_order(
        self,
        conn: Connection,
        pick: Select[Any],
        resumed: Select[Any] | None,
        limit: int,
        worker: str,
        message_ids: MessageIds,
    ) -> list[ClaimRef]:
        """Lease the rows of `resumed`, then, if they are fewer than the limit, more from
        the head of the queue with `pick`, in one transaction (rows this one leased are no
        longer waiting in it); the rows picked, in claim order."""
        picked = [] if resumed is None else self._lease(conn, resumed, worker, message_ids)
        if len(picked) == limit:
            return picked
        self._from_head_at = time.monotonic()
        more = self._lease(conn, pick.limit(limit - len(picked)), worker, message_ids)
        if not picked:
            return more
        # Of one priority, the head's rows came due behind the point: they go first; each
        # part keeps its own order (the database's: created_at may be '-infinity').
        parts = [(ref, 1) for ref in picked] + [(ref, 0) for ref in more]
        parts.sort(key=lambda part: (-(part[0].priority or 0), part[1]))
        return [ref for ref, _ in parts]

    def _lease(
        self,
        conn: Connection,
        pick: Select[Any],
        worker: str,
        message_ids: MessageIds,
    ) -> list[ClaimRef]:
        """Pick rows with `pick` (locked), lease them to `worker` with their Message-IDs in
        one UPDATE, and write their claimed events; the rows, in claim order."""
        refs = [ClaimRef(*r) for r in self.statements.pick_for_claim(conn, pick)]
        if not refs:
            return []
        # A row keeps the Message-ID it has (the statement does not write it again: it may
        # be a value the driver cannot send).
        message_id = [
            None if r.message_id else message_ids.for_row(r.id, _text(r.account), _text(r.sender))
            for r in refs
        ]
        in_one = self.statements.lease_all_sql(self.lease_seconds)
        if in_one is not None:  # PostgreSQL: the rows as arrays, whatever their number
            conn.exec_driver_sql(in_one, ([r.id for r in refs], message_id, worker, worker))
            return refs
        # One statement each for all rows (not executemany): this runs while the claim holds
        # its locks, and SQLite gives up the GIL, and waits to get it back, at every row.
        for start in range(0, len(refs), LEASE_CHUNK):
            chunk = refs[start : start + LEASE_CHUNK]
            pairs = zip([r.id for r in chunk], message_id[start : start + LEASE_CHUNK], strict=True)
            conn.exec_driver_sql(
                self._lease_sql(len(chunk)), (*(v for pair in pairs for v in pair), worker)
            )
            conn.exec_driver_sql(
                self.statements.claimed_events_sql(len(chunk)),
                tuple(value for r in chunk for value in (r.id, worker)),
            )
        return refs

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
        query = self._read_query()
        return self.statements.with_lenient_retry(
            self.reading, lambda conn: self._rows_with_files(conn, query, ids)
        )

    def _read_query(self) -> Select[Any]:
        """The SELECT of leased rows (their ids the parameter "ids"), built once per body
        limit (a SIGHUP may change it): a claim's rows cost less Python than its query."""
        query = self._read_queries.get(self.max_body_bytes)
        if query is None:
            query = select(*self._sized_columns()).where(self.statements.among(outbox.c.id, "ids"))
            self._read_queries = {self.max_body_bytes: query}
        return query

    def _rows_with_files(
        self, conn: Connection, query: Select[Any], ids: list[int]
    ) -> list[OutboxRow]:
        result = conn.execute(query, {"ids": ids})
        names = list(result.keys())
        # Plain dicts: a RowMapping looks up a column it lacks through an exception, and a
        # claim leaves out several (NOT_RETURNED_BY_CLAIM) of every row.
        found = [dict(zip(names, values, strict=True)) for values in result]
        files, sizes = self._attachments(conn, ids)
        return [OutboxRow.claimed(r, files.get(r["id"], ()), sizes.get(r["id"], 0)) for r in found]

    def _sized_columns(self) -> list[ColumnElement[Any]]:
        """The columns a claim returns: what sending needs (the robot's bookkeeping columns
        stay out, None in the row), bodies left out (NULL) when together over the limit."""
        octets = self.statements.octets
        size = octets(outbox.c.body_text) + octets(outbox.c.body_html)
        fits = size <= self.max_body_bytes
        return [
            *(
                # As stored: SQLAlchemy's Boolean takes 'no' (text in SQLite) for true.
                type_coerce(c, NullType()).label(c.name) if c.name == "transactional" else c
                for c in self.readable_columns()
                if c.name not in NOT_RETURNED_BY_CLAIM
            ),
            case((fits, outbox.c.body_text), else_=None).label("body_text"),
            case((fits, outbox.c.body_html), else_=None).label("body_html"),
            size.label("body_bytes"),
        ]

    # -- outcomes ----------------------------------------------------------------------

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

    @reconnecting
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
        with self.statements.one_writer():
            return self._finish_many(worker, outcomes)

    def _finish_many(self, worker: str, outcomes: Sequence[Finish]) -> list[bool]:
        alone = self.statements.finish_statement(worker, outcomes)
        if alone is not None:  # atomic on its own: no transaction
            with self.engine.connect() as conn:
                autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
                recorded = {row[0] for row in autocommit.exec_driver_sql(*alone)}
            return [o.row_id in recorded for o in outcomes]
        if not any(o.suppress for o in outcomes):  # the usual case: no suppression to add
            on_driver = self.statements.finish_on_driver(self.engine, worker, outcomes)
            if on_driver is not None:
                return [o.row_id in on_driver for o in outcomes]
        try:
            with self.engine.begin() as conn:
                recorded = self.statements.record_finishes(conn, worker, outcomes)
                self._suppress_bounced(conn, outcomes, recorded)
        except NotAllLeased:  # rolled back: again, looking at each row first
            with self.engine.begin() as conn:
                recorded = self.statements.record_finishes(conn, worker, outcomes, careful=True)
                self._suppress_bounced(conn, outcomes, recorded)
        return [o.row_id in recorded for o in outcomes]

    def finish_statement(
        self, worker: str, outcomes: Sequence[Finish]
    ) -> tuple[str, tuple[Any, ...]] | None:
        """PostgreSQL: the one statement (SQL, parameters) that records `outcomes` and
        returns the ids it recorded, for a driver connection in autocommit mode. None when
        finish_many must do it: on SQLite, or with history lines or suppressions to add in
        a transaction."""
        return self.statements.finish_statement(worker, outcomes)

    @staticmethod
    def _suppress_bounced(conn: Connection, outcomes: Sequence[Finish], recorded: set[int]) -> None:
        for o in outcomes:
            if o.row_id in recorded:
                for address, reason in o.suppress:
                    insert_suppression(conn, address, reason, o.row_id)

    def add_event(self, row_id: int, kind: str, detail: str, smtp_code: int | None = None) -> None:
        """Append a line to a row's history without changing the row."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(outbox_event).values(
                    outbox_id=row_id, kind=kind, smtp_code=smtp_code, detail=detail
                )
            )

    # -- leases ------------------------------------------------------------------------

    @reconnecting
    def release(self, ids: Sequence[int], worker: str, reason: str) -> int:
        """Give back claimed rows that were never tried; their attempt is not counted."""
        if not ids:
            return 0
        with self.engine.begin() as conn:
            released = self.statements.update_ids(
                conn,
                [
                    outbox.c.id.in_(list(ids)),
                    outbox.c.claimed_by == worker,
                    outbox.c.status == Status.SENDING.value,
                ],
                {
                    "status": self._waiting_status(),
                    "attempts": outbox.c.attempts - 1,
                    "claimed_by": None,
                    "claimed_until": None,
                    "updated_at": utcnow(),
                },
            )
            insert_events(conn, released, "unclaimed", reason)
        return len(released)

    @reconnecting
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

    @reconnecting
    def reap_expired(
        self,
        max_errors: int | None = None,
        worker: str | None = None,
        in_hand: Collection[int] = (),
    ) -> tuple[list[int], list[int]]:
        """Take back rows whose lease ran out (their robot died): they become due again, or
        `failed` once they have used `max_errors` attempts (a row that keeps killing robots
        must not kill them for ever). Returns (taken back, failed).

        Rows `in_hand` leased to `worker`, the reaping robot itself, are left alone even
        when their lease ran out (a write lock held longer than the lease kept the renewal
        out): that robot is sending them, and taking them back would send them twice.
        """
        expired: list[ColumnElement[bool]] = [
            text("status = 'sending'"),  # type: ignore[list-item]
            outbox.c.claimed_until < utcnow(),
        ]
        with self.engine.begin() as conn:
            if worker is not None and in_hand:
                ours = conn.execute(
                    select(outbox.c.id).where(*expired, outbox.c.claimed_by == worker)
                ).scalars()
                keep = sorted(set(ours) & set(in_hand))
                if keep:
                    expired.append(outbox.c.id.not_in(keep))
            failed: list[int] = []
            if max_errors is not None:
                failed = self.statements.update_ids(
                    conn,
                    [*expired, outbox.c.attempts >= max_errors],
                    {
                        "status": Status.FAILED.value,
                        "claimed_by": None,
                        "claimed_until": None,
                        "updated_at": utcnow(),
                        "last_error": LEASE_GIVE_UP,
                    },
                )
                insert_events(conn, failed, "failed", LEASE_GIVE_UP)
            reaped = self.statements.update_ids(
                conn,
                expired,
                {
                    "status": self._waiting_status(),
                    "claimed_by": None,
                    "claimed_until": None,
                    "updated_at": utcnow(),
                },
            )
            insert_events(conn, reaped, "lease-expired", "the robot holding it stopped answering")
        return reaped, failed

    @staticmethod
    def _waiting_status() -> ColumnElement[str]:
        return case(
            (outbox.c.next_attempt_at.is_(None), Status.PENDING.value),
            else_=Status.DEFERRED.value,
        )
