"""deploy/systemd/email-robot.service: systemd accepts it, and it never restarts on a
configuration error."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "deploy" / "systemd" / "email-robot.service"


def service_section() -> dict[str, list[str]]:
    """[Service] keys with every value (systemd keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_a_configuration_error_stops_the_restarts() -> None:
    service = service_section()
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]  # the robot's exit code for a bad config


def test_the_unit_is_sandboxed() -> None:
    service = service_section()
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateUsers", "PrivateMounts",
                "MemoryDenyWriteExecute", "PrivateDevices", "ProtectKernelTunables"):  # fmt: skip
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert service["CapabilityBoundingSet"] == [""]


def test_systemd_analyze_verify_accepts_it(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the structure is checked above)")
    unit = tmp_path / "email-robot.service"
    # verify wants ExecStart to exist: point it at a binary every machine has.
    unit.write_text(UNIT.read_text().replace("/opt/email-robot/bin/email-robot", "/bin/true"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_configparser_can_read_it_too() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser["Unit"]["Description"].startswith("email-robot")
