"""The dispatcher: claims due rows while the workers' queue has room, and hands them out.

It sleeps until woken: by the poll timer, a NOTIFY, a timer set for a row known to become
due, the end of an account's pause, or a worker that finished the last row of a drain.

An account with a `rate` gets its share, not the connections: a row of it whose token is
not there yet is held aside, in claim order, and the worker takes the next row instead; a
worker waits for a token only when nothing else is queued. While an account has rows held,
the claim leaves its other rows alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from robot.backoff import database_backoff
from robot.compose.message import addresses_in
from robot.daemon.database import DatabaseCalls
from robot.daemon.pauses import AccountPauses
from robot.daemon.setup import Setup
from robot.logs import first_line
from robot.outbox.both_sides import Outbox
from robot.outbox.rows import OutboxRow

WAKE_SLACK = 0.05  # seconds after a known due time, so that the database clock agrees


class Dispatcher:
    """Claims rows for `worker_id` and queues them for the connection workers."""

    def __init__(
        self,
        outbox: Outbox,
        worker_id: str,
        current: Callable[[], Setup],
        db: DatabaseCalls,
        pauses: AccountPauses,
        stopping: asyncio.Event,
        log: Any,
        *,
        drain: bool,
    ) -> None:
        self.outbox = outbox
        self.worker_id = worker_id
        self.current = current
        self.db = db
        self.pauses = pauses
        self.stopping = stopping
        self.log = log
        self.drain = drain
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.queue: asyncio.Queue[OutboxRow | None] = asyncio.Queue()
        self.held: dict[str, deque[OutboxRow]] = {}  # by account: rows waiting for a token
        self.in_flight = 0
        self.leased: set[int] = set()  # claimed rows queued or on a wire: their leases renewed
        self.to_release: list[int] = []  # taken from the queue after stop: released, not sent
        self.wake_times: set[float] = set()  # wake-up timers set (monotonic, rounded)

    # -- the claim loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Claim while not stopping; in a drain, stop the robot once nothing is left."""
        outage = database_backoff()
        while not self.stopping.is_set():
            high_water = self.current().settings.robot.batch_size
            if self.queue.qsize() > high_water // 2:
                self.room.clear()
                await self.room.wait()
                continue
            self.wake.clear()
            try:
                rows = await self._claim(high_water - self.queue.qsize())
                outage.reset()
            except SQLAlchemyError as exc:
                self.log.error(
                    "database.unavailable",
                    doing="claim",
                    error=first_line(exc),
                    retry_in=outage.delay,
                )
                await self._sleep(outage.next() or 0.0)
                continue
            if self.stopping.is_set():
                await self.release([r.id for r in rows], "robot stopping")
                return
            for row in rows:
                self.leased.add(row.id)
                self.queue.put_nowait(row)
            if rows:
                self.log.debug("claimed", rows=len(rows))
                continue
            if self.drain and self.queue.empty() and self.in_flight == 0 and not self.held:
                self.log.info("drain.done")
                return
            await self._wait_for_wake()

    async def _claim(self, limit: int) -> list[OutboxRow]:
        """Lease up to `limit` due rows of accounts neither paused nor waiting for their rate,
        each with the addresses of it that are on the suppression list. Raises
        SQLAlchemyError (nothing stays leased)."""
        setup = self.current()
        left_alone = [*self.pauses.paused(), *self.held]
        rows = await self.db.call(
            self.outbox.claim, self.worker_id, limit, setup.message_ids, left_alone
        )
        if not rows:
            return rows
        try:
            return await self._with_suppressed(rows)
        except SQLAlchemyError:  # claimed but not queued: give them back, or renew keeps them
            await self.release([r.id for r in rows], "suppression look-up failed")
            raise

    async def _with_suppressed(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """The rows, each with its addresses found in the suppression list (one query)."""
        wanted = {r.id: _addresses(r) for r in rows if not r.transactional}
        everyone = set().union(*wanted.values()) if wanted else set()
        if not everyone:
            return rows
        hits = set(await self.db.call(self.outbox.is_suppressed, everyone))
        if not hits:
            return rows
        return [
            dataclasses.replace(r, suppressed=frozenset(wanted[r.id] & hits))
            if wanted.get(r.id, set()) & hits
            else r
            for r in rows
        ]

    # -- the workers' side ---------------------------------------------------------------

    async def take(self) -> OutboxRow | None:
        """The next row to send, or None when the worker is to stop. The row's account has
        given it a token of its rate (taken here: the worker does not wait for it)."""
        while True:
            waited_for_token: float | None = None
            if self.held:
                row, waited_for_token = self._take_held()
                if row is not None:
                    self.in_flight += 1
                    return row
            if waited_for_token is None:
                row = await self.queue.get()
            else:  # every held account waits for its rate: wait too, or take a new row
                try:
                    row = await asyncio.wait_for(self.queue.get(), waited_for_token)
                except TimeoutError:
                    continue
            if row is None:
                return None
            if self.queue.qsize() <= self.current().settings.robot.batch_size // 2:
                self.room.set()
            if self.stopping.is_set():
                self.to_release.append(row.id)
                continue
            if self._hold_for_rate(row):
                continue
            self.in_flight += 1
            return row

    def _hold_for_rate(self, row: OutboxRow) -> bool:
        """Hold `row` aside if its account has no token for it now (or has rows held
        already, which go first); True if held. No account with a rate: one look-up."""
        account = row.account or "default"
        held = self.held.get(account)
        if held is not None:
            held.append(row)
            return True
        bucket = self.current().account_buckets.get(account)
        if bucket is None or bucket.delay() <= 0:
            return False
        self.held[account] = deque([row])
        return True

    def _take_held(self) -> tuple[OutboxRow | None, float | None]:
        """The first held row whose account has a token now (taking it); else None and the
        seconds until the first account has one (None while stopping: no more rows)."""
        if self.stopping.is_set():
            return None, None
        buckets = self.current().account_buckets
        soonest: float | None = None
        for account, held in self.held.items():
            bucket = buckets.get(account)  # a reload may have lifted the account's rate
            wait = bucket.delay() if bucket is not None else 0.0
            if wait <= 0:
                row = held.popleft()
                if not held:
                    del self.held[account]
                    self.wake.set()  # its other due rows may be claimed again
                return row, None
            soonest = wait if soonest is None else min(soonest, wait)
        return None, soonest

    def done(self, row: OutboxRow) -> None:
        """A worker is through with `row` (recorded, released or given up)."""
        self.leased.discard(row.id)
        self.in_flight -= 1
        if self.drain and self.in_flight == 0 and self.queue.empty() and not self.held:
            self.wake.set()

    async def release(self, ids: list[int], reason: str) -> int:
        """Release claimed rows untried: their attempt is not counted."""
        if not ids:
            return 0
        released = await self.db.until_done(
            "release", self.outbox.release, ids, self.worker_id, reason
        )
        for row_id in ids:
            self.leased.discard(row_id)
        return released or 0

    # -- stopping and waking -------------------------------------------------------------

    def stop(self, workers: int) -> None:
        """Claim nothing more; each of the `workers` gets an end-of-queue mark."""
        for _ in range(workers):
            self.queue.put_nowait(None)
        self.wake.set()
        self.room.set()

    async def release_the_rest(self) -> None:
        """After the workers ended: release every row claimed and not sent."""
        while not self.queue.empty():
            row = self.queue.get_nowait()
            if row is not None:
                self.to_release.append(row.id)
        for held in self.held.values():
            self.to_release.extend(row.id for row in held)
        self.held.clear()
        to_release, self.to_release = self.to_release, []
        if to_release:
            released = await self.release(to_release, "robot stopping or account paused")
            self.log.info("claim.released", rows=released)

    def wake_later(self, seconds: float) -> None:
        """Wake the dispatcher in `seconds` (a row known to become due then). Timers are
        rounded to a tenth of a second so that a burst of deferrals costs one timer."""
        at = round(time.monotonic() + max(0.0, seconds) + WAKE_SLACK, 1)
        if at in self.wake_times:
            return
        self.wake_times.add(at)

        def wake() -> None:
            self.wake_times.discard(at)
            self.wake.set()

        asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), wake)

    def on_new_rows(self) -> None:
        """A host inserted rows: claim what is due now, and look again when their grace
        delay is over."""
        self.wake.set()
        if self.outbox.grace_seconds > 0:
            self.wake_later(self.outbox.grace_seconds)

    async def _wait_for_wake(self) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), self.pauses.seconds_to_next_end())
        except TimeoutError:
            pass  # a paused account may send again

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass


def _addresses(row: OutboxRow) -> set[str]:
    return addresses_in([row.recipient, row.cc or "", row.bcc or ""])
