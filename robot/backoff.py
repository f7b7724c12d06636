"""One back-off schedule for everything that waits after a failure and tries again: the
database, an account's SMTP server, the LISTEN connection.

Each kind of wait has its numbers here, once.
"""

from __future__ import annotations

import time

DATABASE_FIRST, DATABASE_LONGEST = 0.5, 10.0  # seconds between tries through an outage
STOP_PATIENCE = 20.0  # while stopping, how long to keep trying to record an outcome
ACCOUNT_FIRST, ACCOUNT_LONGEST = 10.0, 600.0  # an account paused after a transport fault
LISTEN_FIRST, LISTEN_LONGEST = 1.0, 30.0  # the LISTEN connection of PostgreSQL


class Backoff:
    """Waits of `first` seconds, doubling up to `longest`. With `patience`, once the robot
    is stopping, keep trying for `patience` seconds in all, then give up."""

    def __init__(self, first: float, longest: float, patience: float | None = None) -> None:
        self.first = first
        self.delay = first  # what the next wait will be, for the log line
        self._longest = longest
        self._patience = patience
        self._give_up_at: float | None = None

    def next(self, stopping: bool = False) -> float | None:
        """Seconds to wait before the next try; None: give up (only while stopping, and
        only with a patience)."""
        if stopping and self._patience is not None:
            if self._give_up_at is None:
                self._give_up_at = time.monotonic() + self._patience
            elif time.monotonic() > self._give_up_at:
                return None
        delay, self.delay = self.delay, min(self.delay * 2, self._longest)
        return delay

    def reset(self) -> None:
        """The last try worked: start again from `first`."""
        self.delay = self.first
        self._give_up_at = None


def database_backoff() -> Backoff:
    """The schedule of a write that must not be lost (an outcome, a release)."""
    return Backoff(DATABASE_FIRST, DATABASE_LONGEST, STOP_PATIENCE)
