"""The values that cross the outbox's edge: a row as the robot reads it, an outcome to
record, an operator's change, the numbers of `status`."""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from robot.outbox.schema import Status, outbox

RECENT_SECONDS = 300  # the window `status` measures the observed sending rate over
BARE_TEXT = 1000  # characters of a reason kept in the bare form of an outcome


@dataclass(frozen=True)
class Attachment:
    """One file attached to a row."""

    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class OutboxRow:
    """An outbox row as the robot reads it."""

    id: int
    created_at: datetime
    send_after: datetime | None
    status: str
    priority: int
    account: str | None
    sender: str | None
    sender_name: str | None
    reply_to: str | None
    recipient: str
    cc: str | None
    bcc: str | None
    subject: str
    body_text: str | None
    body_html: str | None
    headers: str | None
    context: str | None
    batch: str | None
    transactional: bool
    attempts: int
    next_attempt_at: datetime | None
    claimed_by: str | None
    claimed_until: datetime | None
    message_id: str | None
    smtp_code: int | None
    smtp_reply: str | None
    last_error: str | None
    sent_at: datetime | None
    updated_at: datetime | None
    attachments: tuple[Attachment, ...] = ()
    # Sizes in bytes as the database measured them. A claim leaves out bodies and files over
    # the limits (they stay in the database) so that one huge row cannot exhaust memory.
    body_bytes: int | None = None
    attachment_bytes: int | None = None
    # Addresses of this row found in the suppression list when it was claimed (never for
    # transactional rows): they are not sent to.
    suppressed: frozenset[str] = frozenset()
    # Why the row cannot be sent as it was read: a value of the wrong type that could not
    # be read as what it means (the value itself is left out). Compose fails the row.
    problem: str | None = None

    @classmethod
    def from_mapping(
        cls,
        values: Any,
        attachments: tuple[Attachment, ...] = (),
        attachment_bytes: int | None = None,
    ) -> OutboxRow:
        """Build from a result row mapping with every outbox column (and maybe body_bytes)."""
        return cls(
            **{name: values.get(name) for name in ROW_COLUMNS},
            attachments=attachments,
            body_bytes=values.get("body_bytes"),
            attachment_bytes=attachment_bytes,
        )

    @classmethod
    def claimed(
        cls,
        values: dict[str, Any],
        attachments: tuple[Attachment, ...] = (),
        attachment_bytes: int | None = None,
    ) -> OutboxRow:
        """Build from the values of a claim, as from_mapping, after reading each as the type
        its column declares (SQLite stores whatever a host gives it): a value that means
        the right thing is read as such (1.5 or '7' as a priority, 'yes' as true); one that
        cannot be is left out and named in `problem` (values is changed in place)."""
        plain = not attachments and _plainly_typed(values)
        problem = None if plain else _typed(values, attachments)
        fields: dict[str, Any] = dict(zip(ROW_COLUMNS, map(values.get, ROW_COLUMNS), strict=True))
        fields.update(
            attachments=attachments,
            body_bytes=values.get("body_bytes"),
            attachment_bytes=attachment_bytes,
            suppressed=frozenset(),
            problem=problem,
        )
        # What cls(**fields) makes, filled in one step: a frozen dataclass's __init__ sets
        # each of its 34 fields through object.__setattr__, half of a claimed row's cost.
        row = object.__new__(cls)
        row.__dict__.update(fields)
        return row


TEXT_COLUMNS = (
    "account", "sender", "sender_name", "reply_to", "recipient", "cc", "bcc", "subject",
    "body_text", "body_html", "headers", "context", "batch", "claimed_by", "message_id",
)  # fmt: skip
# Text the robot uses before compose looks at it (the account, the addresses that are
# looked up in the suppression list, the Message-ID of the lease): it must be UTF-8.
READ_BEFORE_COMPOSE = ("account", "recipient", "cc", "bcc", "message_id")
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "off"})


def _plainly_typed(values: dict[str, Any]) -> bool:
    """True when the row's values are what _typed would make of them (the flag made a
    bool here) and hold nothing it would find wrong: whole numbers, a 0/1 flag, ASCII text,
    no control character in the Message-ID. The usual row, checked with little Python."""
    if type(values.get("priority")) is not int or type(values.get("attempts")) is not int:
        return False
    flag = values.get("transactional")
    if type(flag) not in (int, bool) or flag not in (0, 1):
        return False
    try:
        text = "".join([v for v in map(values.get, TEXT_COLUMNS) if v is not None])
    except TypeError:  # bytes, or a number in a text column
        return False
    if not text.isascii():
        return False
    message_id = values.get("message_id")
    if message_id and CONTROL_CHARACTER.search(message_id):
        return False
    values["transactional"] = bool(flag)
    return True


