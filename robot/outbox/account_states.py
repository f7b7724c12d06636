"""The sender accounts' state (table account_state), shared by every robot, the command line
and the console: a robot's pause after a transport fault, and an operator's pause.

No row means the account sends. A robot writes only when the state changes (a fault, the
first message sent after one); an operator pauses until a time or until resumed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from robot.outbox.dialects import Statements, statements_for
from robot.outbox.engine import reconnecting
from robot.outbox.schema import (
    ACCOUNT_NAME_LENGTH,
    PAUSE_REASON_LENGTH,
    PauseKind,
    account_state,
    utcnow,
)


@dataclass(frozen=True)
class AccountState:
    """One account's row of account_state, judged against the database clock `now`."""

    account: str
    kind: PauseKind
    paused_until: datetime | None  # None: until an operator resumes it
    reason: str | None
    paused_by: str | None
    updated_at: datetime | None
    now: datetime

    @property
    def paused(self) -> bool:
        """True while the pause holds (a time-limited pause ends by itself)."""
        return self.paused_until is None or self.paused_until > self.now

    @property
    def by_operator(self) -> bool:
        return self.kind is PauseKind.OPERATOR

    def describe(self) -> str:
        """'sending', 'paused after a fault until 14:05:10 UTC (reason)', 'paused by olga
        until resumed (reason)', ...: never a secret (the reason is the robot's fault text
        or the operator's words)."""
        why = f" ({self.reason})" if self.reason else ""
        until = (
            "until resumed"
            if self.paused_until is None
            else f"until {self.paused_until:%Y-%m-%d %H:%M:%S} UTC"
        )
        if not self.paused:
            if self.by_operator or not self.reason:
                return "sending"
            return f"sending (last fault: {self.reason})"
        if self.by_operator:
            return f"paused by {self.paused_by or 'an operator'} {until}{why}"
        return f"paused after a fault {until}{why}"


DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def pause_end(text: str, now: datetime) -> datetime:
    """When an operator's pause is to end, in UTC: 'HH:MM' (the next such time), an ISO
    date and time ('YYYY-MM-DD HH:MM', UTC unless it says otherwise), or a duration ('30m',
    '2h', '1d'). Raises ValueError for anything else, or a time that has passed. Pure."""
    value = text.strip()
    duration = DURATION.fullmatch(value)
    if duration:
        return now + timedelta(seconds=float(duration[1]) * DURATION_UNITS[duration[2]])
    clock = re.fullmatch(r"(\d{1,2}):(\d\d)", value)
    if clock and int(clock[1]) < 24 and int(clock[2]) < 60:
        at = now.replace(hour=int(clock[1]), minute=int(clock[2]), second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (give 'HH:MM', 'YYYY-MM-DD HH:MM' in UTC, or '30m', '2h')"
        ) from None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if at <= now:
        raise ValueError(f"{text!r} is in the past")
    return at


def operator_paused_now() -> ColumnElement[bool]:
    """The accounts an operator has paused, now (for the claim's NOT IN)."""
    return (account_state.c.kind == PauseKind.OPERATOR.value) & or_(
        account_state.c.paused_until.is_(None), account_state.c.paused_until > utcnow()
    )


class AccountStates:
    """account_state through one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: Statements = statements_for(engine)

    @reconnecting
    def states(self) -> dict[str, AccountState]:
        """Every account's row, by name (accounts without one send)."""
        with self.engine.connect() as conn:
            now = conn.execute(select(utcnow())).scalar_one()
            return {
                r.account: AccountState(
                    r.account,
                    PauseKind(r.kind) if r.kind in set(PauseKind) else PauseKind.OPERATOR,
                    r.paused_until,
                    r.reason,
                    r.paused_by,
                    r.updated_at,
                    now,
                )
                for r in conn.execute(select(account_state))
            }

    @reconnecting
    def pause(
        self, account: str, by: str, reason: str | None, until: datetime | None = None
    ) -> None:
        """An operator's pause of `account`, until `until` (None: until resumed). It
        replaces a fault pause; robots stop claiming the account's rows at once and give
        back those they hold within poll_seconds."""
        values = {
            "kind": PauseKind.OPERATOR.value,
            "paused_until": until,
            "reason": _cut(reason, PAUSE_REASON_LENGTH),
            "paused_by": _cut(by, ACCOUNT_NAME_LENGTH),
            "updated_at": utcnow(),
        }
        self._upsert(account, values)

    @reconnecting
    def resume(self, account: str) -> AccountState | None:
        """End any pause of `account` (an operator's, or a robot's fault pause: then the
        robots try it again now); what it was, or None if it was not paused."""
        before = self.states().get(account)
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(account_state).where(account_state.c.account == account)
            ).rowcount
            if gone:
                self.statements.wake_robots(conn)
        return before if gone else None

    @reconnecting
    def fault(self, account: str, robot: str, reason: str, seconds: float) -> None:
        """A robot paused `account` for `seconds` after a transport fault (an operator's
        pause, if any, stays as it is)."""
        values = {
            "kind": PauseKind.FAULT.value,
            "paused_until": self.statements.now_plus(seconds),
            "reason": _cut(reason, PAUSE_REASON_LENGTH),
            "paused_by": _cut(robot, ACCOUNT_NAME_LENGTH),
            "updated_at": utcnow(),
        }
        self._upsert(account, values, unless=PauseKind.OPERATOR)

    @reconnecting
    def clear_fault(self, account: str) -> bool:
        """`account` sent again after a fault: its fault pause is over. False if there was
        none (or an operator's pause is in its place)."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    delete(account_state).where(
                        account_state.c.account == account,
                        account_state.c.kind == PauseKind.FAULT.value,
                    )
                ).rowcount
            )

    def _upsert(
        self, account: str, values: Mapping[str, object], unless: PauseKind | None = None
    ) -> None:
        """Write `account`'s row (a portable upsert: UPDATE, else INSERT; once more if
        another writer inserted it meanwhile); a row of kind `unless` is left alone."""
        try:
            with self.engine.begin() as conn:
                _update_or_insert(conn, account, values, unless)
        except IntegrityError:
            with self.engine.begin() as conn:
                _update_or_insert(conn, account, values, unless)


def _update_or_insert(
    conn: Connection, account: str, values: Mapping[str, object], unless: PauseKind | None
) -> None:
    where = [account_state.c.account == account]
    if unless is not None:
        where.append(account_state.c.kind != unless.value)
    if conn.execute(update(account_state).where(*where).values(**values)).rowcount:
        return
    exists = conn.execute(
        select(account_state.c.account).where(account_state.c.account == account)
    ).first()
    if exists is None:  # (a row there is of kind `unless`)
        conn.execute(insert(account_state).values(account=account, **values))


def _cut(text: str | None, length: int) -> str | None:
    return text if text is None or len(text) <= length else text[: length - 1] + "…"
