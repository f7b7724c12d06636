"""Group commit of outcomes, on a thread of its own.

A connection hands over the outcome of a message and waits until it is committed before it
sends the next one ("sent" is recorded as soon as DATA is accepted). Every outcome waiting
when a transaction starts goes into it, so many connections cost one commit. The loop that
takes outcomes and commits them runs on the thread itself: the next transaction starts as
soon as the previous one ends, without a round trip through a busy event loop in between.
The event loop only hears of a batch once, when it is committed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from robot.logs import first_line
from robot.queue import Finish

BATCH = 500  # outcomes committed in one transaction at most
RETRY_FIRST = 0.5  # seconds before retrying a commit the database refused, doubling
RETRY_MAX = 10.0
STOP_PATIENCE = 20.0  # while stopping, how long to keep trying before giving up

Waiting = tuple[Finish, asyncio.Future[bool]]


class GroupCommit:
    """`record(outcome)` returns when the outcome is committed: True, or False when its row
    was no longer ours (or the database stayed away past STOP_PATIENCE while stopping).

    `commit` writes a batch in one transaction and says, per outcome, whether it applied
    (Outbox.finish_many). A database outage is logged and retried, never dropped.
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

    async def record(self, outcome: Finish) -> bool:
        """Queue `outcome` for the next commit and wait for it."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._thread.start()
        done: asyncio.Future[bool] = loop.create_future()
        self._waiting.put((outcome, done))
        return await done

    def stopping(self) -> None:
        """The robot is stopping: give up on a database that stays away (STOP_PATIENCE)."""
        self._stopping.set()

    async def close(self) -> None:
        """Commit what is queued, then end the thread."""
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
            results = self._commit_until_done([outcome for outcome, _ in batch])
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_resolve, batch, results)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _commit_until_done(self, batch: list[Finish]) -> list[bool]:
        delay, gave_up_at = RETRY_FIRST, None
        while True:
            try:
                return self._commit(batch)
            except SQLAlchemyError as exc:
                self._log.error(
                    "database.unavailable", doing="record", error=first_line(exc), retry_in=delay
                )
            if self._stopping.is_set():
                gave_up_at = gave_up_at or time.monotonic() + STOP_PATIENCE
                if time.monotonic() > gave_up_at:
                    self._log.error("database.gave_up", doing="record", outcomes=len(batch))
                    return [False] * len(batch)
            if self._stopping.is_set():
                time.sleep(delay)
            else:
                self._stopping.wait(delay)  # a stop ends the wait: patience starts counting
            delay = min(delay * 2, RETRY_MAX)


def _resolve(batch: list[Waiting], results: list[bool]) -> None:
    for (_, done), result in zip(batch, results, strict=True):
        if not done.done():
            done.set_result(result)
