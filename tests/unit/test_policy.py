"""robot.policy: what an SMTP reply means for a row, and when it is tried again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from robot.models import Status
from robot.policy import Outcome, Reply, RetryPolicy, Stage, classify, suppresses

SENT, DEFERRED, BOUNCED, FAILED = Outcome.SENT, Outcome.DEFERRED, Outcome.BOUNCED, Outcome.FAILED
CONNECT, MAIL, RCPT, DATA = Stage.CONNECT, Stage.MAIL, Stage.RCPT, Stage.DATA

# (code, text, stage, outcome, suppresses the recipient)
REPLIES = [
    (250, "2.0.0 Ok: queued as 4F3A", DATA, SENT, False),
    (250, "OK", DATA, SENT, False),
    (251, "2.1.5 User not local; will forward", RCPT, SENT, False),
    (450, "4.2.0 Mailbox busy", RCPT, DEFERRED, False),
    (451, "4.3.0 Try again later", DATA, DEFERRED, False),
    (452, "4.5.3 Too many recipients", RCPT, DEFERRED, False),
    (451, "Greylisted, come back later", RCPT, DEFERRED, False),
    (421, "4.7.0 Too many connections, closing", RCPT, DEFERRED, False),
    (421, "Service not available", CONNECT, DEFERRED, False),
    (421, "4.4.2 Timeout exceeded", DATA, DEFERRED, False),
    (None, "timed out", DATA, DEFERRED, False),
    (None, "connection lost", MAIL, DEFERRED, False),
    (None, "5.1.1 looks permanent but no code came", RCPT, DEFERRED, False),
    (550, "5.1.1 <ann@example.com>: Recipient address rejected: User unknown", RCPT, BOUNCED, True),
    (550, "  5.1.1 No such user", RCPT, BOUNCED, True),
    (550, "No such user here", RCPT, BOUNCED, False),
    (553, "5.1.3 Bad destination mailbox address syntax", RCPT, BOUNCED, True),
    (550, "5.1.2 Host unknown", RCPT, BOUNCED, True),
    (552, "5.2.2 Mailbox full", RCPT, BOUNCED, False),
    (550, "5.7.1 Relaying denied", RCPT, BOUNCED, False),
    (554, "5.7.1 Recipient address rejected: Access denied", RCPT, BOUNCED, False),
    (550, "5.1.1 Recipient unknown", DATA, BOUNCED, True),
    (552, "5.3.4 Message size exceeds fixed limit", DATA, FAILED, False),
    (554, "5.7.1 Message rejected as spam", DATA, FAILED, False),
    (554, "Transaction failed", DATA, FAILED, False),
    (550, "5.7.1 Sender rejected", MAIL, FAILED, False),
    (552, "5.3.4 Message size exceeds fixed limit", MAIL, FAILED, False),
    (553, "5.1.8 Sender address rejected: Domain not found", MAIL, FAILED, False),
    (553, "5.1.7 Bad sender's mailbox address syntax", MAIL, FAILED, False),
    (550, "4.2.2 Mailbox full, try again later", RCPT, DEFERRED, False),
    (554, "4.4.7 Message delayed", DATA, DEFERRED, False),
    (550, "4.1.1 odd but temporary", RCPT, DEFERRED, False),
    (999, "not an SMTP code", DATA, DEFERRED, False),
    (100, "not an SMTP code", RCPT, DEFERRED, False),
]


@pytest.mark.parametrize(
    ("code", "text", "stage", "outcome", "suppress"),
    REPLIES,
    ids=[f"{c}-{s}-{t[:24]}" for c, t, s, _, _ in REPLIES],
)
def test_classify(
    code: int | None, text: str, stage: Stage, outcome: Outcome, suppress: bool
) -> None:
    reply = Reply(code, text, stage)
    assert classify(reply) is outcome
    assert suppresses(reply) is suppress


@pytest.mark.parametrize(
    "text",
    [
        "5.1.8 <robot@example.org>: Sender address rejected: Domain not found",
        "5.1.7 <robot@example>: Sender address rejected: need fully-qualified address",
    ],
)
def test_sender_problems_at_rcpt_do_not_suppress_the_recipient(text: str) -> None:
    # Postfix delays the MAIL FROM verdict to RCPT (smtpd_delay_reject): X.1.7 and X.1.8 are
    # about our own sender, and suppressing the recipient for them would lose every address.
    # It is not a refusal "for the recipient": the row fails, with the reason.
    reply = Reply(553, text, RCPT)
    assert classify(reply) is FAILED
    assert suppresses(reply) is False


def test_default_stage_is_data() -> None:
    assert classify(Reply(554, "5.7.1 rejected")) is FAILED


@pytest.mark.parametrize(
    ("text", "enhanced"),
    [
        ("5.1.1 User unknown", "5.1.1"),
        ("2.0.0 Ok", "2.0.0"),
        ("  4.7.0 Try later", "4.7.0"),
        ("5.1.10 three-digit detail", "5.1.10"),
        ("5.123.456 widest", "5.123.456"),
        ("User unknown", None),
        ("User unknown 5.1.1", None),
        ("5.1 short", None),
        ("6.1.1 no such class", None),
        ("3.0.0 no such class", None),
        ("5.1.1234 too long", None),
        ("", None),
    ],
)
def test_enhanced(text: str, enhanced: str | None) -> None:
    assert Reply(550, text, RCPT).enhanced == enhanced


def test_describe() -> None:
    line = Reply(550, "5.1.1 No such user", RCPT).describe()
    assert line == "550 5.1.1 No such user (at RCPT)"
    timeout = Reply(None, "timed out after 30 s", DATA).describe()
    assert timeout == "timed out after 30 s (at DATA)"
    assert "None" not in timeout
    assert Reply(421, "4.7.0 closing", CONNECT).describe().endswith("(at CONNECT)")


# RetryPolicy --------------------------------------------------------------------------------


def test_sent_clears_the_error() -> None:
    decision = RetryPolicy(retry_minutes=10, max_errors=3).decide(SENT, 3, "")
    assert decision.status is Status.SENT
    assert decision.retry_after is None
    assert decision.last_error is None
    assert decision.event == "sent"


@pytest.mark.parametrize(
    ("minutes", "delay"), [(10, timedelta(minutes=10)), (0.5, timedelta(seconds=30))]
)
def test_deferred_waits_retry_minutes(minutes: float, delay: timedelta) -> None:
    decision = RetryPolicy(retry_minutes=minutes, max_errors=10).decide(
        DEFERRED, 1, "451 4.3.0 Try again later (at DATA)"
    )
    assert decision.status is Status.DEFERRED
    assert decision.retry_after == delay
    assert decision.last_error == "451 4.3.0 Try again later (at DATA)"
    assert decision.event == "deferred"


def test_deferred_until_max_errors_then_failed() -> None:
    policy = RetryPolicy(retry_minutes=10, max_errors=3)
    assert policy.decide(DEFERRED, 1, "timed out").status is Status.DEFERRED
    assert policy.decide(DEFERRED, 2, "timed out").status is Status.DEFERRED
    last = policy.decide(DEFERRED, 3, "timed out (at DATA)")
    assert last.status is Status.FAILED
    assert last.retry_after is None
    assert last.last_error is not None
    assert "timed out (at DATA)" in last.last_error
    assert "3" in last.last_error
    assert last.event == "failed"
    assert policy.decide(DEFERRED, 4, "timed out").status is Status.FAILED


def test_max_errors_one_never_retries() -> None:
    assert RetryPolicy(retry_minutes=10, max_errors=1).decide(DEFERRED, 1, "x").status is (
        Status.FAILED
    )


@pytest.mark.parametrize(
    ("outcome", "status"), [(BOUNCED, Status.BOUNCED), (FAILED, Status.FAILED)]
)
def test_permanent_outcomes_keep_the_reason(outcome: Outcome, status: Status) -> None:
    reason = "550 5.1.1 No such user (at RCPT)"
    decision = RetryPolicy(retry_minutes=10, max_errors=10).decide(outcome, 1, reason)
    assert decision.status is status
    assert decision.retry_after is None
    assert decision.last_error == reason
    assert decision.event == status.value
