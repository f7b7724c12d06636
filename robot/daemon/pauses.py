"""Accounts paused: after a transport fault (the server refused the connection, the login or
TLS), no row of theirs is claimed or sent until the pause is over, longer at each fault; and
accounts an operator paused (account_state, read every poll_seconds)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from robot.backoff import ACCOUNT_FIRST, ACCOUNT_LONGEST, Backoff


class AccountPauses:
    """When each paused account may send again (monotonic clock), and which accounts an
    operator paused as of the last read of account_state."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._backoff: dict[str, Backoff] = {}
        self._by_operator: dict[str, str] = {}  # account: who paused it and why
        self._operator_read_at = float("-inf")  # when that read began (monotonic)

    def pause(self, account: str) -> tuple[float, bool]:
        """Pause `account` after a fault: (seconds, whether it was sending until now)."""
        backoff = self._backoff.setdefault(account, Backoff(ACCOUNT_FIRST, ACCOUNT_LONGEST))
        seconds = backoff.next() or ACCOUNT_FIRST
        was_sending = not self.is_paused(account)
        self._until[account] = time.monotonic() + seconds
        return seconds, was_sending

    def sent(self, account: str) -> bool:
        """The account's server took a message: the next fault starts the pauses afresh.
        True when this ends a run of faults (the shared state is to say so)."""
        if account in self._backoff:
            del self._backoff[account]
            return True
        return False

    def lift(self, account: str) -> bool:
        """An operator resumed `account` while it waited out a fault pause: try it now (the
        next fault pauses it for longer still). False if it was not paused."""
        return self._until.pop(account, 0.0) > time.monotonic()

    def is_paused(self, account: str) -> bool:
        """True while `account` waits out a pause after a fault."""
        return self._until.get(account, 0.0) > time.monotonic()

    def paused(self) -> list[str]:
        """The accounts paused now, after a fault or by an operator."""
        now = time.monotonic()
        faults = [name for name, until in self._until.items() if until > now]
        return faults + [name for name in self._by_operator if name not in faults]

    def seconds_to_next_end(self) -> float | None:
        """Seconds until the first pause ends, None when no account is paused."""
        now = time.monotonic()
        ends = [until for until in self._until.values() if until > now]
        return min(ends) - now if ends else None

    # -- operators' pauses ---------------------------------------------------------------

    def read_operator_pauses(self, paused: Mapping[str, str], read_at: float) -> list[str]:
        """The accounts an operator has paused, as a read of account_state that began at
        `read_at` (monotonic) found them; the accounts resumed since the last read."""
        resumed = [name for name in self._by_operator if name not in paused]
        self._by_operator = dict(paused)
        self._operator_read_at = read_at
        return resumed

    def operator_paused(self) -> dict[str, str]:
        """The accounts an operator paused as of the last read, with who and why."""
        return dict(self._by_operator)

    def by_operator(self, account: str, claimed_at: float) -> str | None:
        """Who paused `account` and why, if an operator did so and a read of account_state
        made after the row was claimed at `claimed_at` says so (a row claimed later was
        claimed after the pause ended: the claim itself leaves paused accounts alone)."""
        if claimed_at >= self._operator_read_at:
            return None
        return self._by_operator.get(account)
