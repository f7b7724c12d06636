"""`email-robot user ...` and `email-robot web` as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from robot.outbox.engine import make_engine
from robot.web.users import Users
from tests.conftest import WriteIni
from tests.support.robot_proc import RobotProcess


def cli(ini: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot", "-c", str(ini), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_user_add_list_passwd_remove(db_url: str, write_ini: WriteIni) -> None:
    ini = write_ini(db_url)
    added = cli(ini, "user", "add", "olga", "--role", "operator", stdin="first-pass-1\n")
    assert added.returncode == 0 and "user olga added (operator)" in added.stdout, added.stderr
    again = cli(ini, "user", "add", "olga", "--role", "admin", stdin="other-pass-1\n")
    assert again.returncode == 2 and "exists already" in again.stderr
    short = cli(ini, "user", "add", "bob", "--role", "viewer", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    bad_role = cli(ini, "user", "add", "bob", "--role", "boss", stdin="long-enough-1\n")
    assert bad_role.returncode == 2
    listing = cli(ini, "user", "list")
    assert listing.returncode == 0 and listing.stdout.startswith("olga\toperator\t")
    assert "first-pass-1" not in listing.stdout and "argon2" not in listing.stdout

    engine = make_engine(db_url)
    try:
        users = Users(engine)
        assert users.verify("olga", "first-pass-1") is not None
        changed = cli(ini, "user", "passwd", "olga", stdin="second-pass-2\n")
        assert changed.returncode == 0, changed.stderr
        assert users.verify("olga", "first-pass-1") is None
        assert users.verify("olga", "second-pass-2") is not None
        assert cli(ini, "user", "passwd", "nobody", stdin="second-pass-2\n").returncode == 1
        removed = cli(ini, "user", "remove", "olga")
        assert removed.returncode == 0 and users.get("olga") is None
        assert cli(ini, "user", "remove", "olga").returncode == 1
    finally:
        engine.dispose()


async def test_web_warns_when_it_listens_beyond_loopback_and_stops_cleanly(
    tmp_path: Path, write_ini: WriteIni
) -> None:
    ini = write_ini(f"sqlite:///{tmp_path}/robot.db")
    assert cli(ini, "db", "upgrade").returncode == 0
    local = await RobotProcess(ini, "web", "--listen", "127.0.0.1:0").start()
    try:
        await local.wait_for_event("web_listening")
        assert local.named("web_not_on_loopback") == []
    finally:
        assert await local.terminate() == 0, local.tail()
    wide = await RobotProcess(ini, "web", "--listen", "0.0.0.0:0").start()
    try:
        warning = await wide.wait_for_event("web_not_on_loopback")
        assert warning["level"] == "warning" and "TLS" in warning["advice"]
        await wide.wait_for_event("web_listening")
    finally:
        assert await wide.terminate() == 0, wide.tail()


def test_web_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, write_ini: WriteIni) -> None:
    ini = write_ini(f"sqlite:///{tmp_path}/robot.db")
    assert cli(ini, "db", "upgrade").returncode == 0
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli(ini, "web", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"email-robot: web: cannot listen on 127.0.0.1:{port}: Address already in use"
    ), result.stderr
    assert "Traceback" not in result.stderr
