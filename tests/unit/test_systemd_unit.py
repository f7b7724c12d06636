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


README = Path(__file__).parents[2] / "README.md"


def production_steps() -> list[str]:
    """The command block of the README's "Running as a systemd service" (what
    scripts/walkthrough.sh runs as root, line by line)."""
    text = README.read_text().split("## Running as a systemd service", 1)[1]
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_installs_the_password_where_the_service_user_reads_it() -> None:
    """The password the README installs must be readable by the unit's user, without root."""
    service = service_section()
    user, group = service["User"][0], service["Group"][0]
    (install,) = [step for step in production_steps() if "/etc/email-robot/smtp_password" in step]
    assert f"-m 640 -g {group} " in install  # root writes it, the service's group reads it
    # One story: robot.ini's password_file names that file; no systemd credential beside it.
    assert "LoadCredential" not in service
    # The admin's check and test run as the service user, with the same file.
    for verb in ("db upgrade", "check", "test --to"):
        assert any(
            step.startswith(f"sudo -u {user} ROBOT_CONFIG=/etc/email-robot/robot.ini ")
            and f"email-robot {verb}" in step
            for step in production_steps()
        ), verb


def test_the_readme_makes_the_state_directory_before_db_upgrade() -> None:
    steps = production_steps()
    (state,) = [i for i, step in enumerate(steps) if "install -d" in step and "/var/lib/" in step]
    (upgrade,) = [i for i, step in enumerate(steps) if "db upgrade" in step]
    assert state < upgrade
    assert "-o email-robot -g email-robot /var/lib/email-robot" in steps[state]
