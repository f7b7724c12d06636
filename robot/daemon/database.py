"""The daemon's calls into the outbox, off the event loop: on a small thread pool, and for
writes that must not be lost, retried through a database outage; and the wait at start for a
database that does not answer yet."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from robot.backoff import DATABASE_FIRST, DATABASE_LONGEST, Backoff, database_backoff
from robot.logs import first_line

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseCalls:
    """Runs outbox methods on `threads` threads; `stopping` says when to give up waiting."""

    def __init__(self, log: Any, stopping: asyncio.Event, threads: int = 2) -> None:
        self._log = log
        self._stopping = stopping
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="robot-db")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on a database thread. Raises what it raises."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def until_done(
        self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T | None:
        """A write retried through a database outage; given up (None) only while stopping,
        after backoff.STOP_PATIENCE."""
        backoff = database_backoff()
        while True:
            try:
                return await self.call(fn, *args, **kwargs)
            except SQLAlchemyError as exc:
                self._log.error(
                    "database.unavailable",
                    doing=what,
                    error=first_line(exc),
                    retry_in=backoff.delay,
                )
            wait = backoff.next(self._stopping.is_set())
            if wait is None:
                self._log.error("database.gave_up", doing=what)
                return None
            await asyncio.sleep(wait)

    async def logged(
        self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T | None:
        """A call whose failure is logged and skipped (the next timed run tries again)."""
        try:
            return await self.call(fn, *args, **kwargs)
        except SQLAlchemyError as exc:
            self._log.error("database.unavailable", doing=what, error=first_line(exc))
            return None

    def close(self) -> None:
        """Wait for the calls in flight, then end the threads."""
        self._executor.shutdown(wait=True)


# What a database answers when the URL itself is wrong: waiting would not change it.
WRONG_URL_ANSWERS = (
    "does not exist",  # PostgreSQL: no such database, no such role
    "password authentication failed",
    "no pg_hba.conf entry",
    "unknown database",  # MariaDB/MySQL: no such database
    "access denied for user",  # MariaDB/MySQL: no such user, a wrong password, no grant
    "unable to open database file",  # SQLite: no such directory, no permission
)


class StoppedWaiting(BaseException):
    """SIGTERM or SIGINT came while the robot waited for the database at start."""


def is_wrong_url(exc: SQLAlchemyError) -> bool:
    """The database answered, and the answer says that its URL is wrong."""
    text = str(exc).lower()
    return any(answer in text for answer in WRONG_URL_ANSWERS)


def when_reachable(connect: Callable[[], T], log: Any) -> T | None:
    """`connect()`, tried again through OperationalError (a database down, starting up,
    locked) with the database back-off, logging each failed try; None when SIGTERM or
    SIGINT came meanwhile. Raises the OperationalError whose answer says that the URL is
    wrong, and whatever else `connect` raises."""
    backoff = Backoff(DATABASE_FIRST, DATABASE_LONGEST)
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, _stop_waiting) for signum in stop_signals}
    try:
        while True:
            try:
                found = connect()
            except OperationalError as exc:
                if is_wrong_url(exc):
                    raise
                log.error(
                    "database.unavailable",
                    doing="start",
                    error=first_line(exc),
                    retry_in=backoff.delay,
                )
                time.sleep(backoff.next() or DATABASE_FIRST)
                continue
            if backoff.delay != backoff.first:
                log.info("database.available", doing="start")
            return found
    except StoppedWaiting:
        log.info("robot.stopped", reason="stopped while waiting for the database")
        return None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_waiting(_signum: int, _frame: FrameType | None) -> None:
    raise StoppedWaiting
