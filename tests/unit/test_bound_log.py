"""robot.logs.Bound: a lazily bound logger logs what `bind` would have."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from robot.logs import Bound


@pytest.mark.parametrize("method", ["debug", "info", "warning", "error", "exception"])
def test_bound_events_carry_the_values_as_bind_does(method: str) -> None:
    base = structlog.get_logger().bind(logger="worker")
    with capture_logs() as logs:
        getattr(base.bind(id=7, message_id="<7.a@x>"), method)("message.sent", code=250)
        getattr(Bound(base, id=7, message_id="<7.a@x>"), method)("message.sent", code=250)
    assert len(logs) == 2
    assert logs[0] == logs[1]
    assert logs[1]["id"] == 7 and logs[1]["code"] == 250


def test_a_field_given_again_wins_as_over_bind() -> None:
    base = structlog.get_logger()
    with capture_logs() as logs:
        base.bind(id=7).info("e", id=8)
        Bound(base, id=7).info("e", id=8)
    assert logs[0] == logs[1] == {"event": "e", "id": 8, "log_level": "info"}


def test_anything_else_is_the_bound_loggers() -> None:
    base = structlog.get_logger()
    with capture_logs() as logs:
        nested: Any = Bound(base, id=7).bind(domain="example.org")
        nested.info("direct.domain")
    assert logs == [
        {"event": "direct.domain", "id": 7, "domain": "example.org", "log_level": "info"}
    ]
