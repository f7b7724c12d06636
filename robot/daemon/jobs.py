"""The daemon's timed jobs: they wake the dispatcher, renew and reap leases, keep the
outbox tidy, read the bounce mailbox and the metrics. None of them sends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.exc import SQLAlchemyError

from robot.backoff import DATABASE_FIRST, database_backoff
from robot.bounces.intake import apply_report
from robot.bounces.mailbox import read_new_messages
from robot.daemon.database import DatabaseCalls
from robot.daemon.dispatcher import Dispatcher
from robot.daemon.metrics import Metrics
from robot.daemon.setup import Setup
from robot.daemon.shared_pauses import SharedPauses
from robot.daemon.systemd import notify, watchdog_interval
from robot.errors import ConfigError, MailboxError
from robot.logs import first_line
from robot.outbox.both_sides import Outbox
from robot.outbox.schema import Status

HOUSEKEEPING_SECONDS = 3600.0  # retention and sanity sweeps
METRICS_SECONDS = 15.0  # how often the outbox depth is read for the metrics


def renew_seconds(lease_seconds: float) -> float:
    """How often the leases of the rows in hand are renewed: three times per lease."""
    return max(3.0, lease_seconds / 3)


class Jobs:
    """The timed jobs of one robot, and the scheduler that runs them."""

    def __init__(
        self,
        outbox: Outbox,
        worker_id: str,
        current: Callable[[], Setup],
        dispatcher: Dispatcher,
        db: DatabaseCalls,
        shared_pauses: SharedPauses,
        metrics: Metrics,
        open_connections: Callable[[], dict[str, int]],
        stopping: asyncio.Event,
        log: Any,
    ) -> None:
        self.outbox = outbox
        self.worker_id = worker_id
        self.current = current
        self.dispatcher = dispatcher
        self.db = db
        self.shared_pauses = shared_pauses
        self.metrics = metrics
        self.open_connections = open_connections
        self.stopping = stopping
        self.log = log

    def scheduler(self, loop: asyncio.AbstractEventLoop, *, drain: bool) -> AsyncIOScheduler:
        """The scheduler with every job of these settings, not started."""
        settings = self.current().settings
        robot = settings.robot
        scheduler = AsyncIOScheduler(event_loop=loop, timezone=UTC)
        options: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        scheduler.add_job(
            self.dispatcher.wake.set, "interval", seconds=robot.poll_seconds, **options
        )
        scheduler.add_job(  # an operator's pause or resume counts within poll_seconds
            self.shared_pauses.read, "interval", seconds=robot.poll_seconds, **options
        )
        scheduler.add_job(
            self.reap,
            "interval",
            seconds=max(5.0, robot.lease_seconds / 3),
            next_run_time=datetime.now(UTC),
            **options,
        )
        scheduler.add_job(
            self.renew, "interval", seconds=renew_seconds(robot.lease_seconds), **options
        )
        scheduler.add_job(self.housekeeping, "interval", seconds=HOUSEKEEPING_SECONDS, **options)
        if settings.bounces.mailbox and not drain:
            scheduler.add_job(
                self.poll_bounces,
                "interval",
                seconds=settings.bounces.poll_seconds,
                next_run_time=datetime.now(UTC),
                **options,
            )
        if settings.metrics.listen:
            scheduler.add_job(self.measure, "interval", seconds=METRICS_SECONDS, **options)
        interval = watchdog_interval()
        if interval:
            scheduler.add_job(notify, "interval", args=["WATCHDOG=1"], seconds=interval, **options)
        return scheduler

    async def reap(self) -> None:
        """Take back rows whose robot stopped renewing their lease (never those this robot
        has in hand: see Claims.reap_expired)."""
        found = await self.db.logged(
            "reap",
            self.outbox.reap_expired,
            self.current().settings.robot.max_errors,
            self.worker_id,
            frozenset(self.dispatcher.leased),
        )
        if found is None:
            return
        reaped, failed = found
        if failed:
            self.log.error("lease.expired_too_often", rows=len(failed), ids=failed[:20])
        if reaped:
            self.log.warning("lease.expired", rows=len(reaped), ids=reaped[:20])
            self.dispatcher.wake.set()

    async def renew(self) -> None:
        """Extend the leases of the rows this robot has in hand. A renewal the database did
        not take (locked, or away) is tried again until it is written, or until the next
        renewal is due: a lease that runs out lets another robot send the row a second time."""
        outage = database_backoff()
        next_renewal = time.monotonic() + renew_seconds(self.current().settings.robot.lease_seconds)
        while True:
            try:
                await self.db.call(
                    self.outbox.renew, self.worker_id, sorted(self.dispatcher.leased)
                )
                return
            except SQLAlchemyError as exc:
                error = first_line(exc)
            wait = outage.next() or DATABASE_FIRST
            again = not self.stopping.is_set() and time.monotonic() + wait < next_renewal
            self.log.error(
                "database.unavailable", doing="renew", error=error, retry_in=wait if again else None
            )
            if not again:
                return
            try:
                await asyncio.wait_for(self.stopping.wait(), wait)
            except TimeoutError:
                pass

    async def housekeeping(self) -> None:
        """Retention (finished rows older than retention_days) and unreadable schedules."""
        days = self.current().settings.robot.retention_days
        purged = await self.db.logged("housekeeping", self.outbox.purge_finished, days)
        failed = await self.db.logged("housekeeping", self.outbox.fail_unschedulable)
        if purged:
            self.log.info("retention.purged", rows=purged, days=days)
        if failed:
            self.log.warning("rows.unschedulable", rows=len(failed), ids=failed[:20])

    async def poll_bounces(self) -> None:
        """Read the new messages of the bounce mailbox and apply the delivery status
        notifications about rows this robot sent. A mailbox that cannot be reached, or a
        database that is down, logs one error; the next poll tries again."""
        bounces = self.current().settings.bounces
        try:
            read, acted = await asyncio.to_thread(
                read_new_messages,
                bounces,
                lambda raw: apply_report(raw, self.outbox, self.log),
                stop=self.stopping.is_set,
            )
        except (MailboxError, ConfigError) as exc:
            self.log.error(
                "bounces.mailbox_unavailable", error=str(exc), retry_in=bounces.poll_seconds
            )
            return
        except SQLAlchemyError as exc:
            self.log.error("database.unavailable", doing="bounces", error=first_line(exc))
            return
        if read:
            self.log.info("bounces.read", messages=read, acted_on=acted)

    async def measure(self) -> None:
        """Read the outbox depth and the open connections into the metrics."""
        if not self.current().settings.metrics.listen:
            return
        depth = await self.db.logged("metrics", self.outbox.depth)
        if depth is None:
            return
        counts, due = depth
        self.metrics.set_queue(counts, due, tuple(status.value for status in Status))
        self.metrics.set_connections(self.open_connections)
