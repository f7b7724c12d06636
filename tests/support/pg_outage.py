"""Take a PgCluster down and bring it back on the same port, keeping its data.

`PgCluster.stop()` deletes the cluster and `restart()` leaves no time in between; an outage
of a chosen length needs the two halves separately. Both block: call them in a thread
(`asyncio.to_thread`) when an event loop must keep serving meanwhile.
"""

from __future__ import annotations

from tests.support.pg import PgCluster

__all__ = ["pg_down", "pg_up"]


def pg_down(cluster: PgCluster) -> None:
    """Fast shutdown: open sessions are terminated, new connections are refused."""
    proc = cluster._pg_ctl("stop", "-m", "fast")
    if proc.returncode != 0:
        raise cluster._fail("pg_ctl stop (outage)", proc)


def pg_up(cluster: PgCluster) -> None:
    """Start the server again (same data directory and port) and wait until it answers."""
    proc = cluster._pg_ctl("start")
    if proc.returncode != 0:
        raise cluster._fail("pg_ctl start (after outage)", proc)
    cluster._wait_ready()
