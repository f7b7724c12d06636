"""robot.daemon.throttle: the token bucket behind [robot] rate and an account's rate."""

from __future__ import annotations

import time

import pytest

from robot.daemon.throttle import TokenBucket


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("rate", [1, 3, 10])
def test_burst_of_rate_then_one_per_interval(rate: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock)
    assert [bucket.delay() for _ in range(rate)] == [0.0] * rate
    assert bucket.delay() == pytest.approx(1 / rate)
    for _ in range(5):
        clock.advance(1 / rate)
        assert bucket.delay() == 0.0
        assert bucket.delay() == pytest.approx(1 / rate)


def test_wait_shrinks_as_time_passes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, clock=clock)
    bucket.delay()
    bucket.delay()
    assert bucket.delay() == pytest.approx(0.5)
    clock.advance(0.2)
    assert bucket.delay() == pytest.approx(0.3)


def test_burst_is_at_most_one_seconds_worth() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, clock=clock)
    clock.advance(3600)  # an idle hour does not bank an hour of tokens
    assert [bucket.delay() for _ in range(4)] == [0.0] * 4
    assert bucket.delay() == pytest.approx(0.25)


def test_slow_rate_sends_one_then_waits() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0.5, clock=clock)
    assert bucket.delay() == 0.0
    assert bucket.delay() == pytest.approx(2.0)
    clock.advance(2.0)
    assert bucket.delay() == 0.0


def test_sustained_rate_over_a_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, clock=clock)
    sent = 0
    for _ in range(60 * 100):  # poll every 10 ms for a minute
        while bucket.delay() == 0.0:
            sent += 1
        clock.advance(0.01)
    assert 5 * 60 <= sent <= 5 * 60 + 5 + 1


def test_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(0, clock=FakeClock())
    assert [bucket.delay() for _ in range(1000)] == [0.0] * 1000


async def test_acquire_unlimited_returns_at_once() -> None:
    bucket = TokenBucket(0)
    start = time.monotonic()
    for _ in range(1000):
        await bucket.acquire()
    assert time.monotonic() - start < 0.5


async def test_acquire_waits_for_tokens() -> None:
    bucket = TokenBucket(100)
    start = time.monotonic()
    for _ in range(110):
        await bucket.acquire()
    # 100 at once, then one per 10 ms: 110 tokens cannot be had in less than 0.1 s.
    assert time.monotonic() - start >= 0.1 - 1e-3
