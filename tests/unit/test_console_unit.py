"""The console's systemd unit is sandboxed exactly like the robot's."""

from __future__ import annotations

from pathlib import Path

UNITS = Path(__file__).parents[2] / "deploy" / "systemd"


def sandboxing(unit: str) -> list[str]:
    text = (UNITS / unit).read_text()
    section = text.split("# Sandboxing\n", 1)[1].split("\n[", 1)[0]
    return [line for line in section.splitlines() if line.strip()]


def test_the_console_unit_has_the_robots_hardening() -> None:
    robot = sandboxing("email-robot.service")
    assert len(robot) > 20
    assert sandboxing("email-robot-web.service") == robot
    web = (UNITS / "email-robot-web.service").read_text()
    assert "ExecStart=/opt/email-robot/bin/email-robot web\n" in web
    assert "User=email-robot\n" in web
