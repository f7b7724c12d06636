"""A connection worker: takes claimed rows one by one and carries each through the stages,
compose → send → judge → record, over its own connections to the relay.

One round trip a message: while a message is on the wire the worker has already taken and
composed the next row, so that the relay writes that row's envelope with the current body
(RFC 2920 §3.1). An outcome is handed to the group commit the moment its reply came, and
the worker goes on while it commits: it takes and composes its next rows, and before the
next body goes out it waits until every outcome but the last is committed. So at most two
messages of a connection are unrecorded at any time (two whose replies came, or one whose
reply came and the one on the wire): all that a crash can repeat. Handing an outcome over
before the one before it is committed lets it join the next commit at once: on loopback a
connection's wait for commits was most of its time (bench/waits.py).

A row leaves a worker recorded (sent, deferred, bounced, failed, suppressed) or released
untried (its account is paused, the robot is stopping); nothing a row holds stops the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from robot.compose.message import Composed, check_values, compose, templates_of
from robot.compose.templates import Rendered
from robot.config import Account
from robot.daemon.dispatcher import Dispatcher
from robot.daemon.metrics import Metrics
from robot.daemon.pauses import AccountPauses
from robot.daemon.rendering import RenderProcessError, TemplateRenderers
from robot.daemon.setup import Setup
from robot.daemon.shared_pauses import SharedPauses
from robot.errors import BadRowError
from robot.logs import Bound
from robot.outbox.group_commit import AsyncGroupCommit, GroupCommit
from robot.outbox.rows import Finish, HistoryLine, OutboxRow
from robot.outbox.schema import Status
from robot.outcome.judge import all_suppressed, failed, judge, redirected_line, suppressed_line
from robot.outcome.replies import Outcome
from robot.send.attempt import Attempt
from robot.send.direct import deliver as deliver_direct
from robot.send.relay import Relay


@dataclasses.dataclass
class Tally:
    """What the workers of one robot did: rows by final status, and transport faults."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    faults: int = 0


@dataclasses.dataclass(slots=True)
class Ready:
    """A row composed and ready to go: its account, message, history lines, the setup it
    was composed with and its log. `token`: the robot's rate gave it its token already."""

    row: OutboxRow
    account: Account
    message: Composed
    history: tuple[HistoryLine, ...]
    setup: Setup
    log: Any
    token: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Unsettled:
    """An outcome handed to the group commit, not yet seen committed."""

    row: OutboxRow
    finish: Finish
    log: Any
    committed: asyncio.Future[bool]


