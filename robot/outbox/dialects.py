"""Everything in the outbox's SQL that differs between SQLite, PostgreSQL and MariaDB/MySQL:
one statements object per database (clock, due rule, sizes, the claim's lock, lease and finish
SQL, updates that say which rows they changed, wake-ups), so that claims.py and operations.py
never ask which database they are on.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    LargeBinary,
    Select,
    and_,
    any_,
    bindparam,
    case,
    cast,
    false,
    func,
    insert,
    literal_column,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.sql.elements import TextClause

from robot.outbox.engine import lenient_text
from robot.outbox.rows import Finish
from robot.outbox.schema import (
    MYSQL,
    MYSQL_QUEUE_COLUMN,
    Status,
    UTCDateTime,
    outbox,
    outbox_event,
)

SQLITE_TIME = "%Y-%m-%d %H:%M:%f"
NOTIFY_CHANNEL = "email_robot_outbox"  # migration 0002's trigger notifies it on INSERT
FINISH_CHUNK = 100  # SQLite: outcomes recorded by one UPDATE (10 parameters each)
CLAIM_ROUNDS = 3  # MariaDB/MySQL: reads of candidates per claim while others lock them
# The status of rows looked up by id, written so that no planner reads the status index
# instead: its statistics may say "no row is sending" while hundreds are, and both SQLite
# and PostgreSQL then scanned every sending row at every commit (bench/: 2.5x slower).
NOT_BY_STATUS = "status || ''"
FINISH_COLUMNS = "id, status, last_error, with_reply, code, reply, retry, event, detail"
MAX_ATTEMPTS = 2**31 - 1  # PostgreSQL's integer; text in SQLite compares above it
# The times psycopg can read (Python's datetime), with a day's margin for time zones:
# PostgreSQL also stores '-infinity', 'infinity' and years before Christ.
READABLE_TIMES = (
    datetime(1, 1, 2, tzinfo=UTC),
    datetime(9999, 12, 30, tzinfo=UTC),
)

T = TypeVar("T")
SelectT = TypeVar("SelectT", bound="Select[Any]")
OpenConnection = Callable[[], AbstractContextManager[Connection]]
Execute = Callable[..., Any]  # one statement (SQL, parameters), returning its cursor


class NotAllLeased(Exception):
    """A finish found a row no longer leased and cannot tell which: roll back, record again
    with `careful` (Statements.record_finishes)."""


class Statements(ABC):
    """The statements of one database: the parts of the outbox's SQL that differ by dialect.
    The plain-SQL texts (lease, finish) are written once here from each dialect's clock and
    placeholder."""

    mark: ClassVar[str]  # the driver's placeholder
    lease_row: ClassVar[str]  # one (id, message_id) row of the lease's VALUES
    sql_now: ClassVar[str]  # the database clock in plain SQL, as the columns store it
    not_by_status: ClassVar[str] = NOT_BY_STATUS  # status, compared without its index
    # Whether a waiting row can hold a time the database cannot read (fail_unschedulable).
    times_can_be_unreadable: ClassVar[bool]
    # Whether a claim resumes where the last one ended (claims.ResumePoint): PostgreSQL,
    # whose index keeps the entries of claimed rows until vacuum.
    resumes_claims: ClassVar[bool] = False

    def one_writer(self) -> AbstractContextManager[object]:
        """Held around the robot's busiest write transactions (a claim's lease, a group
        commit): on SQLite they take turns in Python; elsewhere nothing."""
        return nullcontext()

    @staticmethod
    @abstractmethod
    def sql_later(seconds: str) -> str:
        """The database clock plus `seconds` (an SQL expression) in plain SQL."""

    @abstractmethod
    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """The database clock plus `seconds`."""

    @abstractmethod
    def due_at(self, grace_seconds: float) -> ColumnElement[datetime]:
        """coalesce(next_attempt_at, max(created_at + grace, coalesce(send_after, created_at))):
        NULL when a time it needs cannot be read."""

    @abstractmethod
    def readable_time(self, column: ColumnElement[datetime]) -> ColumnElement[datetime]:
        """`column` as the claim reads it: NULL where the driver could not read the time."""

    @abstractmethod
    def unreadable_time(self, column: ColumnElement[datetime]) -> ColumnElement[bool]:
        """Whether `column` holds something that is not a time (SQLite keeps any text)."""

    @abstractmethod
    def octets(self, column: ColumnElement[Any]) -> ColumnElement[int]:
        """The stored size of a text or binary value in bytes, without reading it whole."""

    @abstractmethod
    def lock_for_claim(self, pick: SelectT) -> SelectT:
        """The claim's pick of due rows, made safe against another robot claiming them (on
        MariaDB/MySQL: its first read, which locks nothing; see pick_for_claim)."""

    def pick_for_claim(self, conn: Connection, pick: Select[Any]) -> list[Any]:
        """The rows of `pick` (ordered and limited), locked for this transaction: none of
        them can be claimed by another robot, changed by an operator or finished until it
        ends."""
        return list(conn.execute(self.lock_for_claim(pick)))

    @abstractmethod
    def with_lenient_retry(
        self, open_connection: OpenConnection, work: Callable[[Connection], T]
    ) -> T:
        """`work` on a connection of `open_connection`, again reading text leniently when
        the database holds text it cannot decode."""

    @abstractmethod
    def finish_statement(
        self, worker: str, outcomes: Sequence[Finish]
    ) -> tuple[str, tuple[Any, ...]] | None:
        """The one statement (SQL, parameters) that records `outcomes` on its own, in
        autocommit mode, returning the ids it recorded; None when they must go through
        record_finishes in a transaction."""

    @abstractmethod
    def record_finishes(
        self, conn: Connection, worker: str, outcomes: Sequence[Finish], *, careful: bool = False
    ) -> set[int]:
        """In the transaction of `conn`, record `outcomes` whose rows are still leased to
        `worker`, with their history lines (those they carry, then the closing one); their
        ids. Raises NotAllLeased when the transaction must be rolled back and the outcomes
        recorded again with `careful` (MariaDB/MySQL, when a row was no longer leased)."""

    def finish_on_driver(
        self, engine: Engine, worker: str, outcomes: Sequence[Finish]
    ) -> set[int] | None:
        """Record `outcomes` (none adds a suppression) as record_finishes does, in a
        transaction of its own on a plain driver connection; their ids. None when this
        database records them through record_finishes only."""
        return None

    @abstractmethod
    def wake_robots(self, conn: Connection) -> None:
        """Tell listening robots that rows became due (after an operator's release or retry)."""

    def update_ids(
        self,
        conn: Connection,
        where: Sequence[ColumnElement[bool] | TextClause],
        values: dict[str, Any],
    ) -> list[int]:
        """UPDATE outbox SET `values` WHERE `where`, in the transaction of `conn`: the ids
        of the rows it changed (UPDATE ... RETURNING)."""
        changed = conn.execute(
            update(outbox).where(*where).values(**values).returning(outbox.c.id)
        ).scalars()
        return list(changed)

    def among(self, column: ColumnElement[int], name: str) -> ColumnElement[bool]:
        """`column` IN the ids given as parameter `name` at execution (the rows of a claim,
        say): a statement built once and run with other ids each time (SQLAlchemy then keys
        its cache without walking a new statement)."""
        return column.in_(bindparam(name, expanding=True))

    def lease_sql(self, rows: int, lease_seconds: float) -> str:
        """The UPDATE that leases `rows` picked rows: parameters (id, message_id) per row,
        then the worker. A row's own Message-ID is kept (its parameter is then NULL); the
        count of attempts stops at MAX_ATTEMPTS rather than overflow a host's odd value."""
        values = f"VALUES {', '.join([self.lease_row] * rows)}"
        return f"WITH v (id, message_id) AS ({values}) {self._lease_update(lease_seconds)}"

    def lease_all_sql(self, lease_seconds: float) -> str | None:
        """PostgreSQL: one statement that leases any number of picked rows and writes their
        'claimed' lines (Claims._lease); None where the claim runs lease_sql and
        claimed_events_sql for each chunk of rows."""
        return None

    def _lease_update(self, lease_seconds: float) -> str:
        """The UPDATE of lease_sql, from the picked rows `v` (id, message_id)."""
        until = self.sql_later(f"{float(lease_seconds):.3f}")
        return (
            f"UPDATE outbox SET status = 'sending', claimed_by = {self.mark}, "
            f"claimed_until = {until}, attempts = CASE WHEN outbox.attempts < {MAX_ATTEMPTS} "
            "THEN outbox.attempts + 1 ELSE outbox.attempts END, "
            f"updated_at = {self.sql_now}, "
            "message_id = coalesce(nullif(outbox.message_id, ''), v.message_id) "
            "FROM v WHERE outbox.id = v.id"
        )

    def claimed_events_sql(self, rows: int) -> str:
        """The INSERT of the 'claimed' history lines of `rows` rows: (id, worker) each."""
        event = f"({self.mark}, 'claimed', {self.mark})"
        return (
            f"INSERT INTO outbox_event (outbox_id, kind, detail) VALUES {', '.join([event] * rows)}"
        )

    @classmethod
    def finish_update(cls) -> str:
        """The UPDATE of a finish from the rows of `v` (FINISH_COLUMNS), then the worker."""
        now, later = cls.sql_now, cls.sql_later("v.retry")
        return (
            "UPDATE outbox SET status = v.status, claimed_by = NULL, claimed_until = NULL, "
            f"updated_at = {now}, last_error = v.last_error, "
            "smtp_code = CASE WHEN v.with_reply = 1 THEN v.code ELSE outbox.smtp_code END, "
            "smtp_reply = CASE WHEN v.with_reply = 1 THEN v.reply ELSE outbox.smtp_reply END, "
            f"sent_at = CASE WHEN v.status = 'sent' THEN {now} ELSE outbox.sent_at END, "
            "next_attempt_at = CASE WHEN v.retry IS NULL THEN outbox.next_attempt_at "
            f"ELSE {later} END "
            f"FROM v WHERE outbox.id = v.id AND outbox.claimed_by = {cls.mark} "
            f"AND outbox.{cls.not_by_status} = 'sending'"
        )


class SqliteStatements(Statements):
    """SQLite: times are text, one `BEGIN IMMEDIATE` write transaction makes a claim atomic,
    and a finish is three single-step statements per chunk of outcomes."""

    mark = "?"
    lease_row = "(?, ?)"
    sql_now = f"strftime('{SQLITE_TIME}', 'now')"
    # A host may write any text into created_at or send_after: it is then never due.
    times_can_be_unreadable = True

    def __init__(self) -> None:
        self._finish_sql_cache: dict[int, str] = {}
        self._writer = threading.Lock()

    def one_writer(self) -> AbstractContextManager[object]:
        """The robot's own write transactions on this engine take turns here rather than in
        SQLite's busy handler, which sleeps 1, 2, 5, 10 ms... between tries: with a group
        commit always under way, a claim's BEGIN IMMEDIATE slept its way in (a claim of 250
        rows held the lock 22 ms at the median of a 16-connection drain, 8 ms with this, and
        the connections waited 23 s for rows over the drain instead of 4)."""
        return self._writer

    @staticmethod
    def sql_later(seconds: str) -> str:
        return f"strftime('{SQLITE_TIME}', 'now', '+' || ({seconds}) || ' seconds')"

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        expr = func.strftime(SQLITE_TIME, "now", f"{seconds:+.3f} seconds")
        return type_coerce(expr, UTCDateTime())

    def due_at(self, grace_seconds: float) -> ColumnElement[datetime]:
        # Host applications write what datetime() writes, or ISO text: normalise it so
        # that the text comparison is a time comparison.
        created = func.strftime(SQLITE_TIME, outbox.c.created_at)
        graced = func.strftime(SQLITE_TIME, outbox.c.created_at, f"{grace_seconds:+.3f} seconds")
        # NULL send_after: not scheduled; unreadable send_after: never due (housekeeping
        # fails the row) rather than sent at once.
        scheduled = case(
            (outbox.c.send_after.is_(None), created),
            else_=func.strftime(SQLITE_TIME, outbox.c.send_after),
        )
        # The same for next_attempt_at, which a host may write too.
        expr = case(
            (outbox.c.next_attempt_at.is_(None), func.max(graced, scheduled)),
            else_=func.strftime(SQLITE_TIME, outbox.c.next_attempt_at),
        )
        return type_coerce(expr, UTCDateTime())

    def readable_time(self, column: ColumnElement[datetime]) -> ColumnElement[datetime]:
        return column  # UTCDateTime reads text that is not a time as None

    def unreadable_time(self, column: ColumnElement[datetime]) -> ColumnElement[bool]:
        return and_(column.is_not(None), func.strftime(SQLITE_TIME, column).is_(None))

    def octets(self, column: ColumnElement[Any]) -> ColumnElement[int]:
        return func.coalesce(func.length(cast(column, LargeBinary())), 0)

    def lock_for_claim(self, pick: SelectT) -> SelectT:
        # Without statistics SQLite prefers the status index and sorts every waiting row;
        # the partial queue index yields them in claim order and stops at the limit.
        # BEGIN IMMEDIATE holds the write lock: nobody changes them before the UPDATE.
        return pick.with_hint(outbox, "INDEXED BY ix_outbox_queue", "sqlite")

    def with_lenient_retry(
        self, open_connection: OpenConnection, work: Callable[[Connection], T]
    ) -> T:
        try:
            with open_connection() as conn:
                return work(conn)
        except OperationalError as exc:
            if "decode" not in str(exc):
                raise
            # A host wrote bytes that are not UTF-8 into a text column (SQLite allows it).
            # Do it again reading them leniently: compose then fails just those rows.
            with open_connection() as conn, lenient_text(conn):
                return work(conn)

    def finish_statement(
        self, worker: str, outcomes: Sequence[Finish]
    ) -> tuple[str, tuple[Any, ...]] | None:
        return None  # the database thread's transaction does it (record_finishes)

    def record_finishes(
        self, conn: Connection, worker: str, outcomes: Sequence[Finish], *, careful: bool = False
    ) -> set[int]:
        return self._record(conn.exec_driver_sql, worker, outcomes)

    def finish_on_driver(self, engine: Engine, worker: str, outcomes: Sequence[Finish]) -> set[int]:
        """The group commit's usual transaction on the pool's sqlite3 connection itself:
        SQLAlchemy's Connection, its events and result objects cost more CPU than the
        statements (about half of a small commit). Errors are raised as SQLAlchemy's
        (DBAPIError.instance), so that outages and refusals are told apart as before.

        The rows are updated without being looked at first (one statement fewer: each gives
        the GIL up and waits to get it back); if the UPDATE did not change every one, some
        row was no longer leased: the transaction is rolled back and done again, looking."""
        try:
            return self._finish_on_driver(engine, worker, outcomes, careful=False)
        except NotAllLeased:
            return self._finish_on_driver(engine, worker, outcomes, careful=True)

    def _finish_on_driver(
        self, engine: Engine, worker: str, outcomes: Sequence[Finish], *, careful: bool
    ) -> set[int]:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            hide = engine.hide_parameters

            def run(sql: str, parameters: Sequence[Any] = ()) -> Any:
                try:
                    return cursor.execute(sql, parameters)
                except sqlite3.Error as exc:
                    raise DBAPIError.instance(
                        sql, parameters, exc, sqlite3.Error, hide_parameters=hide
                    ) from exc

            try:
                run("BEGIN IMMEDIATE")  # the write lock at once, as the engine's "begin" event
                recorded = self._record(run, worker, outcomes, careful=careful)
                cursor.close()
                try:
                    raw.commit()
                except sqlite3.Error as exc:
                    raise DBAPIError.instance("COMMIT", (), exc, sqlite3.Error) from exc
            except BaseException:
                try:
                    raw.rollback()
                except sqlite3.Error:
                    pass  # the pool's reset rolls back too; the first error is the one to raise
                raise
        finally:
            raw.close()  # back to the pool
        return recorded

    def _record(
        self, run: Execute, worker: str, outcomes: Sequence[Finish], *, careful: bool = True
    ) -> set[int]:
        recorded: set[int] = set()
        for start in range(0, len(outcomes), FINISH_CHUNK):
            chunk = outcomes[start : start + FINISH_CHUNK]
            recorded |= self._finish_chunk(run, worker, chunk, careful)
        return recorded

    def _finish_chunk(
        self, run: Execute, worker: str, chunk: Sequence[Finish], careful: bool
    ) -> set[int]:
        """Update the rows of `chunk` still leased to `worker` and add their history lines
        (those the outcome carries, then the closing one); return their ids. `run`
        executes one statement (a Connection's exec_driver_sql or a sqlite3 cursor's
        execute). Unless `careful`, the rows are not looked at first: NotAllLeased when
        one of them was no longer leased (the transaction must be rolled back)."""
        ids = [o.row_id for o in chunk]
        if careful:
            found = run(  # BEGIN IMMEDIATE holds the write lock already
                f"SELECT group_concat(id) FROM outbox WHERE id IN ({', '.join('?' * len(ids))}) "
                f"AND claimed_by = ? AND {NOT_BY_STATUS} = 'sending'",
                (*ids, worker),
            ).fetchone()[0]
            recorded = {int(i) for i in found.split(",")} if found else set()
        else:
            recorded = set(ids)
        done = [o for o in chunk if o.row_id in recorded]
        if done:
            values = tuple(value for o in done for value in _finish_row(o))
            updated = run(self._finish_sql(len(done)), (*values, worker)).rowcount
            if not careful and updated != len(done):
                raise NotAllLeased
            lines = [(o.row_id, h.kind, h.smtp_code, h.detail) for o in done for h in o.history] + [
                (o.row_id, o.decision.event, o.smtp_code, _event_detail(o)) for o in done
            ]
            if any(o.history for o in done):  # in order: a row's lines, then its closing one
                lines.sort(key=lambda line: ids.index(line[0]))
            run(
                "INSERT INTO outbox_event (outbox_id, kind, smtp_code, detail) VALUES "
                + ", ".join(["(?, ?, ?, ?)"] * len(lines)),
                tuple(v for line in lines for v in line),
            )
        return recorded

    def _finish_sql(self, rows: int) -> str:
        """The UPDATE that records `rows` outcomes, a VALUES row of `_finish_row` each, then
        the worker."""
        cached = self._finish_sql_cache.get(rows)
        if cached is None:
            # A statement that starts with UPDATE (not WITH), so that the driver counts the
            # rows it changed (cursor.rowcount); VALUES names its columns column1, column2...
            names = [name.strip() for name in FINISH_COLUMNS.split(",")]
            columns = ", ".join(f"column{n} AS {name}" for n, name in enumerate(names, 1))
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
            v = f"(SELECT {columns} FROM (VALUES {values})) AS v"
            update = self.finish_update()
            assert update.count(" FROM v WHERE ") == 1
            cached = update.replace(" FROM v WHERE ", f" FROM {v} WHERE ")
            self._finish_sql_cache[rows] = cached
        return cached

    def wake_robots(self, conn: Connection) -> None:
        pass  # no LISTEN on SQLite: robots poll


class PostgresStatements(Statements):
    """PostgreSQL: timestamptz columns, `FOR UPDATE SKIP LOCKED` claims, a finish in one
    statement over the outcomes as arrays, NOTIFY to wake listening robots."""

    mark = "%s"
    lease_row = "(%s::bigint, %s::text)"
    sql_now = "now()"
    times_can_be_unreadable = False  # timestamptz columns cannot hold text that is not a time
    resumes_claims = True

    @staticmethod
    def sql_later(seconds: str) -> str:
        return f"now() + make_interval(secs => {seconds})"

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        expr = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
        return type_coerce(expr, UTCDateTime())

    def due_at(self, grace_seconds: float) -> ColumnElement[datetime]:
        graced = outbox.c.created_at + func.make_interval(0, 0, 0, 0, 0, 0, grace_seconds)
        scheduled = func.coalesce(outbox.c.send_after, outbox.c.created_at)
        expr = func.coalesce(outbox.c.next_attempt_at, func.greatest(graced, scheduled))
        return type_coerce(expr, UTCDateTime())

    def unreadable_time(self, column: ColumnElement[datetime]) -> ColumnElement[bool]:
        return false()  # a timestamptz column holds nothing else

    def readable_time(self, column: ColumnElement[datetime]) -> ColumnElement[datetime]:
        earliest, latest = READABLE_TIMES
        readable = case((column.between(earliest, latest), column), else_=None)
        return type_coerce(readable, UTCDateTime())

    def octets(self, column: ColumnElement[Any]) -> ColumnElement[int]:
        return func.coalesce(func.octet_length(column), 0)

    def lock_for_claim(self, pick: SelectT) -> SelectT:
        return pick.with_for_update(skip_locked=True)

    def among(self, column: ColumnElement[int], name: str) -> ColumnElement[bool]:
        """`column = ANY(:name)`: the ids as one array, so that the statement's text is the
        same for any number of them (the driver parses it once, the server prepares it)."""
        return column == any_(bindparam(name, type_=ARRAY(BigInteger())))

    def lease_all_sql(self, lease_seconds: float) -> str:
        """The lease and the 'claimed' lines in one statement of one text, the rows as two
        arrays (ids, Message-IDs), then the worker twice: a claim of 260 rows spent more
        CPU on the driver parsing its 520 placeholders than on anything else."""
        return (
            "WITH v (id, message_id) AS (SELECT * FROM unnest(%s::bigint[], %s::text[])), "
            f"leased AS ({self._lease_update(lease_seconds)} RETURNING outbox.id) "
            "INSERT INTO outbox_event (outbox_id, kind, detail) "
            "SELECT id, 'claimed', %s FROM leased"
        )

    def with_lenient_retry(
        self, open_connection: OpenConnection, work: Callable[[Connection], T]
    ) -> T:
        with open_connection() as conn:  # PostgreSQL refuses text it cannot decode on write
            return work(conn)

    def finish_statement(
        self, worker: str, outcomes: Sequence[Finish]
    ) -> tuple[str, tuple[Any, ...]] | None:
        """The one statement, unless history lines or suppressions must go in the same
        transaction (then None: record_finishes)."""
        if any(o.suppress or o.history for o in outcomes):
            return None
        return self._one_statement(worker, outcomes)

    def record_finishes(
        self, conn: Connection, worker: str, outcomes: Sequence[Finish], *, careful: bool = False
    ) -> set[int]:
        leased = self._still_leased(conn, worker, [o.row_id for o in outcomes])
        self._history(conn, [o for o in outcomes if o.row_id in leased])
        return {row[0] for row in conn.exec_driver_sql(*self._one_statement(worker, outcomes))}

    @staticmethod
    def _one_statement(worker: str, outcomes: Sequence[Finish]) -> tuple[str, tuple[Any, ...]]:
        """PG_FINISH_SQL and its parameters: one text whatever the batch (the rows go in as
        arrays), so that it is parsed once and prepared, and its parameters are ten."""
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [], [])
        for o in outcomes:
            for column, value in zip(columns, _finish_row(o), strict=True):
                column.append(value)
        return PG_FINISH_SQL, (*columns, worker)

    @staticmethod
    def _still_leased(conn: Connection, worker: str, ids: list[int]) -> set[int]:
        """Lock and return the rows of `ids` still leased to `worker`."""
        found = conn.execute(
            select(outbox.c.id)
            .where(
                outbox.c.id.in_(ids),
                outbox.c.claimed_by == worker,
                outbox.c.status == Status.SENDING.value,
            )
            .with_for_update()
        ).scalars()
        return set(found)

    @staticmethod
    def _history(conn: Connection, outcomes: Sequence[Finish]) -> None:
        """The history lines that outcomes carry (refused recipients, say)."""
        lines = [
            {"outbox_id": o.row_id, "kind": h.kind, "smtp_code": h.smtp_code, "detail": h.detail}
            for o in outcomes
            for h in o.history
        ]
        if lines:
            conn.execute(insert(outbox_event), lines)

    def wake_robots(self, conn: Connection) -> None:
        conn.execute(text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"))


PG_FINISH_SQL = (
    "WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::int[], "
    f"%s::int[], %s::text[], %s::float8[], %s::text[], %s::text[]) AS v ({FINISH_COLUMNS})), "
    "done AS ("
    + PostgresStatements.finish_update()
    + " RETURNING outbox.id, v.event, v.code, v.detail) "
    "INSERT INTO outbox_event (outbox_id, kind, smtp_code, detail) "
    "SELECT id, event, code, detail FROM done RETURNING outbox_id"
)  # PostgreSQL's finish: rows as arrays, history lines in the same statement


class MysqlStatements(Statements):
    """MariaDB/MySQL: DATETIME(6) columns holding UTC, `FOR UPDATE SKIP LOCKED` claims over
    the queue index's generated column, and no UPDATE ... RETURNING: the rows an UPDATE is
    to change are locked and read first (SELECT ... FOR UPDATE), then changed by id. Robots
    poll (no LISTEN); a finish is three statements in a transaction, as on SQLite."""

    mark = "%s"
    lease_row = "SELECT %s AS id, %s AS message_id"
    sql_now = "utc_timestamp(6)"
    # The primary key finds the rows: no status index to steer the planner away from.
    not_by_status = "status"
    times_can_be_unreadable = False  # DATETIME holds times (a zero date reads as NULL)

    def __init__(self) -> None:
        self._finish_sql_cache: dict[int, str] = {}

    @staticmethod
    def sql_later(seconds: str) -> str:
        return f"date_add(utc_timestamp(6), INTERVAL round(({seconds}) * 1000000) MICROSECOND)"

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return type_coerce(_mysql_plus(literal_column("utc_timestamp(6)"), seconds), UTCDateTime())

    def due_at(self, grace_seconds: float) -> ColumnElement[datetime]:
        graced = _mysql_plus(outbox.c.created_at, grace_seconds)
        scheduled = func.coalesce(outbox.c.send_after, outbox.c.created_at)
        expr = func.coalesce(outbox.c.next_attempt_at, func.greatest(graced, scheduled))
        return type_coerce(expr, UTCDateTime())

    def readable_time(self, column: ColumnElement[datetime]) -> ColumnElement[datetime]:
        return column  # UTCDateTime reads a zero date (PyMySQL's text) as None

    def unreadable_time(self, column: ColumnElement[datetime]) -> ColumnElement[bool]:
        return false()

    def octets(self, column: ColumnElement[Any]) -> ColumnElement[int]:
        return func.coalesce(func.octet_length(column), 0)

    def lock_for_claim(self, pick: SelectT) -> SelectT:
        # No partial index: queue_waiting = 1 puts the pick on ix_outbox_queue
        # (queue_waiting, priority DESC, created_at, id), read in claim order up to the limit.
        return pick.where(text(f"outbox.{MYSQL_QUEUE_COLUMN} = 1"))

    def pick_for_claim(self, conn: Connection, pick: Select[Any]) -> list[Any]:
        """Two reads: the pick's candidates without a lock (lock_for_claim), then those rows
        by primary key, `FOR UPDATE SKIP LOCKED`, under the pick's conditions again (a
        locking read sees the last committed version: a row retracted or claimed meanwhile
        is left out). InnoDB's locking read of the queue index itself visits, and locks,
        every entry that rows which left the queue have left behind until they are purged:
        70 ms for 500 rows at 200,000 rows, seconds after a large UPDATE, against 3 ms for
        the unlocked read. Candidates another robot is locking at that moment are skipped:
        then the next ones are tried, a few rounds at most."""
        limit = int(pick._limit or 0)
        locked: list[Any] = []
        seen: list[int] = []
        for _ in range(CLAIM_ROUNDS):
            wanted = limit - len(locked)
            candidates = self.lock_for_claim(pick)
            if seen:
                candidates = candidates.where(outbox.c.id.not_in(seen))
            ids = [row.id for row in conn.execute(candidates.limit(wanted))]
            if not ids:
                break
            seen += ids
            again = (
                pick.where(outbox.c.id.in_(ids))
                .limit(None)
                .with_hint(outbox, "FORCE INDEX (PRIMARY)", "mysql")
                .with_for_update(skip_locked=True)
            )
            locked += conn.execute(again).all()
            if len(locked) >= limit or len(ids) < wanted:  # all it wanted, or all there is
                break
        return locked

    def with_lenient_retry(
        self, open_connection: OpenConnection, work: Callable[[Connection], T]
    ) -> T:
        with open_connection() as conn:  # utf8mb4 columns refuse text they cannot hold
            return work(conn)

    def lease_sql(self, rows: int, lease_seconds: float) -> str:
        """As Statements.lease_sql, the rows as a derived table joined to outbox (MariaDB
        has no UPDATE ... FROM and no VALUES rows MySQL also reads)."""
        until = self.sql_later(f"{float(lease_seconds):.3f}")
        picked = " UNION ALL ".join([self.lease_row] * rows)
        return (
            f"UPDATE outbox JOIN ({picked}) AS v ON outbox.id = v.id "
            f"SET outbox.status = 'sending', outbox.claimed_by = %s, "
            f"outbox.claimed_until = {until}, outbox.attempts = CASE WHEN outbox.attempts "
            f"< {MAX_ATTEMPTS} THEN outbox.attempts + 1 ELSE outbox.attempts END, "
            f"outbox.updated_at = {self.sql_now}, "
            "outbox.message_id = coalesce(nullif(outbox.message_id, ''), v.message_id)"
        )

    def finish_statement(
        self, worker: str, outcomes: Sequence[Finish]
    ) -> tuple[str, tuple[Any, ...]] | None:
        return None  # the group commit's thread does it in a transaction (record_finishes)

    def record_finishes(
        self, conn: Connection, worker: str, outcomes: Sequence[Finish], *, careful: bool = False
    ) -> set[int]:
        recorded: set[int] = set()
        for start in range(0, len(outcomes), FINISH_CHUNK):
            chunk = outcomes[start : start + FINISH_CHUNK]
            recorded |= self._finish_chunk(conn, worker, chunk, careful=careful)
        return recorded

    def _finish_chunk(
        self, conn: Connection, worker: str, chunk: Sequence[Finish], *, careful: bool = False
    ) -> set[int]:
        """Update the rows of `chunk` still leased to `worker`, add their history lines
        (those the outcome carries, then the closing one); their ids.

        At first without looking: the UPDATE's count of matched rows (the client flag
        FOUND_ROWS, which SQLAlchemy sets) says whether every row was still leased, the
        usual case, in two statements. When one was not, the count cannot say which:
        NotAllLeased rolls the transaction back, and the `careful` way locks and reads the
        leased rows first (SELECT ... FOR UPDATE), then updates those."""
        ids = [o.row_id for o in chunk]
        if careful:
            found = conn.exec_driver_sql(
                f"SELECT id FROM outbox WHERE id IN ({', '.join(['%s'] * len(ids))}) "
                "AND claimed_by = %s AND status = 'sending' FOR UPDATE",
                (*ids, worker),
            )
            recorded = {int(row[0]) for row in found}
            done = [o for o in chunk if o.row_id in recorded]
        else:
            recorded, done = set(ids), list(chunk)
        if not done:
            return recorded
        values = tuple(value for o in done for value in _finish_row(o))
        matched = conn.exec_driver_sql(self._finish_sql(len(done)), (*values, worker)).rowcount
        if matched != len(done):
            raise NotAllLeased(f"{matched} of {len(done)} rows still leased")
        lines = [(o.row_id, h.kind, h.smtp_code, h.detail) for o in done for h in o.history] + [
            (o.row_id, o.decision.event, o.smtp_code, _event_detail(o)) for o in done
        ]
        if any(o.history for o in done):  # in order: a row's lines, then its closing one
            lines.sort(key=lambda line: ids.index(line[0]))
        conn.exec_driver_sql(
            "INSERT INTO outbox_event (outbox_id, kind, smtp_code, detail) VALUES "
            + ", ".join(["(%s, %s, %s, %s)"] * len(lines)),
            tuple(v for line in lines for v in line),
        )
        return recorded

    def _finish_sql(self, rows: int) -> str:
        """The UPDATE that records `rows` outcomes, a row of `_finish_row` each, then the
        worker: Statements.finish_update with the rows as a derived table joined to outbox."""
        cached = self._finish_sql_cache.get(rows)
        if cached is None:
            names = FINISH_COLUMNS.split(", ")
            first = "SELECT " + ", ".join(f"%s AS {name}" for name in names)
            more = "SELECT " + ", ".join(["%s"] * len(names))
            picked = " UNION ALL ".join([first] + [more] * (rows - 1))
            now, later = self.sql_now, self.sql_later("v.retry")
            cached = (
                f"UPDATE outbox JOIN ({picked}) AS v ON outbox.id = v.id "
                "SET outbox.status = v.status, outbox.claimed_by = NULL, "
                f"outbox.claimed_until = NULL, outbox.updated_at = {now}, "
                "outbox.last_error = v.last_error, "
                "outbox.smtp_code = CASE WHEN v.with_reply = 1 THEN v.code "
                "ELSE outbox.smtp_code END, "
                "outbox.smtp_reply = CASE WHEN v.with_reply = 1 THEN v.reply "
                "ELSE outbox.smtp_reply END, "
                f"outbox.sent_at = CASE WHEN v.status = 'sent' THEN {now} "
                "ELSE outbox.sent_at END, "
                "outbox.next_attempt_at = CASE WHEN v.retry IS NULL "
                f"THEN outbox.next_attempt_at ELSE {later} END "
                "WHERE outbox.claimed_by = %s AND outbox.status = 'sending'"
            )
            self._finish_sql_cache[rows] = cached
        return cached

    def wake_robots(self, conn: Connection) -> None:
        pass  # no LISTEN on MariaDB/MySQL: robots poll

    def update_ids(
        self,
        conn: Connection,
        where: Sequence[ColumnElement[bool] | TextClause],
        values: dict[str, Any],
    ) -> list[int]:
        """No UPDATE ... RETURNING: lock and read the rows `where` picks (a locking read
        sees the last committed version, and nobody changes them until this transaction
        ends), then UPDATE those by id, still under `where`."""
        ids = list(conn.execute(select(outbox.c.id).where(*where).with_for_update()).scalars())
        if ids:
            conn.execute(update(outbox).where(outbox.c.id.in_(ids), *where).values(**values))
        return ids


def _mysql_plus(when: ColumnElement[Any], seconds: float) -> ColumnElement[Any]:
    """`when` plus `seconds`, to the microsecond (MariaDB/MySQL)."""
    micros: ColumnElement[Any] = literal_column(
        f"INTERVAL {round(seconds * 1_000_000)} MICROSECOND"
    )
    return func.date_add(when, micros)


def statements_for(engine: Engine) -> Statements:
    """The statements of `engine`'s database."""
    if engine.dialect.name == "sqlite":
        return SqliteStatements()
    if engine.dialect.name in MYSQL:
        return MysqlStatements()
    return PostgresStatements()


def _finish_row(o: Finish) -> tuple[Any, ...]:
    """One outcome as a row of FINISH_COLUMNS."""
    retry = o.decision.retry_after
    return (
        o.row_id,
        o.decision.status.value,
        o.decision.last_error,
        int(o.smtp_code is not None or o.smtp_reply is not None),
        o.smtp_code,
        o.smtp_reply,
        retry.total_seconds() if retry is not None else None,
        o.decision.event,
        _event_detail(o),
    )


def _event_detail(outcome: Finish) -> str | None:
    """The detail of the history line an outcome adds."""
    return outcome.detail or outcome.decision.last_error or outcome.smtp_reply
