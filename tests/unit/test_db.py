"""Engine set-up that needs no server: the SQLite version check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from robot.errors import ConfigError
from robot.outbox import engine as db


def test_an_sqlite_without_returning_is_refused_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigError) as caught:
        db.make_engine(f"sqlite:///{tmp_path}/r.db")
    message = str(caught.value)
    assert "3.31.1" in message and "3.35" in message and "database.url" in message
    assert not (tmp_path / "r.db").exists()


def test_the_sqlite_of_this_python_is_new_enough(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/r.db")
    with engine.connect() as conn:
        version = conn.exec_driver_sql("select sqlite_version()").scalar()
    engine.dispose()
    assert tuple(int(p) for p in str(version).split(".")) >= db.SQLITE_MINIMUM
