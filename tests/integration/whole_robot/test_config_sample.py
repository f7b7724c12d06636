"""`email-robot config sample` prints the commented sample robot.ini, from a checkout and
from an installed wheel (pip users get no robot.ini file otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from robot.config import load_settings

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = (ROOT / "robot.ini").read_text()


def email_robot(cwd: Path, python_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line run in `cwd` (no robot.ini there) with `python_path` as PYTHONPATH."""
    return subprocess.run(
        [sys.executable, "-m", "robot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": python_path, "ROBOT_CONFIG": ""},
    )


def test_config_sample_prints_the_repository_robot_ini_which_loads(tmp_path: Path) -> None:
    printed = email_robot(tmp_path, str(ROOT), "config", "sample")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == SAMPLE
    ini = tmp_path / "robot.ini"
    ini.write_text(printed.stdout)
    settings = load_settings(ini, environ={})
    assert settings.database.url.startswith("sqlite:///")


def test_the_wheel_ships_the_sample_and_prints_it_when_installed(tmp_path: Path) -> None:
    # No build isolation: the backend (hatchling, in the dev extra) comes from this venv, so
    # the test needs no package index.
    build_args = ["wheel", str(ROOT), "-w", str(tmp_path), "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [sys.executable, "-m", "pip", *build_args, "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("email_robot-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("robot/sample.ini").decode() == SAMPLE
        archive.extractall(installed)
    assert not (installed / "robot.ini").exists()  # only the packaged copy
    work = tmp_path / "work"
    work.mkdir()
    printed = email_robot(work, str(installed), "config", "sample")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == SAMPLE
