"""The one place that decides whether and when a row is tried again. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from robot.outbox.rows import Decision
from robot.outbox.schema import Status
from robot.outcome.replies import Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """The one place that decides whether and when a row is tried again."""

    retry_minutes: float
    max_errors: int

    def decide(self, outcome: Outcome, attempts: int, reason: str) -> Decision:
        """The row's next state after its `attempts`-th try ended in `outcome`."""
        if outcome is Outcome.SENT:
            return Decision(Status.SENT, None, None, "sent")
        if outcome is Outcome.BOUNCED:
            return Decision(Status.BOUNCED, None, reason, "bounced")
        if outcome is Outcome.FAILED:
            return Decision(Status.FAILED, None, reason, "failed")
        if attempts >= self.max_errors:
            return Decision(
                Status.FAILED, None, f"gave up after {attempts} attempts: {reason}", "failed"
            )
        return Decision(Status.DEFERRED, timedelta(minutes=self.retry_minutes), reason, "deferred")
