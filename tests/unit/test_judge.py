"""robot.outcome.judge: what an attempt means for its row, decided once, as a Finish."""

from __future__ import annotations

from datetime import timedelta

import pytest

from robot.outbox.rows import HistoryLine
from robot.outbox.schema import Status
from robot.outcome.judge import (
    all_suppressed,
    deciding_refusal,
    failed,
    judge,
    suppressed_line,
)
from robot.outcome.retry import RetryPolicy
from robot.send.attempt import Attempt, Refusal, Reply, Stage

POLICY = RetryPolicy(retry_minutes=10, max_errors=3)
RCPT, MAIL, DATA = Stage.RCPT, Stage.MAIL, Stage.DATA


def rcpt(address: str, code: int, text: str) -> Refusal:
    return Refusal((address,), Reply(code, text, RCPT), address)


def test_accepted_is_sent_with_the_data_reply_and_no_error() -> None:
    attempt = Attempt(("a@x.test",), Reply(250, "2.0.0 queued as 4F2A", DATA))
    finish = judge(attempt, 7, 1, POLICY)
    assert (finish.row_id, finish.decision.status, finish.decision.last_error) == (
        7,
        Status.SENT,
        None,
    )
    assert (finish.smtp_code, finish.smtp_reply) == (250, "2.0.0 queued as 4F2A")
    assert finish.history == () and finish.suppress == ()


def test_sent_with_refused_copies_records_each_and_suppresses_only_bad_addresses() -> None:
    attempt = Attempt(
        ("to@x.test",),
        Reply(250, "2.0.0 Ok", DATA),
        (
            rcpt("Gone@X.test", 550, "5.1.1 No such user"),
            rcpt("busy@x.test", 450, "4.2.0 Mailbox busy"),
        ),
    )
    finish = judge(attempt, 1, 1, POLICY, (suppressed_line(frozenset({"s@x.test"})),))
    assert finish.decision.status is Status.SENT
    assert finish.history == (
        HistoryLine("suppressed", "not sent to s@x.test"),
        HistoryLine("refused", "Gone@X.test: 550 5.1.1 No such user", 550),
        HistoryLine("refused", "busy@x.test: 450 4.2.0 Mailbox busy", 450),
    )
    assert finish.suppress == (("Gone@X.test", "bounced: 550 5.1.1 No such user"),)


@pytest.mark.parametrize(
    ("reply", "status", "retry"),
    [
        (Reply(451, "4.3.0 Local problem", MAIL), Status.DEFERRED, True),
        (Reply(550, "5.7.1 Sender blocked", MAIL), Status.FAILED, False),
        (Reply(None, "connection dropped", DATA), Status.DEFERRED, True),
        (Reply(554, "5.7.1 Rejected as spam", DATA), Status.FAILED, False),
    ],
)
def test_a_reply_that_ended_the_transaction_decides(
    reply: Reply, status: Status, retry: bool
) -> None:
    attempt = Attempt(refusals=(Refusal(("a@x.test", "b@x.test"), reply, ended=True),))
    finish = judge(attempt, 1, 1, POLICY)
    assert finish.decision.status is status
    assert (finish.decision.retry_after is not None) is retry
    assert finish.decision.last_error == reply.describe()  # about no single recipient
    assert finish.smtp_code == reply.code and finish.history == ()


def test_the_transaction_s_end_outweighs_a_recipient_that_may_change() -> None:
    """A 554 to the message after one RCPT got a 451: trying again would meet the 554."""
    greylisted = rcpt("a@x.test", 451, "4.7.1 Greylisted")
    spam = Refusal(("b@x.test",), Reply(554, "5.7.1 spam", DATA), "b@x.test", ended=True)
    finish = judge(Attempt(refusals=(greylisted, spam)), 1, 1, POLICY)
    assert finish.decision.status is Status.FAILED
    assert finish.decision.last_error == "b@x.test: 554 5.7.1 spam (at DATA)"
    assert [h.kind for h in finish.history] == ["refused", "refused"]


def test_every_recipient_refused_one_that_may_change_defers_then_failure_then_bounce() -> None:
    bounced = rcpt("a@x.test", 550, "5.1.1 No such user")
    blamed = rcpt("b@x.test", 553, "5.1.8 Sender domain not found")
    later = rcpt("c@x.test", 452, "4.5.3 Too many recipients")
    assert deciding_refusal((bounced, blamed, later)) is later
    assert deciding_refusal((bounced, blamed)) is blamed
    assert deciding_refusal((bounced,)) is bounced
    finish = judge(Attempt(refusals=(bounced, blamed, later)), 1, 1, POLICY)
    assert finish.decision.status is Status.DEFERRED
    assert finish.decision.retry_after == timedelta(minutes=10)
    assert finish.decision.last_error == "c@x.test: 452 4.5.3 Too many recipients (at RCPT)"
    assert len(finish.history) == 3  # each refusal, since there were several
    assert finish.suppress == (("a@x.test", "bounced: 550 5.1.1 No such user"),)


