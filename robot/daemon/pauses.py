"""Accounts paused after a transport fault (the server refused the connection, the login or
TLS): no row of theirs is claimed or sent until the pause is over, longer at each fault."""

from __future__ import annotations

import time

from robot.backoff import ACCOUNT_FIRST, ACCOUNT_LONGEST, Backoff


class AccountPauses:
    """When each paused account may send again (monotonic clock)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._backoff: dict[str, Backoff] = {}

    def pause(self, account: str) -> tuple[float, bool]:
        """Pause `account` after a fault: (seconds, whether it was sending until now)."""
        backoff = self._backoff.setdefault(account, Backoff(ACCOUNT_FIRST, ACCOUNT_LONGEST))
        seconds = backoff.next() or ACCOUNT_FIRST
        was_sending = not self.is_paused(account)
        self._until[account] = time.monotonic() + seconds
        return seconds, was_sending

    def sent(self, account: str) -> None:
        """The account's server took a message: the next fault starts the pauses afresh."""
        if account in self._backoff:
            del self._backoff[account]

    def is_paused(self, account: str) -> bool:
        """True while `account` waits out a pause."""
        return self._until.get(account, 0.0) > time.monotonic()

    def paused(self) -> list[str]:
        """The accounts paused now."""
        now = time.monotonic()
        return [name for name, until in self._until.items() if until > now]

    def seconds_to_next_end(self) -> float | None:
        """Seconds until the first pause ends, None when no account is paused."""
        now = time.monotonic()
        ends = [until for until in self._until.values() if until > now]
        return min(ends) - now if ends else None
