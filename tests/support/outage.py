"""A database on a server that a test takes down and brings back (PostgreSQL or MariaDB)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RestartableDatabase"]


@dataclass(frozen=True)
class RestartableDatabase:
    """A migrated, empty database on a server the test may take down and bring back."""

    kind: str  # postgresql, mariadb
    url: str
    down: Callable[[], None]  # a fast shutdown: sessions cut, new connections refused
    up: Callable[[], None]  # the same server again, waiting until it answers
