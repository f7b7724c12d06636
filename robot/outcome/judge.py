"""Judge an attempt once: what it means for its row, as the Finish the group commit writes.

Every outcome of a row is built here: a delivery attempt, a row that cannot become a message,
a row whose every recipient is suppressed. Pure: no database, socket or clock.
"""

from __future__ import annotations

from robot.outbox.rows import Decision, Finish, HistoryLine
from robot.outbox.schema import Status
from robot.outcome.replies import Outcome, classify, suppresses
from robot.outcome.retry import RetryPolicy
from robot.send.attempt import Attempt, Refusal

# When nothing was accepted, the refusal that decides the row: any that may change defers
# it, else one that blames the message or the sender fails it, else it bounces.
DECIDING_ORDER = (Outcome.DEFERRED, Outcome.FAILED, Outcome.BOUNCED)
# A message that went out whole and whose reply never came: tried again like any deferral
# (with the same Message-ID), but the history says it may already be in the mailbox.
UNKNOWN = "the server did not answer after the message; it may have been delivered"


def judge(
    attempt: Attempt,
    row_id: int,
    attempts: int,
    policy: RetryPolicy,
    history: tuple[HistoryLine, ...] = (),
) -> Finish:
    """The outcome of the `attempts`-th try of row `row_id`, given what the servers said.

    Sent when any recipient was accepted (the refused ones go into the history, and a bad
    address is suppressed); otherwise the deciding refusal sets the status and the reason.
    Recipients whose message went out whole but got no reply get an 'unknown' line: the
    row is deferred as for any silence, but it may have been delivered already.
    `history` comes first in the row's history (recipients dropped as suppressed, say).
    `attempt.fault` is not an outcome: the caller releases the row instead.
    """
    if attempt.fault is not None:
        raise ValueError("an attempt with a fault has no outcome: release the row")
    refusals = attempt.refusals
    suppress = tuple(
        (refusal.about, f"bounced: {refusal.reply.line()}")
        for refusal in refusals
        if refusal.about is not None and suppresses(refusal.reply)
    )
    if attempt.accepted_reply is not None:
        reply = attempt.accepted_reply
        return Finish(
            row_id,
            policy.decide(Outcome.SENT, attempts, ""),
            reply.server_code,
            reply.text,
            suppress=suppress,
            history=history + _refused_lines(refusals),
        )
    if not refusals:
        raise ValueError("an attempt without an accepting reply has refusals")
    deciding = deciding_refusal(refusals)
    # a single refusal is said by the row's own last_error, unless it may have been delivered
    lines = _refused_lines(refusals) if len(refusals) > 1 or deciding.maybe_delivered else ()
    reason = deciding.reason()
    if deciding.maybe_delivered:
        reason = f"outcome unknown: {UNKNOWN}: {reason}"
    return Finish(
        row_id,
        policy.decide(classify(deciding.reply), attempts, reason),
        deciding.reply.server_code,
        deciding.reply.text,
        suppress=suppress,
        history=history + lines,
    )


def deciding_refusal(refusals: tuple[Refusal, ...]) -> Refusal:
    """The refusal that decides a row none of whose recipients was reached: among those
    that ended a transaction (a refused MAIL or DATA, a dropped connection, DNS) if any,
    else among the recipients refused one by one, the first by DECIDING_ORDER."""
    candidates = [r for r in refusals if r.ended] or list(refusals)
    for outcome in DECIDING_ORDER:
        for refusal in candidates:
            if classify(refusal.reply) is outcome:
                return refusal
    return candidates[0]  # a 2xx refusal cannot happen; keep the first rather than fail


def failed(row_id: int, reason: str) -> Finish:
    """A row that cannot be sent as it is (bad address, unknown account...): failed, with
    `reason`, at its first attempt."""
    return Finish(row_id, Decision(Status.FAILED, None, reason, "failed"))


def all_suppressed(row_id: int, addresses: frozenset[str]) -> Finish:
    """A row whose every recipient is on the suppression list: nothing is sent."""
    reason = f"suppressed address: {', '.join(sorted(addresses))}"
    return Finish(row_id, Decision(Status.SUPPRESSED, None, reason, "suppressed"))


def suppressed_line(addresses: frozenset[str]) -> HistoryLine:
    """The history line of recipients left out because they are suppressed."""
    return HistoryLine("suppressed", f"not sent to {', '.join(sorted(addresses))}")


def redirected_line(sent_to: tuple[str, ...], recipients: tuple[str, ...]) -> HistoryLine:
    """The history line of a message sent to [robot] redirect_to instead of its recipients."""
    return HistoryLine(
        "redirected", f"sent to {', '.join(sent_to)} instead of {', '.join(recipients)}"
    )


def _refused_lines(refusals: tuple[Refusal, ...]) -> tuple[HistoryLine, ...]:
    """A 'refused' line per refusal; 'unknown' for recipients whose message may have been
    delivered although no reply said so."""
    return tuple(
        HistoryLine("unknown", f"{', '.join(r.recipients)}: {UNKNOWN} ({r.reply.line()})", None)
        if r.maybe_delivered
        else HistoryLine("refused", r.detail(), r.reply.server_code)
        for r in refusals
    )
