"""The console's login throttle, on a clock the test moves."""

from __future__ import annotations

from robot.web.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_blocked_after_its_failures_and_free_again_after_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window=60, clock=clock)
    keys = ["user:olga", "client:10.0.0.1"]
    for _ in range(2):
        throttle.failed(keys)
    assert not throttle.blocked(keys)
    throttle.failed(keys)
    assert throttle.blocked(["user:olga"]) and throttle.blocked(["client:10.0.0.1"])
    assert not throttle.blocked(["user:ada", "client:10.0.0.2"])
    clock.now += 61
    assert not throttle.blocked(keys)


def test_success_forgets_only_the_keys_given() -> None:
    throttle = LoginThrottle(max_failures=2, window=60, clock=Clock())
    throttle.failed(["user:olga", "client:a"])
    throttle.failed(["user:olga", "client:a"])
    throttle.succeeded(["user:olga"])
    assert not throttle.blocked(["user:olga"]) and throttle.blocked(["client:a"])
