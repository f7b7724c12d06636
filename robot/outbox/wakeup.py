"""Wake the dispatcher when a host application inserts rows: PostgreSQL LISTEN/NOTIFY.

The trigger of migration 0002 sends one notification per INSERT statement on the channel
below. The listener keeps its own autocommit connection and reconnects after an outage;
polling stays the safety net.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from robot.backoff import LISTEN_FIRST, LISTEN_LONGEST, Backoff
from robot.logs import first_line
from robot.outbox.dialects import NOTIFY_CHANNEL
from robot.outbox.engine import libpq_dsn

CHANNEL = NOTIFY_CHANNEL
LISTEN_SLICE = 1.0  # seconds between looks at the stop flag while waiting


async def listen(
    url: URL, on_notify: Callable[[], None], log: Any, stopping: asyncio.Event
) -> None:
    """Call `on_notify` for every notification until `stopping` is set; never raises."""
    backoff = Backoff(LISTEN_FIRST, LISTEN_LONGEST)
    while not stopping.is_set():
        try:
            conn = await psycopg.AsyncConnection.connect(
                libpq_dsn(url), autocommit=True, connect_timeout=10
            )
        except psycopg.Error as exc:
            log.warning("listen.unavailable", error=first_line(exc), retry_in=backoff.delay)
            await _sleep(stopping, backoff.next() or LISTEN_FIRST)
            continue
        try:
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                log.debug("listen.ready", channel=CHANNEL)
                backoff = Backoff(LISTEN_FIRST, LISTEN_LONGEST)
                on_notify()  # rows may have come while we were not listening
                while not stopping.is_set():
                    async for _ in conn.notifies(timeout=LISTEN_SLICE):
                        on_notify()
        except psycopg.Error as exc:
            log.warning("listen.lost", error=first_line(exc), retry_in=backoff.delay)
            await _sleep(stopping, backoff.next() or LISTEN_FIRST)


async def _sleep(stopping: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        pass
