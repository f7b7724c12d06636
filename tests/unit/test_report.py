"""robot.report: the "due in" countdown of `list`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from robot.queue import OutboxRow
from robot.report import countdown, due_in


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
    fields = dict.fromkeys(OutboxRow.__dataclass_fields__)
    fields.pop("attachments")
    fields.update(id=1, created_at=now, status=status, priority=0, recipient="a@example.org",
                  subject="", transactional=False, attempts=0)  # fmt: skip
    return OutboxRow(**fields)


@pytest.mark.parametrize(("status", "text"), [("pending", "4m05s"), ("deferred", "4m05s")])
def test_due_in_for_waiting_rows(status: str, text: str) -> None:
    now = datetime(2024, 5, 17, 9, 0, tzinfo=UTC)
    assert due_in(_row(status), now + timedelta(seconds=245), now) == text
    assert due_in(_row(status), now - timedelta(seconds=1), now) == "due"


@pytest.mark.parametrize("status", ["held", "sending", "sent", "failed", "retracted"])
def test_due_in_for_other_rows(status: str) -> None:
    now = datetime(2024, 5, 17, 9, 0, tzinfo=UTC)
    assert due_in(_row(status), now + timedelta(seconds=245), now) == "-"
