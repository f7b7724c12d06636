"""Text and JSON views of rows, history and accounts for the command line. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from robot.config import Account
from robot.models import WAITING
from robot.queue import Event, OutboxRow


def countdown(seconds: float) -> str:
    """'due' when past, else '4m05s', '2h03m', '3d04h'."""
    if seconds <= 0:
        return "due"
    whole = int(seconds + 0.999)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def due_in(row: OutboxRow, due_at: datetime, now: datetime) -> str:
    """The 'due in' column: a countdown for waiting rows, '-' for the others."""
    if row.status not in WAITING:
        return "-"
    return countdown((due_at - now).total_seconds())


def rows_table(now: datetime, rows: Sequence[tuple[OutboxRow, datetime]]) -> str:
    """One line per row: id, status, due in, attempts, recipient, subject."""
    header = f"{'ID':>8}  {'STATUS':<10} {'DUE IN':>8} {'TRIES':>5}  {'RECIPIENT':<32} SUBJECT"
    lines = [header]
    for row, due_at in rows:
        lines.append(
            f"{row.id:>8}  {row.status:<10} {due_in(row, due_at, now):>8} {row.attempts:>5}  "
            f"{_cut(row.recipient, 32):<32} {_cut(row.subject, 50)}"
        )
    return "\n".join(lines)


def rows_json(now: datetime, rows: Sequence[tuple[OutboxRow, datetime]]) -> str:
    """The rows as a JSON array, each with due_at and due_in_seconds."""
    return json.dumps(
        [
            _row_dict(row) | {"due_at": _iso(due), "due_in_seconds": (due - now).total_seconds()}
            for row, due in rows
        ],
        indent=2,
    )


def show_text(row: OutboxRow, events: Sequence[Event]) -> str:
    """A row's fields and its history."""
    fields = _row_dict(row)
    width = max(map(len, fields))
    lines = [
        f"{name:<{width}}  {_text(value)}"
        for name, value in fields.items()
        if value not in (None, "")
    ]
    lines.append("")
    lines.append("history:")
    for event in events:
        code = f" {event.smtp_code}" if event.smtp_code else ""
        lines.append(
            f"  {event.at:%Y-%m-%d %H:%M:%S}  {event.kind:<14}{code} {event.detail or ''}".rstrip()
        )
    if not events:
        lines.append("  (none)")
    return "\n".join(lines)


def show_json(row: OutboxRow, events: Sequence[Event]) -> str:
    """A row and its history as one JSON object."""
    return json.dumps(
        _row_dict(row)
        | {
            "history": [
                {"at": _iso(e.at), "kind": e.kind, "smtp_code": e.smtp_code, "detail": e.detail}
                for e in events
            ]
        },
        indent=2,
    )


def accounts_table(accounts: Mapping[str, Account]) -> str:
    """Configured sender accounts, never their secrets."""
    lines = []
    for account in accounts.values():
        sender = account.sender
        smtp = account.smtp
        login = smtp.username or "-"
        frm = f"{sender.name} <{sender.address}>" if sender.name else sender.address
        server = "direct (MX)" if smtp.direct else f"{smtp.host}:{account.port} {smtp.security}"
        lines.append(
            f"{account.name:<14} from={frm}  server={server}  login={login}"
            + (f"  preset={smtp.preset}" if smtp.preset else "")
            + (f"  rate={smtp.rate:g}/s" if smtp.rate else "")
        )
    return "\n".join(lines)


def _row_dict(row: OutboxRow) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in OutboxRow.__dataclass_fields__:
        value = getattr(row, name)
        if name == "attachments":
            value = [
                {"filename": a.filename, "content_type": a.content_type, "size": len(a.content)}
                for a in value
            ]
        elif isinstance(value, datetime):
            value = _iso(value)
        values[name] = value
    return values


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(f"{a['filename']} ({a['content_type']}, {a['size']} bytes)" for a in value)
    text = str(value)
    return text if len(text) <= 200 else text[:200] + f"... ({len(text)} characters)"


def _cut(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
