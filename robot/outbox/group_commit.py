"""Group commit of outcomes: SQLite and MariaDB/MySQL on a thread of their own, PostgreSQL on
the event loop.

A connection hands over the outcome of a message as soon as its reply came ("sent" is
recorded as soon as DATA is accepted) and goes on; before it sends its next body it waits
until every outcome but the last is committed (robot.daemon.worker). Every outcome waiting
when a commit starts goes into it, so many connections cost one commit.

`GroupCommit` (SQLite, MariaDB/MySQL, any database through Claims.finish_many): the loop that
takes outcomes and commits them runs on the thread itself, so the next transaction starts as
soon as the previous one ends, and the event loop hears of a batch once, when it is committed.

`AsyncGroupCommit` (PostgreSQL): a task of the event loop over an asynchronous psycopg
connection. A batch is one statement, one round trip; no thread to wake and no GIL to win
back from the event loop after every statement, which is what a database thread spends
most of its time on while the loop is busy.

Both tell an outage from a refusal. Through an outage (a lost connection, a server
restarting, SQLite busy) a batch is retried as it is until it goes through. A batch the
database refuses (a NUL in a reply on PostgreSQL, a host's constraint) is recorded outcome
by outcome, so that one row's outcome never holds up the others; an outcome still refused
is recorded in safer forms (rows.recordable_forms), and one that no form gets into the
database is logged (`outcome.unrecordable`) and answered False: its row stays `sending`
until its lease runs out.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from robot.backoff import Backoff, database_backoff
from robot.logs import first_line
from robot.outbox.claims import Claims
from robot.outbox.engine import DATABASE_ERRORS, is_outage
from robot.outbox.rows import Finish, recordable_forms

BATCH = 500  # outcomes committed in one transaction at most
APPLICATION_NAME = "email-robot group commit"  # PostgreSQL's pg_stat_activity shows it

Waiting = tuple[Finish, asyncio.Future[bool]]


class GroupCommit:
    """`record(outcome)` returns when the outcome is committed: True, or False when its row
    was no longer ours (or the database stayed away past backoff.STOP_PATIENCE while stopping).

    `commit` writes a batch in one transaction and says, per outcome, whether it applied
    (Claims.finish_many). A database outage is logged and retried, never dropped; a batch
    the database refuses is recorded outcome by outcome (see the module's docstring).
    """

    def __init__(
        self,
        commit: Callable[[Sequence[Finish]], list[bool]],
        log: Any,
        *,
        name: str = "robot-rec",
    ) -> None:
        self._commit = commit
        self._log = log
        self._waiting: queue.SimpleQueue[Waiting | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False

    async def record(self, outcome: Finish) -> bool:
        """Queue `outcome` for the next commit and wait for it."""
        return await self.submit(outcome)

    def submit(self, outcome: Finish) -> asyncio.Future[bool]:
        """Queue `outcome` for the next commit; the future answers as `record` does."""
        if self._closed:
            raise RuntimeError("the group commit is closed")
        loop = self._loop  # get_running_loop() costs a getpid() system call on Python 3.11
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._thread.start()
        done: asyncio.Future[bool] = loop.create_future()
        self._waiting.put((outcome, done))
        return done

    def stopping(self) -> None:
        """The robot is stopping: give up on a database that stays away (backoff.STOP_PATIENCE)."""
        self._stopping.set()

    async def close(self) -> None:
        """Commit what is queued, then end the thread."""
        self._closed = True
        if self._loop is None:
            return
        self._waiting.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._waiting.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.append(more)
            assert self._loop is not None
            try:
                results = self._commit_until_done([outcome for outcome, _ in batch])
            except Exception as exc:  # a bug, not an outage: the waiters raise it, the
                # robot stops; answering False would let the connections go on unrecorded
                answer: Callable[..., None] = _fail
                outcome_or_error: Any = exc
            else:
                answer, outcome_or_error = _resolve, results
            try:
                self._loop.call_soon_threadsafe(answer, batch, outcome_or_error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _commit_until_done(self, batch: list[Finish]) -> list[bool]:
        """Commit `batch` through outages; if the database refuses it, each outcome alone."""
        try:
            return self._through_outages(batch)
        except DATABASE_ERRORS as exc:  # refused: _through_outages retries outages
            _log_refused(self._log, exc, batch)
        return [self._one(outcome) for outcome in batch]

    def _one(self, outcome: Finish) -> bool:
        """Commit `outcome` alone, in safer forms while the database refuses it."""
        refusals: list[Exception] = []
        for form in recordable_forms(outcome):
            try:
                result = self._through_outages([form])[0]
            except DATABASE_ERRORS as exc:
                refusals.append(exc)
                continue
            _log_recorded_as(self._log, outcome, refusals)
            return result
        return _unrecordable(self._log, outcome, refusals)

    def _through_outages(self, batch: list[Finish]) -> list[bool]:
        """`commit(batch)`, retried while the database is away; raises what it refuses."""
        outage = database_backoff()
        while True:
            try:
                return self._commit(batch)
            except DATABASE_ERRORS as exc:
                if not is_outage(exc):
                    raise
                _log_outage(self._log, exc, outage)
            stopping = self._stopping.is_set()
            wait = outage.next(stopping)
            if wait is None:
                return _gave_up(self._log, batch)
            if stopping:
                time.sleep(wait)
            else:
                self._stopping.wait(wait)  # a stop ends the wait: patience starts counting


def _log_outage(log: Any, exc: BaseException, outage: Backoff) -> None:
    log.error("database.unavailable", doing="record", error=first_line(exc), retry_in=outage.delay)


def _log_refused(log: Any, exc: BaseException, batch: list[Finish]) -> None:
    log.warning(
        "outcome.refused",
        outcomes=len(batch),
        error=first_line(exc),
        then="recording each outcome alone",
    )


def _log_recorded_as(log: Any, outcome: Finish, refusals: list[Exception]) -> None:
    """Say so when `outcome` went in only in a safer form than its own."""
    if refusals:
        forms = ("sanitised", "bare")
        log.warning(
            "outcome.simplified",
            id=outcome.row_id,
            form=forms[len(refusals) - 1],
            error=first_line(refusals[-1]),
        )


def _unrecordable(log: Any, outcome: Finish, refusals: list[Exception]) -> bool:
    log.error(
        "outcome.unrecordable",
        id=outcome.row_id,
        status=outcome.decision.status.value,
        reason=first_line(refusals[-1]),
    )
    return False


def _gave_up(log: Any, batch: list[Finish]) -> list[bool]:
    log.error("database.gave_up", doing="record", outcomes=len(batch))
    return [False] * len(batch)


def _resolve(batch: list[Waiting], results: list[bool]) -> None:
    for (_, done), result in zip(batch, results, strict=True):
        if not done.done():
            done.set_result(result)


class AsyncGroupCommit:
    """The group commit of a PostgreSQL outbox, as a task of the event loop; `record`,
    `stopping` and `close` as GroupCommit's. Batches that also add a suppression go
    through Claims.finish_many on a thread (one transaction for both)."""

    def __init__(self, outbox: Claims, worker: str, dsn: str, log: Any) -> None:
        self._outbox = outbox
        self._worker = worker
        self._dsn = dsn
        self._log = log
        self._waiting: list[Waiting] = []
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def record(self, outcome: Finish) -> bool:
        """Queue `outcome` for the next commit and wait for it."""
        return await self.submit(outcome)

    def submit(self, outcome: Finish) -> asyncio.Future[bool]:
        """Queue `outcome` for the next commit; the future answers as `record` does."""
        if self._loop is None:  # get_running_loop() costs a getpid() on Python 3.11
            self._loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = self._loop.create_future()
        self._waiting.append((outcome, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="group-commit")
        return done

    def stopping(self) -> None:
        """The robot is stopping: give up on a database that stays away (backoff.STOP_PATIENCE)."""
        self._stopping = True

    async def close(self) -> None:
        """Commit what is queued, then close the connection."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            try:
                results = await self._commit_until_done([outcome for outcome, _ in batch])
            except Exception as exc:  # a bug, not an outage: the waiters raise it
                _fail(batch, exc)
                continue
            except BaseException as exc:  # cancelled: nobody will commit these
                _fail(batch, exc)
                raise
            _resolve(batch, results)

    async def _commit_until_done(self, batch: list[Finish]) -> list[bool]:
        """Commit `batch` through outages; if the database refuses it, each outcome alone."""
        try:
            return await self._through_outages(batch)
        except DATABASE_ERRORS as exc:  # refused: _through_outages retries outages
            _log_refused(self._log, exc, batch)
        return [await self._one(outcome) for outcome in batch]

    async def _one(self, outcome: Finish) -> bool:
        """Commit `outcome` alone, in safer forms while the database refuses it."""
        refusals: list[Exception] = []
        for form in recordable_forms(outcome):
            try:
                result = (await self._through_outages([form]))[0]
            except DATABASE_ERRORS as exc:
                refusals.append(exc)
                continue
            _log_recorded_as(self._log, outcome, refusals)
            return result
        return _unrecordable(self._log, outcome, refusals)

    async def _through_outages(self, batch: list[Finish]) -> list[bool]:
        """The commit of `batch`, retried while the database is away; raises what it
        refuses."""
        outage = database_backoff()
        reconnected = False
        while True:
            held = self._conn is not None and not self._conn.closed
            try:
                return await self._commit(batch)
            except DATABASE_ERRORS as exc:
                if not is_outage(exc):
                    raise
                # A connection that was open and is now broken died with the server (a
                # restart): once, a new one at once, without an error.
                died = held and self._conn is not None and self._conn.broken
                await self._drop_connection()
                if died and not reconnected:
                    reconnected = True
                    self._log.info("database.reconnected", doing="record", error=first_line(exc))
                    continue
                _log_outage(self._log, exc, outage)
            wait = outage.next(self._stopping)
            if wait is None:
                return _gave_up(self._log, batch)
            await asyncio.sleep(wait)

    async def _commit(self, batch: list[Finish]) -> list[bool]:
        statement = self._outbox.finish_statement(self._worker, batch)
        if statement is None:
            return await asyncio.to_thread(self._outbox.finish_many, self._worker, batch)
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=10, application_name=APPLICATION_NAME
            )
        cursor = await self._conn.execute(*statement)
        recorded = {row[0] for row in await cursor.fetchall()}
        return [o.row_id in recorded for o in batch]

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:
                pass


def _fail(batch: list[Waiting], error: BaseException) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(error)
