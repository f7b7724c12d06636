"""Text and JSON views of rows, history and accounts for the command line. Pure."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from robot.config import Account
from robot.outbox.account_states import AccountState
from robot.outbox.rows import RECENT_SECONDS, Change, Event, OutboxRow, QueueStatus
from robot.outbox.schema import WAITING


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


def due_in(row: OutboxRow, due_at: datetime | None, now: datetime) -> str:
    """The 'due in' column: a countdown for waiting rows, '-' for the others."""
    if row.status not in WAITING:
        return "-"
    if due_at is None:
        return "never"  # a time the database cannot read; housekeeping fails the row
    return countdown((due_at - now).total_seconds())


def rows_table(now: datetime, rows: Sequence[tuple[OutboxRow, datetime | None]]) -> str:
    """One line per row: id, status, due in, attempts, recipient, subject."""
    header = f"{'ID':>8}  {'STATUS':<10} {'DUE IN':>8} {'TRIES':>5}  {'RECIPIENT':<32} SUBJECT"
    lines = [header]
    for row, due_at in rows:
        lines.append(
            f"{row.id:>8}  {row.status:<10} {due_in(row, due_at, now):>8} {row.attempts:>5}  "
            f"{_cut(row.recipient, 32):<32} {_cut(row.subject, 50)}"
        )
    return "\n".join(lines)


LISTED_WITHOUT = ("body_text", "body_html")  # a listing stays small; `show` has them


def rows_json(now: datetime, rows: Sequence[tuple[OutboxRow, datetime | None]]) -> str:
    """The rows as a JSON array, each with due_at and due_in_seconds, without bodies."""
    return json.dumps(
        [
            {k: v for k, v in _row_dict(row).items() if k not in LISTED_WITHOUT}
            | {
                "due_at": _iso(due),
                "due_in_seconds": (due - now).total_seconds() if due is not None else None,
            }
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
        if name == "suppressed":  # known only to a robot that claimed the row
            continue
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") if value is not None else None


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(f"{a['filename']} ({a['content_type']}, {a['size']} bytes)" for a in value)
    text = str(value)
    return text if len(text) <= 200 else text[:200] + f"... ({len(text)} characters)"


def _cut(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# -- operator commands -----------------------------------------------------------------------

PAST = {"retract": "retracted", "hold": "held", "release": "released", "retry": "retried"}
# What rows a verb could not change are: too late to stop for retract and hold; for release
# and retry a row in another status is not late, it is not what the verb applies to.
NOT_CHANGED = {
    "retract": "too late",
    "hold": "too late",
    "release": "not held",
    "retry": "not failed, bounced or deferred",
}
SHOWN_IDS = 20


def change_text(verb: str, change: Change) -> str:
    """What an operator command changed, what needed nothing, and what it could not change
    (too late, or not in a status the verb applies to), each with the row's status."""
    lines = [f"{PAST[verb]} {len(change.changed)}: {_ids(change.changed) or '-'}"]
    if change.unchanged:
        lines.append(f"unchanged {len(change.unchanged)}: {_ids_with_status(change.unchanged)}")
    if change.too_late:
        label = NOT_CHANGED[verb]
        lines.append(f"{label} {len(change.too_late)}: {_ids_with_status(change.too_late)}")
    return "\n".join(lines)


def _ids(ids: Sequence[int]) -> str:
    shown = " ".join(str(i) for i in ids[:SHOWN_IDS])
    return shown + (f" ... ({len(ids) - SHOWN_IDS} more)" if len(ids) > SHOWN_IDS else "")


def _ids_with_status(pairs: Sequence[tuple[int, str]]) -> str:
    shown = ", ".join(
        f"{row_id} ({'no such row' if status == 'missing' else status})"
        for row_id, status in pairs[:SHOWN_IDS]
    )
    more = len(pairs) - SHOWN_IDS
    return shown + (f" ... ({more} more)" if more > 0 else "")


