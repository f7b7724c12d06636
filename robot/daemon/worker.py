"""A connection worker: takes claimed rows one by one and carries each through the stages,
compose → send → judge → record, over its own connections to the relay.

A row leaves a worker recorded (sent, deferred, bounced, failed, suppressed) or released
untried (its account is paused, the robot is stopping); nothing a row holds stops the worker.
"""

from __future__ import annotations

import dataclasses
import time
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

    async def run(self) -> None:
        """Send rows until the dispatcher says stop, then QUIT the connections."""
        try:
            while (row := await self.dispatcher.take()) is not None:
                try:
                    await self.deliver(row)
                finally:
                    self.dispatcher.done(row)
        finally:
            await self.relay.close()

    async def deliver(self, row: OutboxRow) -> None:
        """One row, top to bottom: compose, send, judge, record."""
        setup = self.current()
        log = self.log.bind(id=row.id, message_id=row.message_id)
        account = setup.settings.accounts.get(row.account or "default")
        if account is None:
            reason = f"unknown account {row.account!r}: robot.ini has no [account:{row.account}]"
            await self.record(row, failed(row.id, reason), log)
            return
        if self.pauses.is_paused(account.name):
            await self.dispatcher.release([row.id], "account paused after a transport fault")
            return
        claimed_at = self.dispatcher.claimed_at.get(row.id, float("inf"))
        operator_pause = self.pauses.by_operator(account.name, claimed_at)
        if operator_pause is not None:  # claimed before the pause: given back untried
            detail = f"not tried: account {account.name} {operator_pause}"
            await self.dispatcher.release([row.id], detail)
            return
        rendered: Rendered | None = None
        if row.context is not None:  # templates: rendered apart, under a deadline
            outcome = await self.render(row, setup, log)
            if outcome is None:
                await self.dispatcher.release([row.id], "robot stopping")
                return
            if isinstance(outcome, Finish):
                await self.record(row, outcome, log)
                return
            rendered = outcome
        composed = self.compose(row, account, setup, log, rendered)
        if isinstance(composed, Finish):
            await self.record(row, composed, log)
            return
        message, history = composed
        attempt = await self.send(account, message, setup, log)
        if attempt.fault is not None:
            await self.transport_fault(account, row, attempt.fault)
            return
        if self.pauses.sent(account.name):  # the end of a run of faults: say so once
            await self.shared.sent_again(account.name)
        await self.record(row, judge(attempt, row.id, row.attempts, setup.retry, history), log)

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

    async def send(self, account: Account, message: Composed, setup: Setup, log: Any) -> Attempt:
        """Wait for the robot's rate (the dispatcher handed out the row with a token of its
        account's rate), and send."""
        await setup.bucket.acquire()
        started = time.monotonic()
        try:
            if account.smtp.direct:  # a domain's trouble is the domain's: it never pauses
                return await deliver_direct(account, message, log)
            return await self.relay.send(account, message)
        finally:
            self.metrics.send_seconds.observe(time.monotonic() - started)

    async def record(self, row: OutboxRow, finish: Finish, log: Any) -> None:
        """Hand the outcome to the group commit and wait until it is committed (or given
        up): the connection sends its next message only after that."""
        recorded = await self.group_commit.record(finish)
        decision = finish.decision
        if decision.retry_after is not None:  # after the commit: the row is due by then
            self.dispatcher.wake_later(decision.retry_after.total_seconds())
        status = decision.status.value
        self.tally.counts[status] = self.tally.counts.get(status, 0) + 1
        self.metrics.messages.labels(status).inc()
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
        await self.dispatcher.release([row.id], f"transport fault: {reason}")
        await self.shared.fault(account.name, reason, seconds)
        if self.dispatcher.drain:
            self.dispatcher.wake.set()