class Worker:
    """One connection worker of the robot."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        current: Callable[[], Setup],
        group_commit: GroupCommit | AsyncGroupCommit,
        pauses: AccountPauses,
        shared: SharedPauses,
        metrics: Metrics,
        tally: Tally,
        renderers: TemplateRenderers,
        log: Any,
    ) -> None:
        self.dispatcher = dispatcher
        self.current = current
        self.group_commit = group_commit
        self.pauses = pauses
        self.shared = shared
        self.metrics = metrics
        self.tally = tally
        self.renderers = renderers
        self.log = log
        self.relay = Relay()
        self.unsettled: deque[Unsettled] = deque()  # oldest first; at most two

    async def run(self) -> None:
        """Send rows until the dispatcher says stop, then QUIT the connections. The next
        row is taken (if one is there) and composed before the current one is sent."""
        current: Ready | None = None
        following: Ready | None = None
        try:
            current = await self.next_ready(wait=True)
            while current is not None:
                if not current.account.smtp.direct:  # direct delivery writes nothing ahead
                    following = await self.next_ready(wait=False)
                await self.deliver(current, self.then(current, following))
                current, following = following, None
                if current is not None and self.dispatcher.stopping.is_set():
                    unsent, current = current, None
                    await self.give_back(unsent.row, "robot stopping", unsent.message)
                if current is None:
                    current = await self.next_ready(wait=True)
        finally:
            for held in (current, following):  # only when cancelled: leases bring them back
                if held is not None:
                    self.dispatcher.done(held.row)
            await self.settle()
            await self.relay.close()

    async def next_ready(self, wait: bool) -> Ready | None:
        """The next row composed, taking rows until one is to be sent (recording or
        releasing the others). None when the worker is to stop or, unless `wait`, when no
        row is there at once. Before waiting for a row, the last outcome is seen committed."""
        while True:
            row = self.dispatcher.take_ready()
            if row is None:
                if not wait:
                    return None
                await self.settle()
                row = await self.dispatcher.take()
                if row is None:
                    return None
            ready = await self.prepare(row)
            if ready is not None:
                return ready

    async def prepare(self, row: OutboxRow) -> Ready | None:
        """Compose `row`; None when it is not to be sent (recorded or released instead)."""
        setup = self.current()
        log = Bound(self.log, id=row.id, message_id=row.message_id)
        account = setup.settings.accounts.get(row.account or "default")
        if account is None:
            reason = f"unknown account {row.account!r}: robot.ini has no [account:{row.account}]"
            await self.record(row, failed(row.id, reason), log)
            return None
        if self.pauses.is_paused(account.name):
            await self.give_back(row, "account paused after a transport fault")
            return None
        operator_pause = self.operator_pause(row, account)
        if operator_pause is not None:  # claimed before the pause: given back untried
            await self.give_back(row, operator_pause)
            return None
        rendered: Rendered | None = None
        if row.context is not None:  # templates: rendered apart, under a deadline
            outcome = await self.render(row, setup, log)
            if outcome is None:
                await self.give_back(row, "robot stopping")
                return None
            if isinstance(outcome, Finish):
                await self.record(row, outcome, log)
                return None
            rendered = outcome
        composed = self.compose(row, account, setup, log, rendered)
        if isinstance(composed, Finish):
            await self.record(row, composed, log)
            return None
        message, history = composed
        return Ready(row, account, message, history, setup, log)

    def then(self, current: Ready, following: Ready | None) -> Composed | None:
        """The message whose envelope may go with `current`'s body: `following`, when it
        is of the same account (so the same connection) and the robot's rate has a token
        for it now (taken: its envelope must not wait in a DATA for one)."""
        if following is None or following.account is not current.account:
            return None
        if not following.token:
            following.token = following.setup.bucket.delay() <= 0
        return following.message if following.token else None

    async def deliver(self, ready: Ready, then: Composed | None = None) -> None:
        """Send a composed row, judge the attempt, record it. `then`: the message to be
        sent next (Relay.send)."""
        row, account = ready.row, ready.account
        if self.pauses.is_paused(account.name):  # since it was composed
            await self.give_back(row, "account paused after a transport fault", ready.message)
            return
        operator_pause = self.operator_pause(row, account)
        if operator_pause is not None:
            await self.give_back(row, operator_pause, ready.message)
            return
        attempt = await self.send(ready, then)
        if attempt.fault is not None:
            await self.transport_fault(account, row, attempt.fault)
            return
        if self.pauses.sent(account.name):  # the end of a run of faults: say so once
            await self.shared.sent_again(account.name)
        finish = judge(attempt, row.id, row.attempts, ready.setup.retry, ready.history)
        await self.record(row, finish, ready.log)

    async def render(self, row: OutboxRow, setup: Setup, log: Any) -> Rendered | Finish | None:
        """The templates of `row` rendered in a render process, within [robot]
        template_seconds and max_body_mb; the Finish of a row that cannot be rendered; or
        None when the robot stops meanwhile (the render is killed)."""
        robot = setup.settings.robot
        try:
            check_values(row, robot.max_body_mb)  # nothing a process cannot take is sent to it
            return await self.renderers.render(
                templates_of(row),
                max_body_mb=robot.max_body_mb,
                seconds=robot.template_seconds,
                stopping=self.dispatcher.stopping,
            )
        except BadRowError as exc:
            return failed(row.id, str(exc))
        except RenderProcessError as exc:  # not the row's fault for certain: try again later
            log.error("template.process_failed", reason=str(exc))
            return Finish(row.id, setup.retry.decide(Outcome.DEFERRED, row.attempts, str(exc)))
        except Exception as exc:  # a value compose did not foresee must not stop the robot
            log.exception("compose.crashed")
            return failed(row.id, f"cannot build the message: {type(exc).__name__}: {exc}")

    def compose(
        self,
        row: OutboxRow,
        account: Account,
        setup: Setup,
        log: Any,
        rendered: Rendered | None = None,
    ) -> tuple[Composed, tuple[HistoryLine, ...]] | Finish:
        """The signed message of `row` (with its templates `rendered`, if it has any),
        without its suppressed recipients (and the history line that says so), or the Finish
        of a row that is not to be sent."""
        try:
            message = compose(
                row,
                account,
                now=datetime.now(UTC),
                attachments=setup.settings.attachments,
                max_body_mb=setup.settings.robot.max_body_mb,
                bounces=setup.settings.bounces,
                rendered=rendered,
                redirect_to=setup.settings.robot.redirect_to,
            )
            signer = setup.signers.get(account.name)
            if signer is not None:
                message = signer.sign_composed(message)
        except BadRowError as exc:
            return failed(row.id, str(exc))
        except Exception as exc:  # a value compose did not foresee must not stop the robot
            log.exception("compose.crashed")
            return failed(row.id, f"cannot build the message: {type(exc).__name__}: {exc}")
        redirected = message.redirected_from
        lines = (redirected_line(message.recipients, redirected),) if redirected else ()
        if not row.suppressed:
            return message, lines
        # Staging: the row's own recipients are suppressed as usual; the rest go to QA.
        kept = tuple(
            r
            for r in message.redirected_from or message.recipients
            if r.lower() not in row.suppressed
        )
        if not kept:
            return all_suppressed(row.id, row.suppressed)
        if not message.redirected_from:
            message = dataclasses.replace(message, recipients=kept)
        return message, (*lines, suppressed_line(row.suppressed))

    async def send(self, ready: Ready, then: Composed | None) -> Attempt:
        """Wait for the robot's rate unless the row has its token (the dispatcher handed
        out the row with a token of its account's rate), and send."""
        if not ready.token:
            await ready.setup.bucket.acquire()
        await self.settle_to_one()
        account, message = ready.account, ready.message
        started = time.monotonic()
        try:
            if account.smtp.direct:  # a domain's trouble is the domain's: it never pauses
                return await deliver_direct(account, message, ready.log)
            return await self.relay.send(account, message, then)
        finally:
            self.metrics.send_seconds.observe(time.monotonic() - started)

    async def record(self, row: OutboxRow, finish: Finish, log: Any) -> None:
        """Hand the outcome to the group commit at once; the worker goes on meanwhile and
        waits for the commit of the outcome before it only when it is about to send
        again (settle_to_one; see the module's docstring)."""
        await self.settle(keep=1)  # a row that was not sent may come after another
        self.unsettled.append(Unsettled(row, finish, log, self.group_commit.submit(finish)))

    async def settle_to_one(self) -> None:
        """Before a body goes out: every outcome but the last one committed, so that the
        connection has at most two messages unrecorded, that one and the new one."""
        await self.settle(keep=1)

    async def settle(self, keep: int = 0) -> None:
        """Wait until the outcomes handed over are committed (or given up), all but the
        last `keep`, oldest first; then each row is done: count and log it."""
        while len(self.unsettled) > keep:
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        unsettled = self.unsettled[0]
        row, finish, log = unsettled.row, unsettled.finish, unsettled.log
        try:
            recorded = await unsettled.committed
        finally:
            self.unsettled.popleft()
            self.dispatcher.done(row)
        decision = finish.decision
        if decision.retry_after is not None:  # after the commit: the row is due by then
            self.dispatcher.wake_later(decision.retry_after.total_seconds())
        status = decision.status.value
        self.tally.counts[status] = self.tally.counts.get(status, 0) + 1
        self.metrics.count_message(status)
        event = log.info if decision.status is Status.SENT else log.warning
        event(
            f"message.{status}",
            code=finish.smtp_code,
            attempts=row.attempts,
            reason=decision.last_error,
            recorded=bool(recorded),
        )

    async def transport_fault(self, account: Account, row: OutboxRow, reason: str) -> None:
        """Stop sending on the account for a while; the row goes back untried."""
        self.tally.faults += 1
        self.metrics.transport_faults.labels(account.name).inc()
        seconds, was_sending = self.pauses.pause(account.name)
        if was_sending:
            self.log.error("account.fault", account=account.name, reason=reason, retry_in=seconds)
        await self.give_back(row, f"transport fault: {reason}")
        await self.shared.fault(account.name, reason, seconds)
        if self.dispatcher.drain:
            self.dispatcher.wake.set()

    def operator_pause(self, row: OutboxRow, account: Account) -> str | None:
        """The history line of a row claimed before an operator paused its account (it is
        given back untried), or None."""
        claimed_at = self.dispatcher.claimed_at.get(row.id, float("inf"))
        pause = self.pauses.by_operator(account.name, claimed_at)
        return None if pause is None else f"not tried: account {account.name} {pause}"

    async def give_back(self, row: OutboxRow, reason: str, message: Composed | None = None) -> None:
        """Release `row` untried; if its `message` was composed, close the connection that
        may wait in its DATA (its envelope went ahead)."""
        if message is not None:
            await self.relay.drop_unsent(message)
        await self.dispatcher.release([row.id], reason)
        self.dispatcher.done(row)
