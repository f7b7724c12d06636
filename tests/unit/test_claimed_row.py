"""A claimed row read as its columns' types: the quick check of the usual row must give what
the full reading gives, for every value it lets through and every one it must not."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from robot.outbox.rows import ROW_COLUMNS, Attachment, OutboxRow, _plainly_typed, _typed

PLAIN: dict[str, Any] = {
    "id": 7,
    "created_at": datetime(2026, 1, 2, tzinfo=UTC),
    "status": "sending",
    "priority": 0,
    "account": None,
    "sender": "shop@example.org",
    "recipient": "Ada <ada@example.org>",
    "subject": "Your order",
    "body_text": "Hello",
    "transactional": 0,
    "attempts": 1,
    "claimed_by": "robot-1",
    "message_id": "<7.abc@example.org>",
    "body_bytes": 5,
}

ODD_VALUES: list[tuple[str, Any]] = [
    ("priority", True),
    ("priority", 1.5),
    ("priority", "7"),
    ("priority", None),
    ("attempts", 2.0),
    ("transactional", 1),
    ("transactional", True),
    ("transactional", 2),
    ("transactional", 1.0),
    ("transactional", "yes"),
    ("transactional", None),
    ("subject", 0),
    ("subject", 12),
    ("subject", b"bytes"),
    ("subject", ""),
    ("subject", "Grüße ✓"),
    ("subject", "Gr\udcfc\udcdfe"),  # text that was not UTF-8
    ("recipient", "Grüße <g@example.org>"),
    ("recipient", "r\udcfc@example.org"),
    ("message_id", "<7.abc@example.org>\r\nBcc: x@example.org"),
    ("message_id", "<7.\x00@example.org>"),
    ("headers", '{"X-A": "b"}'),
]


def full_reading(values: dict[str, Any], attachments: tuple[Attachment, ...] = ()) -> OutboxRow:
    """The row as the full reading (_typed) makes it, field by field."""
    values = dict(values)
    problem = _typed(values, attachments)
    columns: dict[str, Any] = {name: values.get(name) for name in ROW_COLUMNS}
    return OutboxRow(
        **columns,
        attachments=attachments,
        body_bytes=values.get("body_bytes"),
        problem=problem,
    )


@pytest.mark.parametrize(("column", "value"), ODD_VALUES)
def test_the_quick_reading_gives_what_the_full_reading_gives(column: str, value: Any) -> None:
    values = {**PLAIN, column: value}
    claimed = OutboxRow.claimed(dict(values))
    expected = full_reading(values)
    assert dataclasses.asdict(claimed) == dataclasses.asdict(expected)
    assert type(claimed.transactional) is bool and type(claimed.priority) is int


def test_the_usual_row_takes_the_quick_reading() -> None:
    values = dict(PLAIN)
    assert _plainly_typed(values)
    assert values["transactional"] is False
    row = OutboxRow.claimed(dict(PLAIN))
    assert row == full_reading(PLAIN) and row.problem is None
    assert (row.id, row.recipient, row.transactional) == (7, "Ada <ada@example.org>", False)


@pytest.mark.parametrize(("column", "value"), ODD_VALUES)
def test_an_odd_value_is_not_read_quickly_unless_it_is_plain(column: str, value: Any) -> None:
    values = {**PLAIN, column: value}
    quick = _plainly_typed(dict(values))
    assert quick == (full_reading(values).problem is None and _reads_as_itself(column, value))


def test_a_file_with_a_bad_name_is_found_whatever_the_row() -> None:
    bad = (Attachment(b"x.pdf", "application/pdf", b"%PDF"),)  # type: ignore[arg-type]
    row = OutboxRow.claimed(dict(PLAIN), bad)
    assert row.problem == "outbox_attachment.filename is not text but bytes"


def _reads_as_itself(column: str, value: Any) -> bool:
    """The value is already of its column's type (the quick reading takes only those)."""
    if column in ("priority", "attempts"):
        return type(value) is int
    if column == "transactional":
        return type(value) in (int, bool) and value in (0, 1)
    return value is None or (type(value) is str and value.isascii())


@pytest.mark.parametrize("attachments", [(), (Attachment("a.txt", "text/plain", b"hi"),)])
def test_a_claimed_row_is_the_row_its_constructor_makes(
    attachments: tuple[Attachment, ...],
) -> None:
    """claimed() fills the frozen row in one step: the same row, every field set, as the
    dataclass's own __init__ would make it (a field added later must be filled too)."""
    row = OutboxRow.claimed(dict(PLAIN), attachments, 2)
    columns: dict[str, Any] = {c: PLAIN.get(c) for c in ROW_COLUMNS if c != "transactional"}
    expected = OutboxRow(
        **columns,
        transactional=False,
        attachments=attachments,
        body_bytes=5,
        attachment_bytes=2,
    )
    assert row == expected
    assert vars(row) == vars(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.subject = "changed"  # type: ignore[misc]