def test_a_single_bounce_is_the_row_s_own_and_suppresses_its_address() -> None:
    finish = judge(Attempt(refusals=(rcpt("a@x.test", 550, "5.1.1 No such user"),)), 1, 1, POLICY)
    assert finish.decision.status is Status.BOUNCED
    assert finish.history == ()  # the row's own last_error says it
    assert finish.suppress == (("a@x.test", "bounced: 550 5.1.1 No such user"),)


def test_deferred_too_often_fails() -> None:
    attempt = Attempt(refusals=(rcpt("a@x.test", 451, "4.7.1 later"),))
    finish = judge(attempt, 1, 3, POLICY)
    assert finish.decision.status is Status.FAILED
    assert (
        finish.decision.last_error
        == "gave up after 3 attempts: a@x.test: 451 4.7.1 later (at RCPT)"
    )


def test_what_the_robot_says_itself_is_judged_by_its_code_and_stored_without_it() -> None:
    nxdomain = Refusal(
        ("a@gone.test",),
        Reply(550, "5.4.4 domain gone.test does not exist (NXDOMAIN)", RCPT, by_robot=True),
        "a@gone.test",
        ended=True,
    )
    null_mx = Refusal(
        ("b@nomail.test",),
        Reply(556, "5.1.10 domain nomail.test accepts no mail", RCPT, by_robot=True),
        "b@nomail.test",
        ended=True,
    )
    finish = judge(Attempt(refusals=(nxdomain,)), 1, 1, POLICY)
    assert finish.decision.status is Status.BOUNCED and finish.suppress == ()
    assert finish.smtp_code is None  # no server said 550
    assert (
        finish.decision.last_error
        == "a@gone.test: 5.4.4 domain gone.test does not exist (NXDOMAIN)"
    )
    assert nxdomain.detail() == "a@gone.test: 5.4.4 domain gone.test does not exist (NXDOMAIN)"
    assert judge(Attempt(refusals=(null_mx,)), 1, 1, POLICY).suppress == (
        ("b@nomail.test", "bounced: 5.1.10 domain nomail.test accepts no mail"),
    )


UNKNOWN = "the server did not answer after the message; it may have been delivered"


def unanswered(*recipients: str) -> Refusal:
    """The whole message went out and its reply never came."""
    reply = Reply(None, "timed out after 600 s waiting for a reply", DATA)
    about = recipients[0] if len(recipients) == 1 else None
    return Refusal(recipients, reply, about, ended=True, maybe_delivered=True)


def test_a_message_left_unanswered_is_deferred_with_its_outcome_unknown() -> None:
    finish = judge(Attempt(refusals=(unanswered("a@x.test"),)), 1, 1, POLICY)
    assert finish.decision.status is Status.DEFERRED
    assert finish.decision.retry_after == timedelta(minutes=10)
    assert finish.decision.last_error == (
        f"outcome unknown: {UNKNOWN}: a@x.test: timed out after 600 s waiting for a reply (at DATA)"
    )
    assert finish.smtp_code is None
    assert finish.history == (
        HistoryLine("unknown", f"a@x.test: {UNKNOWN} (timed out after 600 s waiting for a reply)"),
    )
    given_up = judge(Attempt(refusals=(unanswered("a@x.test"),)), 1, 3, POLICY)
    assert given_up.decision.status is Status.FAILED
    assert given_up.decision.last_error == "gave up after 3 attempts: " + str(
        finish.decision.last_error
    )
    assert [h.kind for h in given_up.history] == ["unknown"]


def test_recipients_of_an_unanswered_transaction_are_unknown_on_a_sent_row() -> None:
    """Direct delivery, say: one domain's host took the message, another's never answered."""
    attempt = Attempt(
        ("a@x.test",),
        Reply(250, "2.0.0 Ok", DATA),
        (unanswered("b@y.test", "c@y.test"), rcpt("d@x.test", 451, "4.3.0 later")),
    )
    finish = judge(attempt, 1, 1, POLICY)
    assert finish.decision.status is Status.SENT
    assert finish.history == (
        HistoryLine(
            "unknown",
            f"b@y.test, c@y.test: {UNKNOWN} (timed out after 600 s waiting for a reply)",
        ),
        HistoryLine("refused", "d@x.test: 451 4.3.0 later", 451),
    )


def test_a_fault_is_not_an_outcome() -> None:
    with pytest.raises(ValueError):
        judge(Attempt.faulted("login refused"), 1, 1, POLICY)


def test_rows_that_are_not_sent() -> None:
    bad = failed(4, "recipient: invalid address 'x'")
    assert (bad.decision.status, bad.decision.last_error, bad.decision.event) == (
        Status.FAILED,
        "recipient: invalid address 'x'",
        "failed",
    )
    gone = all_suppressed(5, frozenset({"b@x.test", "a@x.test"}))
    assert gone.decision.status is Status.SUPPRESSED
    assert gone.decision.last_error == "suppressed address: a@x.test, b@x.test"