def _typed(values: dict[str, Any], attachments: tuple[Attachment, ...]) -> str | None:
    """Read the values of a claimed row as their columns' types, in place; the first
    problem found, naming its column, or None."""
    problems: list[str] = []
    for name in ("priority", "attempts"):
        number = _as_int(values.get(name))
        if number is None:
            problems.append(f"{name} is not a number: {_shown(values.get(name))}")
        values[name] = number or 0
    flag = _as_bool(values.get("transactional"))
    if flag is None:
        problems.append(
            f"transactional is not true or false: {_shown(values.get('transactional'))}"
        )
    values["transactional"] = bool(flag)
    for name in TEXT_COLUMNS:
        value = values.get(name)
        if value is None or (type(value) is str and value.isascii()):
            continue  # the usual case, with nothing to check
        text_problem = _text_problem(name, value, name in READ_BEFORE_COMPOSE)
        if text_problem:
            problems.append(text_problem)
            values[name] = None
    message_id = values.get("message_id")
    if message_id and CONTROL_CHARACTER.search(message_id):
        # A host's own Message-ID goes into the header as it is: a line break in it
        # would add header lines of the host's choosing.
        problems.append(f"message_id contains a control character: {_shown(message_id)}")
        values["message_id"] = None
    for attachment in attachments:
        for name in ("filename", "content_type"):
            value = getattr(attachment, name)
            text_problem = _text_problem(f"outbox_attachment.{name}", value, True)
            if text_problem:
                problems.append(text_problem)
    return problems[0] if problems else None


def _as_int(value: Any) -> int | None:
    """An integer column's value as an int; None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value)


def _as_bool(value: Any) -> bool | None:
    """A boolean column's value as a bool (numbers as SQL reads them, the usual words);
    None when it means neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
    return None


def _text_problem(name: str, value: Any, utf8: bool) -> str | None:
    """What is wrong with a text column's value (bytes; with `utf8`, text that was not
    UTF-8 in the database), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{name} is not text but {type(value).__name__}"
    if utf8 and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name} is not valid UTF-8 text"
    return None


def _shown(value: Any) -> str:
    """A value in a reason: its repr, cut short."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


NOT_RETURNED_BY_CLAIM = frozenset(
    ("body_text", "body_html", "claimed_until", "smtp_code", "smtp_reply", "last_error",
     "sent_at", "updated_at")
)  # fmt: skip
ROW_COLUMNS = tuple(f.name for f in dataclasses.fields(OutboxRow) if f.name in outbox.c)


@dataclass(frozen=True)
class Event:
    """One line of a row's history."""

    at: datetime
    kind: str
    smtp_code: int | None
    detail: str | None


@dataclass(frozen=True)
class Decision:
    """What an attempt does to its row: the new status, when to try again, the reason."""

    status: Status
    retry_after: timedelta | None  # set for deferred rows: next_attempt_at = now + this
    last_error: str | None
    event: str  # the kind of the history line that ends the attempt


@dataclass(frozen=True)
class HistoryLine:
    """A line of a row's history written with an outcome (a refused recipient, say)."""

    kind: str
    detail: str
    smtp_code: int | None = None


@dataclass(frozen=True)
class Finish:
    """The end of one attempt, as the group commit records it: the row's new state, the
    history lines that go before the closing one, and the addresses to suppress (address,
    reason), all in one transaction."""

    row_id: int
    decision: Decision
    smtp_code: int | None = None
    smtp_reply: str | None = None
    detail: str | None = None
    suppress: tuple[tuple[str, str], ...] = ()
    history: tuple[HistoryLine, ...] = ()


def recordable_forms(outcome: Finish) -> tuple[Finish, ...]:
    """`outcome` as it is, then safer forms for a database that refuses it: its texts
    sanitised (sanitised_text), then bare (its status, code and a short sanitised reason;
    no history lines of its own, no suppressions)."""
    decision = outcome.decision
    sanitised = Finish(
        outcome.row_id,
        dataclasses.replace(decision, last_error=sanitised_text(decision.last_error)),
        outcome.smtp_code,
        sanitised_text(outcome.smtp_reply),
        sanitised_text(outcome.detail),
        tuple((sanitised_text(a) or "", sanitised_text(r) or "") for a, r in outcome.suppress),
        tuple(
            dataclasses.replace(line, detail=sanitised_text(line.detail) or "")
            for line in outcome.history
        ),
    )
    bare = Finish(
        outcome.row_id,
        dataclasses.replace(decision, last_error=sanitised_text(decision.last_error, BARE_TEXT)),
        outcome.smtp_code if 100 <= (outcome.smtp_code or 0) <= 999 else None,
        sanitised_text(outcome.smtp_reply, BARE_TEXT),
        sanitised_text(outcome.detail, BARE_TEXT),
    )
    return outcome, sanitised, bare


def sanitised_text(text: str | None, limit: int | None = None) -> str | None:
    """`text` without control characters (tabs and line breaks kept), a lone surrogate (a
    byte that was not UTF-8) as U+FFFD, at most `limit` characters."""
    if text is None:
        return None
    kept = "".join(
        "\ufffd" if category == "Cs" else ch
        for ch in text
        if (category := unicodedata.category(ch)) != "Cc" or ch in "\t\n"
    )
    return kept if limit is None else kept[:limit]


@dataclass(frozen=True)
class Change:
    """What an operator command changed, what needed no change, and what was too late."""

    changed: list[int]
    unchanged: list[tuple[int, str]]  # (id, status): already in the wanted state
    too_late: list[tuple[int, str]]  # (id, current status), or status 'missing'


@dataclass(frozen=True)
class QueueStatus:
    """The numbers behind `email-robot status`."""

    now: datetime
    counts: dict[str, int]
    due: int  # waiting rows whose due time has come
    later: int  # waiting rows due in the future
    next_due: datetime | None
    last_due: datetime | None
    sent_recently: int  # rows sent in the last RECENT_SECONDS
    sending: int
    first_sent_recently: datetime | None = None  # when the first of those was sent
    # the due rows by account ("default" for none): rows of a paused account wait for it
    due_by_account: dict[str, int] = dataclasses.field(default_factory=dict)