@dataclass(frozen=True)
class Estimate:
    """When the backlog will have been sent, and at what rate that was reckoned."""

    rate: float | None  # messages per second used, None if unknown
    basis: str  # where the rate comes from
    due_done_at: datetime | None  # the backlog that is due now
    all_done_at: datetime | None  # every waiting row, the scheduled ones included


MIN_RATE_SECONDS = 1.0  # the shortest time an observed rate is measured over


def estimate(status: QueueStatus, configured_rate: float) -> Estimate:
    """The ETA of the backlog: at the observed sending rate of the last minutes, capped by
    the configured `rate`; at the configured rate when nothing was sent lately.

    The observed rate is the rows sent in the last RECENT_SECONDS over the time from the
    first of them to now (at least a second): a drain that took 2 s is not spread over the
    whole window."""
    span = float(RECENT_SECONDS)
    if status.first_sent_recently is not None:
        since_first = (status.now - status.first_sent_recently).total_seconds()
        span = min(span, max(MIN_RATE_SECONDS, since_first))
    observed = status.sent_recently / span
    if observed > 0 and configured_rate > 0:
        rate, basis = min(observed, configured_rate), "observed, capped by [robot] rate"
    elif observed > 0:
        rate, basis = (
            observed,
            f"observed: {status.sent_recently} sent in the last {countdown(span)}",
        )
    elif configured_rate > 0:
        rate, basis = configured_rate, "[robot] rate"
    else:
        return Estimate(None, "unknown: rate unlimited and nothing sent lately", None, None)
    backlog = status.due + status.sending
    due_done = status.now + timedelta(seconds=backlog / rate)
    all_done = status.now + timedelta(seconds=(backlog + status.later) / rate)
    if status.last_due is not None and status.last_due > all_done:
        all_done = status.last_due  # the last scheduled row cannot go before its time
    return Estimate(rate, basis, due_done, all_done)


AccountStates = Mapping[str, AccountState | None]  # robot.ini's accounts, each with its row


def account_state_text(state: AccountState | None) -> str:
    """'sending', 'paused after a fault until ... (reason)', 'paused by NAME ...'."""
    return "sending" if state is None else state.describe()


def paused_accounts(accounts: AccountStates) -> list[str]:
    """The accounts paused now (after a fault or by an operator)."""
    return [name for name, state in accounts.items() if state is not None and state.paused]


def _waiting_for_paused(status: QueueStatus, accounts: AccountStates) -> tuple[int, list[str]]:
    """The due rows that wait for a paused account, and the paused accounts they wait for."""
    waiting = [name for name in paused_accounts(accounts) if status.due_by_account.get(name)]
    return sum(status.due_by_account[name] for name in waiting), waiting


