"""The dispatcher: claims due rows while the workers' queue has room, and hands them out.

It sleeps until woken: by the poll timer, a NOTIFY, a timer set for a row known to become
due, the end of an account's pause, or a worker that finished the last row of a drain.

An account with a `rate` gets its share, not the connections: a row of it whose token is
not there yet is held aside, in claim order, and the worker takes the next row instead. A
timer wakes a worker when the next token is due; a worker waits for a token only when
nothing else is queued. The claim leaves the rows of accounts with a rate alone and leases
them by a claim of their own, only CLAIM_AHEAD_SECONDS of their rate ahead: a slow
account's backlog neither fills the other accounts' claims nor sits leased in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
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
from robot.daemon.throttle import TokenBucket
from robot.logs import first_line
from robot.outbox.both_sides import Outbox
from robot.outbox.rows import OutboxRow

WAKE_SLACK = 0.05  # seconds after a known due time, so that the database clock agrees
CLAIM_AHEAD_SECONDS = 2.0  # an account with a rate has this much of it claimed, and its burst


class LookAtHeld:
    """Queued to wake one worker: an account with rows held may have a token now."""


LOOK_AT_HELD = LookAtHeld()


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
        self.queue: asyncio.Queue[OutboxRow | LookAtHeld | None] = asyncio.Queue()
        self.held: dict[str, deque[OutboxRow]] = {}  # by account: rows waiting for a token
        self.look_at: float | None = None  # when a worker is to look at them (monotonic)
        self.look_timer: asyncio.TimerHandle | None = None
        self.looks_queued = 0  # LOOK_AT_HELD items in the queue
        self.in_flight = 0
        self.leased: set[int] = set()  # claimed rows queued or on a wire: their leases renewed
        self.account_of: dict[int, str] = {}  # of those rows: their account ("default")
        self.claimed_of: dict[str, int] = {}  # by account: how many of those rows
        self.none_due_until: dict[str, float] = {}  # an account's own claim found too few
        self.looked_past_an_account = False  # the last claim skipped one for none_due_until
        self.claimed_at: dict[int, float] = {}  # of those rows: when their claim began
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
            claim_began = time.monotonic()
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
                self.claimed_at[row.id] = claim_began
                account = row.account or "default"
                self.account_of[row.id] = account
                self.claimed_of[account] = self.claimed_of.get(account, 0) + 1
                self.queue.put_nowait(row)
            if rows:
                self.log.debug("claimed", rows=len(rows))
                continue
            if self.drain and self.nothing_left():
                if self.looked_past_an_account:  # the end only once every account looked
                    self.none_due_until.clear()
                    continue
                self.log.info("drain.done")
                return
            await self._wait_for_wake()

    async def _claim(self, limit: int) -> list[OutboxRow]:
        """Lease up to `limit` due rows of accounts neither paused nor with a rate, then
        the next few of each account with a rate (`_claim_ahead`), each row with the
        addresses of it that are on the suppression list. Raises SQLAlchemyError (nothing
        stays leased)."""
        setup = self.current()
        self.looked_past_an_account = False
        paused = set(self.pauses.paused())
        rates = {a: b.rate for a, b in setup.account_buckets.items() if b.rate > 0}
        left_alone = sorted(paused | set(rates) | set(self.held))
        rows = await self.db.call(
            self.outbox.claim, self.worker_id, limit, setup.message_ids, left_alone
        )
        try:
            for account, rate in rates.items():
                if account not in paused:
                    rows += await self._claim_ahead(account, rate, limit)
            if not rows:
                return rows
            return await self._with_suppressed(rows)
        except SQLAlchemyError:  # claimed but not queued: give them back, or renew keeps them
            await self.release([r.id for r in rows], "claim or suppression look-up failed")
            raise

    async def _claim_ahead(self, account: str, rate: float, limit: int) -> list[OutboxRow]:
        """The next due rows of `account` (rate > 0), so that it has about
        CLAIM_AHEAD_SECONDS of its rate and its burst claimed; none while it has half of
        that, or while its last such claim found too few (until the next poll or host
        insert)."""
        if self.none_due_until.get(account, 0.0) > time.monotonic():
            self.looked_past_an_account = True
            return []
        setup = self.current()
        wanted = claimed_ahead(rate, setup.settings.robot.batch_size)
        room = wanted - self.claimed_of.get(account, 0)
        if room < max(1, wanted // 2):
            return []
        room = min(room, limit)
        rows: list[OutboxRow] = await self.db.call(
            self.outbox.claim, self.worker_id, room, setup.message_ids, (), account
        )
        if len(rows) < room:
            poll = setup.settings.robot.poll_seconds
            self.none_due_until[account] = time.monotonic() + poll
        return rows

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
            if self.held:
                held = self._take_held()
                if held is not None:
                    self.in_flight += 1
                    return held
            item = await self.queue.get()
            if item is None:
                return None
            row = self._admit(item)
            if row is not None:
                return row

    def take_ready(self) -> OutboxRow | None:
        """The next row as `take` gives it, if there is one at once, else None; never
        waits. A worker takes its next row so while the current one is on the wire, to
        write the next envelope with the current body. Nothing once stopping."""
        while not self.stopping.is_set():
            if self.held:
                held = self._take_held()
                if held is not None:
                    self.in_flight += 1
                    return held
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
            if item is None:  # an end-of-queue mark is for `take`
                self.queue.put_nowait(None)
                return None
            row = self._admit(item)
            if row is not None:
                return row
        return None

    def _admit(self, item: OutboxRow | LookAtHeld) -> OutboxRow | None:
        """`item` taken from the queue: the row to send (counted in flight), or None when
        it is a look at the held rows, the robot is stopping (the row is to be released)
        or the row's account has no token for it now (held)."""
        if isinstance(item, LookAtHeld):
            self.looks_queued -= 1
            self.look_at = None
            return None
        setup = self.current()
        if self.queue.qsize() <= setup.settings.robot.batch_size // 2:
            self.room.set()
        if self.stopping.is_set():
            self.to_release.append(item.id)
            return None
        if setup.account_buckets and self._hold_for_rate(item, setup.account_buckets):
            return None  # (no account with a rate: not even a look-up)
        self.in_flight += 1
        return item

    def _hold_for_rate(self, row: OutboxRow, buckets: dict[str, TokenBucket]) -> bool:
        """Hold `row` aside if its account has no token for it now (or has rows held
        already, which go first); True if held."""
        account = row.account or "default"
        held = self.held.get(account)
        if held is not None:
            held.append(row)
            return True
        bucket = buckets.get(account)
        if bucket is None:
            return False
        wait = bucket.delay()
        if wait <= 0:
            return False
        self.held[account] = deque([row])
        self._look_at_held_in(wait)
        return True

    def _take_held(self) -> OutboxRow | None:
        """The first held row whose account has a token now (taking it), if any; a worker
        looks again when the next token is due."""
        if self.stopping.is_set():
            return None
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
                if self.held:
                    self._look_at_held_in(0.0)  # another worker looks at the others
                return row
            soonest = wait if soonest is None else min(soonest, wait)
        if soonest is not None:
            self._look_at_held_in(soonest)
        return None

    def _look_at_held_in(self, seconds: float) -> None:
        """Wake a worker in `seconds` to look at the held rows (unless one is woken sooner)."""
        at = time.monotonic() + seconds
        if self.look_at is not None and self.look_at <= at:
            return
        if self.look_timer is not None:
            self.look_timer.cancel()
        self.look_at = at
        self.look_timer = asyncio.get_running_loop().call_later(seconds, self._queue_look)

    def _queue_look(self) -> None:
        self.look_timer = None
        self.looks_queued += 1
        self.queue.put_nowait(LOOK_AT_HELD)

    def nothing_left(self) -> bool:
        """No row queued, held or on a wire (the end of a drain)."""
        return self.in_flight == 0 and not self.held and self.queue.qsize() == self.looks_queued

    def done(self, row: OutboxRow) -> None:
        """A worker is through with `row` (recorded, released or given up)."""
        self.leased.discard(row.id)
        self.claimed_at.pop(row.id, None)
        self._unclaimed(row.id)
        self.in_flight -= 1
        if self.drain and self.nothing_left():
            self.wake.set()

    def _unclaimed(self, row_id: int) -> None:
        """`row_id` no longer counts among its account's claimed rows; when an account
        with a rate is down to half of what it has claimed ahead, the claim looks again."""
        account = self.account_of.pop(row_id, None)
        if account is None:
            return
        left = self.claimed_of.get(account, 1) - 1
        if left > 0:
            self.claimed_of[account] = left
        else:
            self.claimed_of.pop(account, None)
        setup = self.current()
        bucket = setup.account_buckets.get(account)
        if bucket is not None and bucket.rate > 0:
            wanted = claimed_ahead(bucket.rate, setup.settings.robot.batch_size)
            if wanted - left >= max(1, wanted // 2):
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
            self.claimed_at.pop(row_id, None)
            self._unclaimed(row_id)
        return released or 0

    # -- stopping and waking -------------------------------------------------------------

    def stop(self, workers: int) -> None:
        """Claim nothing more; each of the `workers` gets an end-of-queue mark."""
        for _ in range(workers):
            self.queue.put_nowait(None)
        if self.look_timer is not None:
            self.look_timer.cancel()
        self.wake.set()
        self.room.set()

    async def release_the_rest(self) -> None:
        """After the workers ended: release every row claimed and not sent."""
        while not self.queue.empty():
            row = self.queue.get_nowait()
            if isinstance(row, OutboxRow):
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
        self.none_due_until.clear()
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


def claimed_ahead(rate: float, batch_size: int) -> int:
    """How many rows an account with `rate` has claimed ahead: CLAIM_AHEAD_SECONDS of its
    rate and its burst (a second's worth, at least one), at most a batch."""
    return min(math.ceil(rate * CLAIM_AHEAD_SECONDS + max(1.0, rate)), batch_size)


def _addresses(row: OutboxRow) -> set[str]:
    return addresses_in([row.recipient, row.cc or "", row.bcc or ""])
