"""The daemon: timed jobs wake a dispatcher that claims due rows; connection workers send them.

SIGTERM/SIGINT: claim nothing more, finish the message on each wire, release the rest of the
claim, QUIT, exit 0. SIGHUP: reload robot.ini (an invalid one is refused, the old one stays).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from robot.backoff import ACCOUNT_FIRST, ACCOUNT_LONGEST, Backoff, database_backoff
from robot.bounces.dsn import parse as parse_report
from robot.bounces.mailbox import read_new_messages
from robot.compose.dkim import DkimSigner, load_signer
from robot.compose.message import Composed, addresses_in, compose
from robot.config import Account, Settings
from robot.daemon.metrics import Metrics
from robot.daemon.systemd import notify, watchdog_interval
from robot.daemon.throttle import TokenBucket
from robot.errors import (
    BadRowError,
    ConfigError,
    DeliveryError,
    MailboxError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransportFault,
)
from robot.logs import first_line, get_logger
from robot.outbox.both_sides import outbox_for
from robot.outbox.engine import libpq_dsn
from robot.outbox.group_commit import AsyncGroupCommit, GroupCommit
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision, Finish, OutboxRow
from robot.outbox.schema import Status
from robot.outbox.shared import MIB
from robot.outbox.wakeup import listen
from robot.outcome.replies import Outcome, Reply, Stage, classify, suppresses
from robot.outcome.retry import RetryPolicy
from robot.send.direct import DirectResult
from robot.send.direct import deliver as deliver_direct
from robot.send.relay import SendResult, SmtpConnection

P = ParamSpec("P")
T = TypeVar("T")
DOMAIN = re.compile(r"^[A-Za-z0-9.-]+$")
HOUSEKEEPING_SECONDS = 3600.0  # retention and sanity sweeps
WAKE_SLACK = 0.05  # seconds after a known due time, so that the database clock agrees
GIL_SWITCH_SECONDS = 0.0005  # sys.setswitchinterval (default 0.005): bench/ measured +5%
METRICS_SECONDS = 15.0  # how often the outbox depth is read for the metrics


class Robot:
    """One robot process: owns the scheduler, the dispatcher and `connections` workers."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        drain: bool = False,
        reload: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox_for(settings, engine)
        self.worker_id = f"{settings.robot_name}:{os.getpid()}"
        self.drain = drain
        self.reload = reload
        self.retry = RetryPolicy(settings.robot.retry_minutes, settings.robot.max_errors)
        self.bucket = TokenBucket(settings.robot.rate)
        self.account_buckets = _account_buckets(settings)
        self.signers = _signers(settings)  # raises ConfigError for a bad DKIM key
        self.log = get_logger("robot.daemon.robot").bind(robot=self.worker_id)
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.queue: asyncio.Queue[OutboxRow | None] = asyncio.Queue()
        self.in_flight = 0
        self.unsent: list[int] = []  # taken from the queue after stop: released, not sent
        self.held: set[int] = set()  # claimed rows in the queue or on a wire: leases renewed
        self.worker_connections: list[dict[str, SmtpConnection]] = []
        self.metrics = Metrics()
        self.metrics_url: str | None = None
        self.wake_times: set[float] = set()  # wake-up timers set (monotonic, rounded)
        self.group_commit: GroupCommit | AsyncGroupCommit
        if engine.dialect.name == "postgresql":
            dsn = libpq_dsn(engine.url)
            self.group_commit = AsyncGroupCommit(self.outbox, self.worker_id, dsn, self.log)
        else:
            self.group_commit = GroupCommit(
                lambda outcomes: self.outbox.finish_many(self.worker_id, outcomes), self.log
            )
        self.row_suppressed: dict[int, set[str]] = {}
        self.paused_until: dict[str, float] = {}
        self.fault_backoff: dict[str, Backoff] = {}
        self.faults = 0
        self.counts: dict[str, int] = {}
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="robot-db")

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped (or, with drain, until nothing is due). Returns the exit code."""
        loop = asyncio.get_running_loop()
        # A database thread gives up the GIL around each statement and must win it back from
        # the event loop; the default 5 ms interval made every such hand-over slow.
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_settings)
        scheduler = self._scheduler(loop)
        workers = [
            asyncio.create_task(self._worker(), name=f"connection-{n}")
            for n in range(self.settings.robot.connections)
        ]
        if self.settings.metrics.listen:
            host, port = self.metrics.serve(self.settings.metrics.listen)
            self.metrics_url = f"http://{host}:{port}/metrics"
            self.log.info("metrics.listening", url=self.metrics_url)
        await self._housekeeping()  # once at start, then hourly
        await self._measure()
        dispatcher = asyncio.create_task(self._dispatch(), name="dispatcher")
        listener = None
        if self.outbox.engine.dialect.name == "postgresql":
            listener = asyncio.create_task(
                listen(self.outbox.engine.url, self._on_new_rows, self.log, self.stopping),
                name="listener",
            )
        scheduler.start()
        notify("READY=1")
        self.log.info(
            "robot.started",
            connections=self.settings.robot.connections,
            grace_minutes=self.settings.robot.grace_minutes,
            rate=self.settings.robot.rate,
            drain=self.drain,
        )
        try:
            done, _ = await asyncio.wait(
                [dispatcher, *workers], return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                if task.exception() is not None:  # a crashed side task stops the daemon
                    self.log.error(
                        "robot.crashed", task=task.get_name(), error=repr(task.exception())
                    )
                    self.stop()
                    raise task.exception()  # type: ignore[misc]
        finally:
            notify("STOPPING=1")
            scheduler.shutdown(wait=False)
            self.metrics.close()
            self.stop()
            side = [dispatcher, *workers, *([listener] if listener else [])]
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            await self.group_commit.close()  # outcomes still being committed
            await self._release_unsent()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=True)
        self.log.info("robot.stopped", **self.counts)
        return 1 if self.drain and self.faults else 0

    def stop(self) -> None:
        """Claim nothing more; workers finish the message on their wire and exit."""
        if not self.stopping.is_set():
            self.log.info("robot.stopping")
            self.stopping.set()
            self.group_commit.stopping()
            for _ in range(self.settings.robot.connections):
                self.queue.put_nowait(None)
        self.wake.set()
        self.room.set()

    def reload_settings(self) -> None:
        """SIGHUP: read robot.ini again; keep the old settings if the new ones are invalid."""
        if self.reload is None:
            return
        try:
            new = self.reload()
            signers = _signers(new)
        except ConfigError as exc:
            self.log.error("config.reload_refused", reason=str(exc))
            return
        if new.database.url != self.settings.database.url:
            self.log.warning("config.reload_database_ignored", reason="restart to change it")
        if new.robot.connections != self.settings.robot.connections:
            self.log.warning("config.reload_connections_ignored", reason="restart to change it")
        self.settings = new
        self.outbox.grace_seconds = new.robot.grace_minutes * 60
        self.outbox.lease_seconds = new.robot.lease_seconds
        self.outbox.max_body_bytes = int(new.robot.max_body_mb * MIB)
        self.outbox.max_attachment_bytes = int(new.attachments.max_mb * MIB)
        self.retry = RetryPolicy(new.robot.retry_minutes, new.robot.max_errors)
        self.bucket = TokenBucket(new.robot.rate)
        self.account_buckets = _account_buckets(new)
        self.signers = signers
        self.log.info("config.reloaded", path=new.path)
        self.wake.set()

    def _scheduler(self, loop: asyncio.AbstractEventLoop) -> AsyncIOScheduler:
        """Timed jobs only wake or claim; they never send."""
        robot = self.settings.robot
        scheduler = AsyncIOScheduler(event_loop=loop, timezone=UTC)
        options: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        scheduler.add_job(self.wake.set, "interval", seconds=robot.poll_seconds, **options)
        scheduler.add_job(
            self._reap,
            "interval",
            seconds=max(5.0, robot.lease_seconds / 3),
            next_run_time=datetime.now(UTC),
            **options,
        )
        scheduler.add_job(
            self._renew, "interval", seconds=max(3.0, robot.lease_seconds / 3), **options
        )
        scheduler.add_job(self._housekeeping, "interval", seconds=HOUSEKEEPING_SECONDS, **options)
        if self.settings.bounces.mailbox and not self.drain:
            scheduler.add_job(
                self._poll_bounces,
                "interval",
                seconds=self.settings.bounces.poll_seconds,
                next_run_time=datetime.now(UTC),
                **options,
            )
        if self.settings.metrics.listen:
            scheduler.add_job(self._measure, "interval", seconds=METRICS_SECONDS, **options)
        interval = watchdog_interval()
        if interval:
            scheduler.add_job(notify, "interval", args=["WATCHDOG=1"], seconds=interval, **options)
        return scheduler

    # -- database access off the event loop ---------------------------------------------

    async def _db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def _db_until_done(
        self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T | None:
        """Retry a write through a database outage; give up only while stopping."""
        outage = database_backoff()
        while True:
            try:
                return await self._db(fn, *args, **kwargs)
            except SQLAlchemyError as exc:
                self.log.error(
                    "database.unavailable", doing=what, error=first_line(exc), retry_in=outage.delay
                )
            wait = outage.next(self.stopping.is_set())
            if wait is None:
                self.log.error("database.gave_up", doing=what)
                return None
            await asyncio.sleep(wait)

    async def _reap(self) -> None:
        try:
            reaped, failed = await self._db(
                self.outbox.reap_expired, self.settings.robot.max_errors
            )
        except SQLAlchemyError as exc:
            self.log.error("database.unavailable", doing="reap", error=first_line(exc))
            return
        if failed:
            self.log.error("lease.expired_too_often", rows=len(failed), ids=failed[:20])
        if reaped:
            self.log.warning("lease.expired", rows=len(reaped), ids=reaped[:20])
            self.wake.set()

    async def _housekeeping(self) -> None:
        """Retention (finished rows older than retention_days) and unreadable schedules."""
        try:
            purged = await self._db(self.outbox.purge_finished, self.settings.robot.retention_days)
            failed = await self._db(self.outbox.fail_unschedulable)
        except SQLAlchemyError as exc:
            self.log.error("database.unavailable", doing="housekeeping", error=first_line(exc))
            return
        if purged:
            self.log.info("retention.purged", rows=purged, days=self.settings.robot.retention_days)
        if failed:
            self.log.warning("rows.unschedulable", rows=len(failed), ids=failed[:20])

    async def _poll_bounces(self) -> None:
        """Read the new messages of the bounce mailbox and apply the delivery status
        notifications about rows this robot sent. A mailbox that cannot be reached, or a
        database that is down, logs one error; the next poll tries again."""
        bounces = self.settings.bounces

        def apply(raw: bytes) -> bool:  # in the mailbox thread: True when it was acted on
            try:
                report = parse_report(raw)
            except Exception:  # parse is meant never to raise: one odd message must not jam
                self.log.exception("bounce.unreadable")
                return False
            if not report.failures:
                self.log.debug("bounce.ignored", kind=report.kind, delayed=len(report.delayed))
                return False
            found = self.outbox.record_dsn(
                report.failures,
                row_id=report.verp_id,
                message_id=report.original_message_id,
                reporter=report.reporter,
            )
            recipients = [f"{f.address} {f.status}" for f in report.failures]
            if found is None:
                self.log.info(
                    "bounce.unmatched",
                    message_id=report.original_message_id,
                    verp_id=report.verp_id,
                    recipients=recipients,
                )
                return False
            event = "message.bounced_after_delivery" if found[1] else "bounce.recorded"
            self.log.warning(event, id=found[0], recipients=recipients, reporter=report.reporter)
            return True

        try:
            read, acted = await asyncio.to_thread(
                read_new_messages, bounces, apply, stop=self.stopping.is_set
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

    async def _measure(self) -> None:
        """Read the outbox depth and the open connections into the metrics."""
        if not self.settings.metrics.listen:
            return
        try:
            counts, due = await self._db(self.outbox.depth)
        except SQLAlchemyError as exc:
            self.log.error("database.unavailable", doing="metrics", error=first_line(exc))
            return
        self.metrics.set_queue(counts, due, tuple(status.value for status in Status))
        self.metrics.set_connections(self._open_connections)

    def _open_connections(self) -> dict[str, int]:
        found = dict.fromkeys(self.settings.accounts, 0)
        for connections in self.worker_connections:
            for name, connection in connections.items():
                found[name] = found.get(name, 0) + int(connection.is_open)
        return found

    async def _renew(self) -> None:
        try:
            await self._db(self.outbox.renew, self.worker_id, sorted(self.held))
        except SQLAlchemyError as exc:
            self.log.error("database.unavailable", doing="renew", error=first_line(exc))

    # -- dispatcher --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        outage = database_backoff()
        while not self.stopping.is_set():
            high_water = self.settings.robot.batch_size
            if self.queue.qsize() > high_water // 2:
                self.room.clear()
                await self.room.wait()
                continue
            self.wake.clear()
            rows: list[OutboxRow] = []
            try:
                rows = await self._db(
                    self.outbox.claim,
                    self.worker_id,
                    high_water - self.queue.qsize(),
                    _message_ids(self.settings),
                    self._paused_accounts(),
                )
                if rows:
                    await self._look_up_suppressed(rows)
                outage.reset()
            except SQLAlchemyError as exc:
                doing = "suppression look-up" if rows else "claim"
                self.log.error(
                    "database.unavailable",
                    doing=doing,
                    error=first_line(exc),
                    retry_in=outage.delay,
                )
                if rows:  # claimed but not queued: give them back, or renew keeps them forever
                    await self._db_until_done(
                        "release",
                        self.outbox.release,
                        [r.id for r in rows],
                        self.worker_id,
                        "suppression look-up failed",
                    )
                await self._sleep(outage.next() or 0.0)
                continue
            if self.stopping.is_set():
                await self._db_until_done(
                    "release",
                    self.outbox.release,
                    [r.id for r in rows],
                    self.worker_id,
                    "robot stopping",
                )
                return
            for row in rows:
                self.held.add(row.id)
                self.queue.put_nowait(row)
            if rows:
                self.log.debug("claimed", rows=len(rows))
                continue
            if self.drain and self.queue.empty() and self.in_flight == 0:
                self.log.info("drain.done")
                self.stop()
                return
            await self._wait_for_wake()

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

    def _on_new_rows(self) -> None:
        """A host inserted rows: claim what is due now, and look again when their grace
        delay is over."""
        self.wake.set()
        if self.outbox.grace_seconds > 0:
            self.wake_later(self.outbox.grace_seconds)

    async def _wait_for_wake(self) -> None:
        now = time.monotonic()
        deadlines = [until for until in self.paused_until.values() if until > now]
        timeout = min(deadlines) - now if deadlines else None
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except TimeoutError:
            pass  # a paused account may send again

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _look_up_suppressed(self, rows: list[OutboxRow]) -> None:
        wanted = {r.id: _addresses(r) for r in rows if not r.transactional}
        everyone = set().union(*wanted.values()) if wanted else set()
        hits = set(await self._db(self.outbox.is_suppressed, everyone)) if everyone else set()
        for row_id, addresses in wanted.items():
            if addresses & hits:
                self.row_suppressed[row_id] = addresses & hits

    def _paused_accounts(self) -> list[str]:
        now = time.monotonic()
        return [name for name, until in self.paused_until.items() if until > now]

    # -- connection workers ------------------------------------------------------------

    async def _worker(self) -> None:
        connections: dict[str, SmtpConnection] = {}
        self.worker_connections.append(connections)
        try:
            while True:
                row = await self.queue.get()
                if row is None:
                    return
                if self.queue.qsize() <= self.settings.robot.batch_size // 2:
                    self.room.set()
                if self.stopping.is_set():
                    self.unsent.append(row.id)
                    continue
                self.in_flight += 1
                try:
                    await self._deliver(row, connections)
                finally:
                    self.held.discard(row.id)
                    self.in_flight -= 1
                    if self.drain and self.in_flight == 0 and self.queue.empty():
                        self.wake.set()
        finally:
            for connection in connections.values():
                await connection.close()

    async def _deliver(self, row: OutboxRow, connections: dict[str, SmtpConnection]) -> None:
        log = self.log.bind(id=row.id, message_id=row.message_id)
        account = self.settings.accounts.get(row.account or "default")
        if account is None:
            await self._bad_row(
                row,
                f"unknown account {row.account!r}: robot.ini has no [account:{row.account}]",
                log,
            )
            return
        if account.name in self._paused_accounts():
            await self._give_back(row, "account paused after a transport fault")
            return
        try:
            message = compose(
                row,
                account,
                now=datetime.now(UTC),
                attachments=self.settings.attachments,
                max_body_mb=self.settings.robot.max_body_mb,
                bounces=self.settings.bounces,
            )
            signer = self.signers.get(account.name)
            if signer is not None:
                message = signer.sign_composed(message)
        except BadRowError as exc:
            await self._bad_row(row, str(exc), log)
            return
        except Exception as exc:  # a value compose did not foresee must not stop the robot
            log.exception("compose.crashed")
            await self._bad_row(row, f"cannot build the message: {type(exc).__name__}: {exc}", log)
            return
        blocked = self.row_suppressed.pop(row.id, set())
        if blocked:
            kept = tuple(r for r in message.recipients if r.lower() not in blocked)
            if not kept:
                reason = f"suppressed address: {', '.join(sorted(blocked))}"
                await self._finish(
                    row, Decision(Status.SUPPRESSED, None, reason, "suppressed"), log
                )
                return
            await self._db_until_done(
                "event",
                self.outbox.add_event,
                row.id,
                "suppressed",
                f"not sent to {', '.join(sorted(blocked))}",
            )
            message = Composed(message.envelope_from, kept, message.data, message.message_id)
        await self._send(row, account, message, connections, log)

    async def _send(
        self,
        row: OutboxRow,
        account: Account,
        message: Composed,
        connections: dict[str, SmtpConnection],
        log: Any,
    ) -> None:
        if account.smtp.direct:
            await self._throttle(account)
            started = time.monotonic()
            outcome = await deliver_direct(account, message)
            self.metrics.send_seconds.observe(time.monotonic() - started)
            await self._direct_result(row, outcome, log)
            return
        for _ in range(2):  # a second try only when a reused connection went stale before DATA
            connection = connections.get(account.name)
            if connection is not None and (
                connection.account is not account or not connection.is_open or connection.exhausted
            ):
                await connection.close()
                connection = None
            if connection is None:
                connection = SmtpConnection(account)
                try:
                    greeting = await connection.open()
                except TransportFault as exc:
                    await self._transport_fault(account, row, exc)
                    return
                self.fault_backoff.pop(account.name, None)
                connections[account.name] = connection
                log.debug("smtp.connected", account=account.name, greeting=greeting)
            reused = connection.sent_on_connection > 0
            await self._throttle(account)
            started = time.monotonic()
            try:
                result = await connection.send(message)
            except TransientDeliveryError as exc:
                if exc.before_data and reused:
                    log.info("smtp.stale_connection", account=account.name, error=str(exc))
                    continue
                await self._failed_delivery(row, exc, log)
                return
            except PermanentDeliveryError as exc:
                await self._failed_delivery(row, exc, log)
                return
            except TransportFault as exc:  # 530: the server wants a login or TLS first
                await connection.close()
                await self._transport_fault(account, row, exc)
                return
            finally:
                self.metrics.send_seconds.observe(time.monotonic() - started)
            await self._sent(row, result, log)
            if connection.exhausted:
                await connection.close()
            return

    async def _direct_result(self, row: OutboxRow, result: DirectResult, log: Any) -> None:
        """Record a direct delivery: sent if any domain accepted a recipient, refusals in the
        history. A domain's trouble is the domain's, never the account's: nothing pauses."""
        for domain in result.domains:
            log.info(
                "direct.domain",
                domain=domain.domain,
                host=domain.host,
                tls=domain.tls.value,
                accepted=len(domain.accepted),
                refused=len(domain.refusals),
                skipped=list(domain.skipped),
            )
        refusals = result.refusals
        first = result.first_accepted
        decisive = None if first is not None else result.decisive()
        for refusal in refusals:
            if len(refusals) > 1 or first is not None:  # a lone refusal is the row's own
                await self._db_until_done(
                    "event", self.outbox.add_event, row.id, "refused", refusal.detail, refusal.code
                )
            if refusal.suppress and refusal is not decisive:
                await self._db_until_done(
                    "suppress", self.outbox.suppress, refusal.recipient, f"bounced: {refusal.reply}"
                )
        if first is not None:
            decision = self.retry.decide(Outcome.SENT, row.attempts, "")
            await self._finish(row, decision, log, code=first.code, reply=first.reply)
            return
        assert decisive is not None
        decision = self.retry.decide(decisive.outcome, row.attempts, decisive.reason)
        suppress = decisive.recipient if decisive.suppress else None
        await self._finish(
            row, decision, log, code=decisive.code, reply=decisive.reply, suppress=suppress
        )

    async def _throttle(self, account: Account) -> None:
        """Wait for the account's `rate`, then the robot's: a token of the robot's bucket is
        never held while the account's bucket makes us wait."""
        bucket = self.account_buckets.get(account.name)
        if bucket is not None:
            await bucket.acquire()
        await self.bucket.acquire()

    async def _sent(self, row: OutboxRow, result: SendResult, log: Any) -> None:
        decision = self.retry.decide(Outcome.SENT, row.attempts, "")
        for address, (code, text) in result.refused.items():
            await self._db_until_done(
                "event", self.outbox.add_event, row.id, "refused", f"{address}: {code} {text}", code
            )
            if suppresses(Reply(code, text, Stage.RCPT)):  # a 5.1.x unknown cc/bcc
                await self._db_until_done(
                    "suppress", self.outbox.suppress, address, f"bounced: {code} {text}"
                )
        await self._finish(row, decision, log, code=result.code, reply=result.reply)

    async def _failed_delivery(self, row: OutboxRow, exc: DeliveryError, log: Any) -> None:
        reply = Reply(
            exc.code, exc.reply or str(exc), Stage(exc.stage) if exc.stage else Stage.DATA
        )
        outcome = classify(reply)
        reason = reply.describe()
        if exc.recipient:
            reason = f"{exc.recipient}: {reason}"
        decision = self.retry.decide(outcome, row.attempts, reason)
        suppress = None
        if outcome is Outcome.BOUNCED and suppresses(reply):
            suppress = exc.recipient  # None at DATA with several recipients: whose fault?
        if len(exc.refused) > 1:  # every recipient refused: each refusal goes in the history
            for address, (code, text) in exc.refused.items():
                await self._db_until_done(
                    "event",
                    self.outbox.add_event,
                    row.id,
                    "refused",
                    f"{address}: {code} {text}",
                    code,
                )
                if address != suppress and suppresses(Reply(code, text, Stage.RCPT)):
                    await self._db_until_done(
                        "suppress", self.outbox.suppress, address, f"bounced: {code} {text}"
                    )
        await self._finish(
            row, decision, log, code=exc.code, reply=exc.reply or str(exc), suppress=suppress
        )

    async def _bad_row(self, row: OutboxRow, reason: str, log: Any) -> None:
        await self._finish(row, Decision(Status.FAILED, None, reason, "failed"), log)

    async def _finish(
        self,
        row: OutboxRow,
        decision: Decision,
        log: Any,
        *,
        code: int | None = None,
        reply: str | None = None,
        suppress: str | None = None,
    ) -> None:
        suppressing = ((suppress, f"bounced: {reply}"),) if suppress else ()
        recorded = await self._record(Finish(row.id, decision, code, reply, None, suppressing))
        if decision.retry_after is not None:  # after the commit: the row is due by then
            self.wake_later(decision.retry_after.total_seconds())
        status = decision.status.value
        self.counts[status] = self.counts.get(status, 0) + 1
        self.metrics.messages.labels(status).inc()
        event = log.info if decision.status is Status.SENT else log.warning
        event(
            f"message.{status}",
            code=code,
            attempts=row.attempts,
            reason=decision.last_error,
            recorded=bool(recorded),
        )

    async def _record(self, outcome: Finish) -> bool:
        """Hand an outcome to the group commit and wait until it is committed (or given
        up): the connection sends its next message only after that."""
        return await self.group_commit.record(outcome)

    async def _transport_fault(self, account: Account, row: OutboxRow, exc: TransportFault) -> None:
        """Stop sending on the account for a while; the row goes back untouched."""
        self.faults += 1
        self.metrics.transport_faults.labels(account.name).inc()
        schedule = self.fault_backoff.setdefault(
            account.name, Backoff(ACCOUNT_FIRST, ACCOUNT_LONGEST)
        )
        backoff = schedule.next() or ACCOUNT_FIRST
        first = account.name not in self._paused_accounts()
        self.paused_until[account.name] = time.monotonic() + backoff
        if first:
            self.log.error("account.fault", account=account.name, reason=str(exc), retry_in=backoff)
        await self._give_back(row, f"transport fault: {exc}")
        if self.drain:
            self.wake.set()

    async def _give_back(self, row: OutboxRow, reason: str) -> None:
        """Release a claimed row without counting an attempt."""
        await self._db_until_done("release", self.outbox.release, [row.id], self.worker_id, reason)

    async def _release_unsent(self) -> None:
        while not self.queue.empty():
            row = self.queue.get_nowait()
            if row is not None:
                self.unsent.append(row.id)
        unsent, self.unsent = self.unsent, []
        if unsent:
            released = await self._db_until_done(
                "release",
                self.outbox.release,
                unsent,
                self.worker_id,
                "robot stopping or account paused",
            )
            self.log.info("claim.released", rows=released)


def _account_buckets(settings: Settings) -> dict[str, TokenBucket]:
    """A token bucket for each account with a `rate` of its own."""
    return {
        name: TokenBucket(account.smtp.rate)
        for name, account in settings.accounts.items()
        if account.smtp.rate > 0
    }


def _signers(settings: Settings) -> dict[str, DkimSigner]:
    """The DKIM signer of each account that has one. Raises ConfigError."""
    found = {}
    for name, account in settings.accounts.items():
        signer = load_signer(account.sender, name, settings.path)
        if signer is not None:
            found[name] = signer
    return found


def _addresses(row: OutboxRow) -> set[str]:
    return addresses_in([row.recipient, row.cc or "", row.bcc or ""])


def _message_ids(settings: Settings) -> MessageIds:
    """The Message-ID maker for the accounts of `settings`."""
    accounts = {
        name: AccountDomain(account.sender.address, account.helo_name)
        for name, account in settings.accounts.items()
    }
    default = settings.default_account
    return MessageIds(accounts, AccountDomain(default.sender.address, default.helo_name))