def status_text(
    status: QueueStatus,
    configured_rate: float,
    batch: str | None = None,
    redirect_to: str | None = None,
    accounts: AccountStates | None = None,
) -> str:
    """`email-robot status`: counts, backlog and ETA, and each account's state (and a
    warning when [robot] redirect_to sends every message to one address). Due rows of a
    paused account are not in the ETA: they wait for the account."""
    title = f"batch {batch!r}" if batch is not None else "outbox"
    lines = [f"{title} at {status.now:%Y-%m-%d %H:%M:%S} UTC"]
    if redirect_to:
        lines.insert(
            0,
            f"WARNING: [robot] redirect_to: every message goes to {redirect_to} "
            "instead of its recipients",
        )
    for name in ORDER:
        if status.counts.get(name):
            lines.append(f"  {name:<11}{status.counts[name]:>10}")
    if not status.counts:
        lines.append("  (empty)")
    held_back, waited_for = _waiting_for_paused(status, accounts or {})
    due_line = f"  {'due now':<11}{status.due:>10}"
    if held_back:
        due_line += f"   {held_back} wait for paused accounts: {', '.join(waited_for)}"
    lines.append(due_line)
    later = f"  {'due later':<11}{status.later:>10}"
    if status.next_due is not None:
        later += f"   next in {countdown((status.next_due - status.now).total_seconds())}"
    lines.append(later)
    sendable = dataclasses.replace(status, due=status.due - held_back)
    eta = estimate(sendable, configured_rate)
    if not (status.due or status.sending or status.later):
        lines.append("ETA: nothing is waiting")
    elif eta.rate is None:
        lines.append(f"ETA: {eta.basis}")
    else:
        lines.append(f"rate: {eta.rate:.1f}/s ({eta.basis})")
        if sendable.due or sendable.sending or not held_back:
            lines.append(f"ETA due now: {_when(eta.due_done_at, status.now)}")
        if held_back:
            lines.append(
                f"ETA paused: {held_back} due rows wait for their accounts "
                f"({', '.join(waited_for)}), not sent before those send again"
            )
        if status.later:
            lines.append(f"ETA all waiting: {_when(eta.all_done_at, status.now)}")
    if accounts:
        lines.append("accounts:")
        width = max(map(len, accounts))
        for name, state in accounts.items():
            lines.append(f"  {name:<{width}}  {account_state_text(state)}")
    return "\n".join(lines)


def status_json(
    status: QueueStatus,
    configured_rate: float,
    redirect_to: str | None = None,
    accounts: AccountStates | None = None,
) -> str:
    """The same as a JSON object."""
    held_back = _waiting_for_paused(status, accounts or {})[0]
    eta = estimate(dataclasses.replace(status, due=status.due - held_back), configured_rate)
    return json.dumps(
        {
            "now": _iso(status.now),
            "redirect_to": redirect_to,
            "counts": status.counts,
            "due": status.due,
            "due_waiting_for_paused_accounts": held_back,
            "later": status.later,
            "next_due": _iso(status.next_due),
            "last_due": _iso(status.last_due),
            "sent_last_5_minutes": status.sent_recently,
            "rate": eta.rate,
            "rate_basis": eta.basis,
            "eta_due": _iso(eta.due_done_at),
            "eta_all": _iso(eta.all_done_at),
            "accounts": accounts_json(accounts or {}),
        },
        indent=2,
    )


def accounts_json(accounts: AccountStates) -> dict[str, dict[str, Any]]:
    """Each account's state as JSON values."""
    return {
        name: {
            "state": "paused" if state is not None and state.paused else "sending",
            "paused_by_operator": bool(state and state.paused and state.by_operator),
            "paused_until": _iso(state.paused_until) if state and state.paused else None,
            "reason": state.reason if state else None,
            "paused_by": state.paused_by if state else None,
            "text": account_state_text(state),
        }
        for name, state in accounts.items()
    }


def accounts_state_table(accounts: AccountStates) -> str:
    """`email-robot account list`: each account and its state."""
    width = max([len("ACCOUNT"), *map(len, accounts)])
    lines = [f"{'ACCOUNT':<{width}}  STATE"]
    for name, state in accounts.items():
        lines.append(f"{name:<{width}}  {account_state_text(state)}")
    return "\n".join(lines)


ORDER = ("held", "pending", "deferred", "sending", "sent", "bounced", "failed", "retracted",
         "suppressed")  # fmt: skip


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "unknown"
    seconds = (at - now).total_seconds()
    if seconds < 1:
        return "now"
    return f"{at:%Y-%m-%d %H:%M:%S} UTC (in {countdown(seconds)})"


def suppression_table(entries: Sequence[tuple[str, str | None, datetime]]) -> str:
    """The suppression list: address, since, reason."""
    lines = [f"{'ADDRESS':<40} {'SINCE':<19}  REASON"]
    for address, reason, since in entries:
        when = f"{since:%Y-%m-%d %H:%M:%S}" if since else "-"
        lines.append(f"{address:<40} {when:<19}  {reason or ''}")
    return "\n".join(lines)
