"""A token bucket: at most `rate` messages a second, bursts of at most one second's worth."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """Shared by every connection it limits; `rate` 0 means unlimited."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def delay(self) -> float:
        """Take a token if one is there (return 0), else the seconds until the next one."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate

    async def acquire(self) -> None:
        """Wait for a token; first come, first served."""
        if self.rate <= 0:
            return
        async with self._lock:
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)
