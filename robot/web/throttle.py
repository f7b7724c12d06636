"""Login attempts throttled per user name and per client address, in this process's memory."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

MAX_FAILURES = 5  # failed logins per name, and per client address, within WINDOW_SECONDS
WINDOW_SECONDS = 15 * 60
TRACKED_KEYS = 100_000  # forget the oldest keys beyond this, so memory stays bounded


class LoginThrottle:
    """Refuses attempts for a name or an address that failed `max_failures` times within the
    last `window` seconds (a right password included, so that guessing stops there)."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, keys: Iterable[str]) -> bool:
        """True when any of `keys` has used up its attempts."""
        now = self.clock()
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                continue
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.max_failures:
                return True
        return False

    def failed(self, keys: Iterable[str]) -> None:
        """Count one failed attempt against each of `keys`."""
        now = self.clock()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)
        while len(self._failures) > TRACKED_KEYS:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, keys: Iterable[str]) -> None:
        """Forget the failures of `keys` after a successful login."""
        for key in keys:
            self._failures.pop(key, None)
