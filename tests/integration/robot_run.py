"""Run a Robot in the test's own event loop against real databases and SMTP servers."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from robot.config import Settings, load_settings
from robot.daemon.robot import Robot
from robot.logs import configure_logging
from robot.outbox.engine import make_engine


async def drain(ini: Path, timeout: float = 30) -> tuple[int, list[dict[str, Any]]]:
    """`run --drain` in-process: returns the exit code and the JSON log events."""
    import asyncio

    settings: Settings = load_settings(ini, environ={})
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    engine = make_engine(settings.database.url)
    try:
        code = await asyncio.wait_for(Robot(settings, engine, drain=True).run(), timeout)
    finally:
        engine.dispose()
    events = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    return code, events
