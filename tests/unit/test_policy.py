"""robot.outcome.replies: what an SMTP reply means for a row, and when it is tried again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from robot.outbox.schema import Status
from robot.outcome.replies import Outcome, classify, suppresses
from robot.outcome.retry import RetryPolicy
from robot.send.attempt import Reply, Stage

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
    # more of the same table: every basic code at every stage it is met
    (250, "2.1.0 Sender ok", MAIL, SENT, False),
    (250, "2.1.5 Recipient ok", RCPT, SENT, False),
    (250, "5.1.1 a 2xx is a 2xx whatever its text", RCPT, SENT, False),
    (421, "4.3.2 System shutting down", MAIL, DEFERRED, False),
    (421, "closing", DATA, DEFERRED, False),
    (450, "4.2.0 Mailbox unavailable", MAIL, DEFERRED, False),
    (450, "5.1.1 a 4xx is temporary whatever its text", RCPT, DEFERRED, False),
    (451, "4.7.1 Greylisted, please try again in 300 seconds", RCPT, DEFERRED, False),
    (451, "4.7.1 Service unavailable, try later", DATA, DEFERRED, False),
    (452, "4.3.1 Insufficient system storage", MAIL, DEFERRED, False),
    (452, "Too many recipients", RCPT, DEFERRED, False),
    (452, "4.2.2 Mailbox full", DATA, DEFERRED, False),
    (500, "5.5.2 Syntax error, command unrecognized", MAIL, FAILED, False),
    (500, "Line too long", DATA, FAILED, False),
    (501, "5.1.3 Bad recipient address syntax", RCPT, BOUNCED, True),
    (550, "5.1.1 User unknown", MAIL, FAILED, False),  # at MAIL: about us, never bounced
    (550, "5.1.6 Mailbox has moved", RCPT, BOUNCED, True),
    (550, "5.1.10 Recipient address has null MX", RCPT, BOUNCED, True),
    (550, "5.2.1 Mailbox disabled", RCPT, BOUNCED, False),
    (551, "User not local; please try <forward@example.org>", RCPT, BOUNCED, False),
    (551, "5.1.6 User has moved", RCPT, BOUNCED, True),
    (552, "5.2.2 Mailbox full", DATA, FAILED, False),
    (553, "5.1.3 Bad destination mailbox address syntax", DATA, BOUNCED, True),
    (550, "5.1.2 Bad destination system address", DATA, BOUNCED, True),
    (550, "5.1.8 Sender address rejected", DATA, FAILED, False),
    (553, "5.1.7 Bad sender's mailbox address syntax", DATA, FAILED, False),
    (554, "5.7.1 Service unavailable; client host blocked", MAIL, FAILED, False),
    (554, "5.7.1 Message rejected: spam", DATA, FAILED, False),
    # (the transport never asks: a 530 before DATA is a transport fault of the account)
    (530, "5.7.0 Authentication required", MAIL, FAILED, False),
    (550, "4.7.1 Greylisted under a 5xx code", DATA, DEFERRED, False),
    (551, "4.4.1 No answer from host", RCPT, DEFERRED, False),
    (None, "connection dropped (Connection lost)", DATA, DEFERRED, False),
    (None, "timed out (Timed out waiting for server response)", RCPT, DEFERRED, False),
    (None, "", CONNECT, DEFERRED, False),
    (354, "an unexpected 3xx", DATA, DEFERRED, False),
    (600, "not an SMTP code", RCPT, DEFERRED, False),
    (600, "5.1.1 not an SMTP code, whatever its text", RCPT, DEFERRED, False),
    (0, "not an SMTP code", DATA, DEFERRED, False),
]


IDS = [f"{c}-{s}-{t[:24]}" for c, t, s, _, _ in REPLIES]


@pytest.mark.parametrize(("code", "text", "stage", "outcome", "suppress"), REPLIES, ids=IDS)
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


@pytest.mark.parametrize(("minutes", "seconds"), [(0, 0.0), (0.005, 0.3), (1.5, 90.0)])
def test_retry_minutes_accept_zero_and_decimals(minutes: float, seconds: float) -> None:
    decision = RetryPolicy(retry_minutes=minutes, max_errors=5).decide(DEFERRED, 1, "x")
    assert decision.retry_after is not None
    assert decision.retry_after.total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("attempts", [1, 2])
def test_gave_up_reason_names_the_attempts(attempts: int) -> None:
    decision = RetryPolicy(retry_minutes=1, max_errors=attempts).decide(
        DEFERRED, attempts, "451 4.7.1 Greylisted (at RCPT)"
    )
    assert decision.status is Status.FAILED
    assert decision.last_error == (
        f"gave up after {attempts} attempts: 451 4.7.1 Greylisted (at RCPT)"
    )


@pytest.mark.parametrize(
    ("outcome", "status"), [(BOUNCED, Status.BOUNCED), (FAILED, Status.FAILED)]
)
def test_permanent_outcomes_ignore_max_errors(outcome: Outcome, status: Status) -> None:
    # the last allowed attempt bounced: the row says so, not "gave up"
    decision = RetryPolicy(retry_minutes=1, max_errors=3).decide(outcome, 3, "550 reason")
    assert decision.status is status
    assert decision.last_error == "550 reason"


def test_sent_on_the_last_attempt_is_sent() -> None:
    assert RetryPolicy(retry_minutes=1, max_errors=3).decide(SENT, 3, "").status is Status.SENT


@pytest.mark.parametrize(("code", "text", "stage", "outcome", "suppress"), REPLIES, ids=IDS)
def test_reply_to_decision(
    code: int | None, text: str, stage: Stage, outcome: Outcome, suppress: bool
) -> None:
    # classify() and RetryPolicy together: the status a first attempt leaves the row in
    status = {SENT: Status.SENT, DEFERRED: Status.DEFERRED, BOUNCED: Status.BOUNCED}
    reply = Reply(code, text, stage)
    decision = RetryPolicy(retry_minutes=10, max_errors=10).decide(
        classify(reply), 1, reply.describe()
    )
    assert decision.status is status.get(outcome, Status.FAILED)
    assert (decision.retry_after is not None) is (outcome is DEFERRED)
    assert decision.event == decision.status.value


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
