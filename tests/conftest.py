"""Fixtures shared by every test: a robot.ini writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

BASE_INI = """
[database]
url = {url}

[robot]
grace_minutes = 0
poll_seconds = 0.2
batch_size = 20
connections = 2
lease_seconds = 30

[smtp]
host = 127.0.0.1
port = {port}
security = none
helo_name = robot.test.example
timeout_seconds = 5

[sender]
address = robot@example.org
name = Test Robot

[log]
format = json
level = debug
"""

WriteIni = Callable[..., Path]


@pytest.fixture
def write_ini(tmp_path: Path) -> WriteIni:
    """Write a robot.ini: the base above with {url}/{port} filled, plus extra text appended
    (later keys of a section given again in `extra` replace the base ones)."""

    def write(url: str, port: int = 2525, extra: str = "", name: str = "robot.ini") -> Path:
        import configparser

        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(BASE_INI.format(url=url, port=port))
        parser.read_string(extra)
        path = tmp_path / name
        with path.open("w") as handle:
            parser.write(handle)
        return path

    return write


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember skipped tests: in CI a skip (say, of PostgreSQL) is a failure."""
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when CI is set and anything was skipped."""
    import os

    if os.environ.get("CI") and _skipped and exitstatus == 0:
        print(f"\n{len(_skipped)} test(s) skipped in CI, which counts as a failure:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = 1
