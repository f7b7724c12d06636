"""robot.cli.output: the "due in" countdown of `list`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from robot.cli.output import change_text, countdown, due_in, estimate, status_json, status_text
from robot.outbox.account_states import AccountState, pause_end
from robot.outbox.rows import Change, OutboxRow, QueueStatus
from robot.outbox.schema import PauseKind


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3600, "due"),
        (-0.5, "due"),
        (0, "due"),
        (0.2, "1s"),
        (1, "1s"),
        (59, "59s"),
        (59.5, "1m00s"),
        (60, "1m00s"),
        (245, "4m05s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7380, "2h03m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (3 * 86400 + 4 * 3600 + 59, "3d04h"),
        (400 * 86400, "400d00h"),
    ],
)
def test_countdown(seconds: float, text: str) -> None:
    assert countdown(seconds) == text


def _row(status: str) -> OutboxRow:
    now = datetime(2024, 5, 17, 9, 0, tzinfo=UTC)
    return OutboxRow(
        id=1, created_at=now, send_after=None, status=status, priority=0, account=None,
        sender=None, sender_name=None, reply_to=None, recipient="a@example.org", cc=None,
        bcc=None, subject="", body_text=None, body_html=None, headers=None, context=None,
        batch=None, transactional=False, attempts=0, next_attempt_at=None, claimed_by=None,
        claimed_until=None, message_id=None, smtp_code=None, smtp_reply=None, last_error=None,
        sent_at=None, updated_at=None,
    )  # fmt: skip


@pytest.mark.parametrize(("status", "text"), [("pending", "4m05s"), ("deferred", "4m05s")])
def test_due_in_for_waiting_rows(status: str, text: str) -> None:
    now = datetime(2024, 5, 17, 9, 0, tzinfo=UTC)
    assert due_in(_row(status), now + timedelta(seconds=245), now) == text
    assert due_in(_row(status), now - timedelta(seconds=1), now) == "due"


@pytest.mark.parametrize("status", ["held", "sending", "sent", "failed", "retracted"])
def test_due_in_for_other_rows(status: str) -> None:
    now = datetime(2024, 5, 17, 9, 0, tzinfo=UTC)
    assert due_in(_row(status), now + timedelta(seconds=245), now) == "-"


# -- status and its ETA ----------------------------------------------------------------------

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def queue_status(due: int, later: int = 0, sent_recently: int = 0, **kw: object) -> QueueStatus:
    values: dict[str, object] = {
        "now": NOW,
        "counts": {"pending": due + later},
        "due": due,
        "later": later,
        "next_due": None,
        "last_due": None,
        "sent_recently": sent_recently,
        "sending": 0,
    }
    values.update(kw)
    return QueueStatus(**values)  # type: ignore[arg-type]


def test_eta_at_the_configured_rate_when_nothing_was_sent_lately() -> None:
    eta = estimate(queue_status(due=1200), configured_rate=50)
    assert eta.rate == 50 and eta.basis == "[robot] rate"
    assert eta.due_done_at == NOW + timedelta(seconds=24)


def test_eta_uses_the_observed_rate_capped_by_the_configured_one() -> None:
    observed = estimate(queue_status(due=600, sent_recently=3000), configured_rate=0)
    assert observed.rate == 10  # 3000 in the last 300 s
    assert observed.due_done_at == NOW + timedelta(seconds=60)
    capped = estimate(queue_status(due=600, sent_recently=30000), configured_rate=20)
    assert capped.rate == 20


def test_eta_unknown_when_unlimited_and_idle() -> None:
    eta = estimate(queue_status(due=10), configured_rate=0)
    assert eta.rate is None and eta.due_done_at is None
    assert "ETA: unknown" in status_text(queue_status(due=10), 0)


def test_eta_of_everything_waits_for_the_last_scheduled_row() -> None:
    last = NOW + timedelta(hours=2)
    eta = estimate(queue_status(due=10, later=10, last_due=last), configured_rate=10)
    assert eta.due_done_at == NOW + timedelta(seconds=1)
    assert eta.all_done_at == last
    text = status_text(queue_status(due=10, later=10, last_due=last, next_due=last), 10, "june")
    assert text.splitlines()[0] == "batch 'june' at 2026-11-25 12:00:00 UTC"
    assert "ETA all waiting: 2026-11-25 14:00:00 UTC (in 2h00m)" in text
    assert "next in 2h00m" in text


def test_change_text_lists_changed_unchanged_and_too_late() -> None:
    change = Change(
        changed=list(range(1, 26)),
        unchanged=[(30, "retracted")],
        too_late=[(31, "sent"), (99, "missing")],
    )
    lines = change_text("retract", change).splitlines()
    assert lines[0].startswith("retracted 25: 1 2 3") and lines[0].endswith("20 ... (5 more)")
    assert lines[1] == "unchanged 1: 30 (retracted)"
    assert lines[2] == "too late 2: 31 (sent), 99 (no such row)"


def test_status_of_an_empty_queue_says_nothing_is_waiting() -> None:
    text = status_text(queue_status(due=0, sent_recently=900, counts={"sent": 900}), 50)
    assert "ETA: nothing is waiting" in text and "in due" not in text


@pytest.mark.parametrize(
    ("verb", "label"), [("release", "not held"), ("retry", "not failed, bounced or deferred")]
)
def test_release_and_retry_say_what_the_row_is_rather_than_too_late(verb: str, label: str) -> None:
    """`release 5` of a sent row used to answer "too late 1: 5 (sent)"."""
    text = change_text(verb, Change(changed=[], unchanged=[], too_late=[(5, "sent")]))
    assert text.splitlines()[1] == f"{label} 1: 5 (sent)"


def test_an_eta_that_has_come_says_now_not_in_due() -> None:
    """With the whole backlog to go at once, `status` printed "(in due)"."""
    text = status_text(queue_status(due=1, sent_recently=3000), 0)
    assert "ETA due now: now" in text and "in due" not in text


# -- accounts' state in status ------------------------------------------------------------------


def paused_state(account: str, kind: PauseKind, minutes: float | None, by: str) -> AccountState:
    until = NOW + timedelta(minutes=minutes) if minutes is not None else None
    return AccountState(account, kind, until, "535 5.7.8 bad credentials", by, NOW, NOW)


def test_status_does_not_promise_due_rows_of_a_paused_account() -> None:
    accounts = {
        "default": None,
        "news": paused_state("news", PauseKind.FAULT, 5, "host:12"),
        "staff": paused_state("staff", PauseKind.OPERATOR, None, "olga"),
    }
    status = queue_status(due=100, due_by_account={"default": 40, "news": 60})
    text = status_text(status, 10, accounts=accounts)
    assert "  due now           100   60 wait for paused accounts: news" in text
    assert "ETA due now: 2026-11-25 12:00:04 UTC (in 4s)" in text  # 40 at 10/s
    assert "ETA paused: 60 due rows wait for their accounts (news)" in text
    assert text.endswith(
        "accounts:\n"
        "  default  sending\n"
        "  news     paused after a fault until 2026-11-25 12:05:00 UTC (535 5.7.8 bad credentials)\n"
        "  staff    paused by olga until resumed (535 5.7.8 bad credentials)"
    )
    only_paused = status_text(
        queue_status(due=60, due_by_account={"news": 60}), 10, accounts=accounts
    )
    assert "ETA due now" not in only_paused and "ETA paused: 60" in only_paused
    values = json.loads(status_json(status, 10, accounts=accounts))
    assert values["due_waiting_for_paused_accounts"] == 60
    assert values["eta_due"] == "2026-11-25T12:00:04.000+00:00"
    assert values["accounts"]["staff"]["paused_by_operator"] is True


def test_a_pause_that_has_ended_reads_as_sending() -> None:
    over = paused_state("news", PauseKind.FAULT, -1, "host:12")
    assert not over.paused and over.describe().startswith("sending (last fault")
    timed = paused_state("news", PauseKind.OPERATOR, -1, "olga")
    assert timed.describe() == "sending"


def test_pause_end_reads_a_clock_time_a_date_or_a_duration() -> None:
    assert pause_end("30m", NOW) == NOW + timedelta(minutes=30)
    assert pause_end("1.5h", NOW) == NOW + timedelta(minutes=90)
    assert pause_end("13:30", NOW) == NOW.replace(hour=13, minute=30)
    assert pause_end("11:00", NOW) == NOW.replace(hour=11) + timedelta(days=1)
    assert pause_end("2026-11-26 08:00", NOW) == datetime(2026, 11, 26, 8, tzinfo=UTC)
    for bad in ("soon", "25:00", "2026-11-24 08:00", ""):
        with pytest.raises(ValueError):
            pause_end(bad, NOW)
