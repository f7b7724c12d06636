"""The daemon's calls into the outbox, off the event loop: on a small thread pool, and for
writes that must not be lost, retried through a database outage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from robot.backoff import database_backoff
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
