"""robot.daemon.supervisor: how settings are shared among sending processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from robot.config import load_settings
from robot.daemon.supervisor import child_settings, share


@pytest.mark.parametrize(
    ("total", "count", "parts"),
    [(16, 2, [8, 8]), (5, 2, [3, 2]), (7, 3, [3, 2, 2]), (100, 3, [34, 33, 33])],
)
def test_share_adds_up(total: int, count: int, parts: list[int]) -> None:
    assert [share(total, i, count) for i in range(count)] == parts
    assert sum(parts) == total


def test_children_split_connections_batch_and_rates(tmp_path: Path) -> None:
    ini = tmp_path / "robot.ini"
    ini.write_text(
        "[robot]\nname = r\nprocesses = 2\nconnections = 5\nbatch_size = 101\nrate = 50\n"
        "[sender]\naddress = a@example.org\n"
        "[account:news]\naddress = n@example.org\nrate = 3\n"
        "[metrics]\nlisten = 127.0.0.1:9464\n"
    )
    settings = load_settings(ini, environ={})
    first, second = (child_settings(settings, i, 2) for i in range(2))
    assert (first.robot.connections, second.robot.connections) == (3, 2)
    assert (first.robot.batch_size, second.robot.batch_size) == (51, 50)
    assert first.robot.rate == second.robot.rate == 25
    assert first.accounts["news"].smtp.rate == 1.5
    assert first.metrics.listen == "127.0.0.1:9464" and second.metrics.listen is None
    assert (first.robot.name, second.robot.name) == ("r-0", "r-1")
    assert first.robot.processes == 1


def test_processes_may_not_outnumber_connections(tmp_path: Path) -> None:
    from robot.errors import ConfigError

    ini = tmp_path / "robot.ini"
    ini.write_text("[robot]\nprocesses = 3\nconnections = 2\n[sender]\naddress = a@example.org\n")
    with pytest.raises(ConfigError, match="processes: must not be more than connections"):
        load_settings(ini, environ={})
