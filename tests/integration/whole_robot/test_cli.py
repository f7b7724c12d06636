"""The command line as an operator uses it: real processes, signals, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WriteIni
from tests.integration.host import host_sql, insert_many
from tests.support.robot_proc import RobotProcess
from tests.support.smtpd import TestSMTPServer


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def acli(*args: str) -> tuple[int, str, str]:
    """Run the command line without blocking the loop that serves SMTP."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "robot", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_bad_config_exits_2_naming_the_key_and_the_file(
    tmp_path: Path, write_ini: WriteIni
) -> None:
    cases = {
        "[robot]\nbatch_size = lots\n": "batch_size",
        "[smtp]\nsecurity = tls\n": "security",
        "[smtp]\nhots = x\n": "hots",
        "[robots]\nname = x\n": "[robots]",
        "[attachments]\nmax_mb = 500\n": "max_mb",
    }
    for extra, key in cases.items():
        ini = write_ini(f"sqlite:///{tmp_path}/r.db", 25, extra)
        result = cli("-c", str(ini), "run")
        assert result.returncode == 2, (extra, result.stderr)
        line = one_line_error(result)
        assert key in line and str(ini) in line, line


def test_bad_environment_override_and_missing_file(tmp_path: Path, write_ini: WriteIni) -> None:
    ini = write_ini(f"sqlite:///{tmp_path}/r.db")
    result = cli("run", "-c", str(ini), env={"ROBOT_ROBOT_CONNECTIONS": "many"})
    assert result.returncode == 2
    assert "connections" in one_line_error(result)
    result = cli("-c", str(tmp_path / "nowhere.ini"), "list")
    assert result.returncode == 2
    assert "nowhere.ini" in one_line_error(result)


def test_missing_sender_address(tmp_path: Path) -> None:
    ini = tmp_path / "robot.ini"
    ini.write_text(f"[database]\nurl = sqlite:///{tmp_path}/r.db\n")
    result = cli("-c", str(ini), "check")
    assert result.returncode == 2
    assert "[sender] address" in one_line_error(result)


def test_enqueue_list_show(tmp_path: Path, write_ini: WriteIni) -> None:
    ini = str(write_ini(f"sqlite:///{tmp_path}/r.db", 25, "[robot]\ngrace_minutes = 5\n"))
    created = cli("-c", ini, "db", "upgrade")
    assert created.returncode == 0 and created.stdout.startswith("created the schema (")
    again = cli("-c", ini, "db", "upgrade")
    assert again.stdout.startswith("the schema is up to date (")
    attachment = tmp_path / "notice.pdf"
    attachment.write_bytes(b"%PDF-1.4 test")
    made = cli("-c", ini, "enqueue", "--to", "a@example.org", "--subject", "Hi", "--text", "Body",
               "--attach", str(attachment), "--batch", "b1")  # fmt: skip
    assert made.returncode == 0, made.stderr
    row_id = int(made.stdout)
    listing = cli("-c", ini, "list", "--batch", "b1")
    assert listing.returncode == 0
    line = listing.stdout.splitlines()[1]
    assert str(row_id) in line and "pending" in line
    assert "4m" in line or "5m" in line  # the grace delay counting down
    shown = json.loads(cli("show", str(row_id), "--json", "-c", ini).stdout)
    assert shown["attachments"] == [
        {"filename": "notice.pdf", "content_type": "application/pdf", "size": 13}
    ]
    assert shown["history"] == []
    missing = cli("-c", ini, "show", "999")
    assert missing.returncode == 1
    assert "999" in one_line_error(missing)


async def test_test_and_check_against_a_real_server(
    tmp_path: Path, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    ini = str(write_ini(url, smtp_server.port))
    assert (await acli("-c", ini, "db", "upgrade"))[0] == 0
    code, out, err = await acli("-c", ini, "test", "--to", "ops@example.org")
    assert code == 0, err
    assert out.startswith("250")
    assert smtp_server.received[0].rcpt_tos == ["ops@example.org"]
    assert "test message" in smtp_server.received[0].message()["Subject"]
    assert host_sql(url, "SELECT count(*) FROM outbox") == [(0,)]  # test writes no row

    smtp_server.rcpt_replies = {"nobody@example.org": "550 5.1.1 no such user"}
    code, out, err = await acli("-c", ini, "test", "--to", "nobody@example.org")
    assert code == 1
    assert "550" in err and len(err.strip().splitlines()) == 1

    code, out, err = await acli("-c", ini, "check")
    assert code == 0, err
    assert "account default" in out and "ok" in out
    assert len(smtp_server.received) == 1  # check sends nothing

    code, _, err = await acli("-c", ini, "test", "--to", "x@example.org", "--account", "nosuch")
    assert code == 2 and "nosuch" in err


def test_check_reports_an_unreachable_server_in_one_line(
    tmp_path: Path, write_ini: WriteIni
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ini = str(write_ini(f"sqlite:///{tmp_path}/r.db", port))
    assert cli("-c", ini, "db", "upgrade").returncode == 0
    result = cli("-c", ini, "check")
    assert result.returncode == 1
    assert "connection refused" in one_line_error(result)


async def test_sigterm_mid_batch_exits_0_and_leaves_nothing_sending(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer, tmp_path: Path
) -> None:
    smtp_server.data_delay = 0.15
    insert_many(db_url, 40)
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    ini = write_ini(db_url, smtp_server.port, "[robot]\nconnections = 2\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "robot", "-c", str(ini), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
    )  # fmt: skip
    try:
        await smtp_server.wait_for(4, timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    states = []
    while True:
        try:
            states.append(notify.recv(100).decode())
        except BlockingIOError:
            break
    notify.close()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert states[0] == "READY=1" and "STOPPING=1" in states
    counts = dict(host_sql(db_url, "SELECT status, count(*) FROM outbox GROUP BY status"))
    assert "sending" not in counts
    assert counts.get("sent", 0) == len(smtp_server.received)  # every accepted one recorded
    assert 4 <= counts["sent"] < 40
    assert counts["pending"] == 40 - counts["sent"]
    assert host_sql(db_url, "SELECT max(attempts) FROM outbox WHERE status = 'pending'") == [(0,)]


async def test_sighup_reloads_and_refuses_a_broken_config(
    tmp_path: Path, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    ini = write_ini(url, smtp_server.port, "[robot]\ngrace_minutes = 60\n")
    host_sql_ready = False
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "robot", "-c", str(ini), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        seen: list[str] = []

        async def wait_for_event(name: str) -> None:
            while True:
                line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()  # type: ignore[union-attr]
                assert line, "the robot exited"
                seen.append(line)
                if f'"event": "{name}"' in line:
                    return

        await wait_for_event("robot.started")
        host_sql(url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@example.org', 'x')")
        host_sql_ready = True
        ini.write_text(ini.read_text() + "\n[nonsense]\nx = 1\n")
        proc.send_signal(signal.SIGHUP)
        await wait_for_event("config.reload_refused")
        assert smtp_server.received == []  # still the 60-minute grace delay
        write_ini(url, smtp_server.port, "[robot]\ngrace_minutes = 0\n")
        proc.send_signal(signal.SIGHUP)
        await wait_for_event("config.reloaded")
        await smtp_server.wait_for(1, timeout=20)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert host_sql_ready
    assert proc.returncode == 0
    assert host_sql(url, "SELECT status FROM outbox") == [("sent",)]


async def test_two_sending_processes_send_each_row_once_and_stop_on_sigterm(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    insert_many(db_url, 120)
    # Slow enough that one process alone would need 3 s: the other, started a moment later
    # on a loaded machine, still finds rows to claim.
    smtp_server.data_delay = 0.05
    ini = write_ini(db_url, smtp_server.port, "[robot]\nprocesses = 2\nconnections = 4\n")
    robot = await RobotProcess(ini).start()
    try:
        await smtp_server.wait_for(120, timeout=60)
        code = await robot.terminate()
    finally:
        await robot.close()
    assert code == 0, robot.tail()
    recipients = [r for m in smtp_server.received for r in m.rcpt_tos]
    assert sorted(recipients) == sorted(f"r{i}@example.org" for i in range(1, 121))
    workers = host_sql(db_url, "SELECT DISTINCT detail FROM outbox_event WHERE kind = 'claimed'")
    assert len({w[0].rsplit(":", 1)[1] for w in workers}) == 2  # two processes claimed
    assert host_sql(db_url, "SELECT count(*) FROM outbox WHERE status <> 'sent'") == [(0,)]
    assert len(robot.named("robot.stopped")) == 2, robot.tail()


def test_run_refuses_an_empty_bounce_mailbox_password_file(
    tmp_path: Path, write_ini: WriteIni
) -> None:
    secret = tmp_path / "imap_password"
    secret.write_text("")
    ini = write_ini(
        f"sqlite:///{tmp_path}/r.db",
        25,
        f"[bounces]\nmailbox = imaps://u@imap.example.org\npassword_file = {secret}\n",
    )
    result = cli("-c", str(ini), "run", "--drain")
    assert result.returncode == 2
    line = one_line_error(result)
    assert f"[bounces] password_file: {secret} is empty" in line


@pytest.mark.parametrize("command", [["list"], ["status"], ["show", "1"], ["suppress", "list"]])
def test_a_missing_sqlite_database_is_an_error_and_is_not_created(
    tmp_path: Path, write_ini: WriteIni, command: list[str]
) -> None:
    """An operator command run against a wrong path used to create an empty database and
    report an empty queue."""
    ini = str(write_ini(f"sqlite:///{tmp_path}/typo.db", 25))
    result = cli("-c", ini, *command)
    assert result.returncode == 2
    assert f"the SQLite database {tmp_path}/typo.db does not exist" in one_line_error(result)
    assert "email-robot db upgrade" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def test_db_upgrade_does_not_invent_folders(tmp_path: Path, write_ini: WriteIni) -> None:
    ini = str(write_ini(f"sqlite:///{tmp_path}/no/such/dir/r.db", 25))
    result = cli("-c", ini, "db", "upgrade")
    assert result.returncode == 2
    assert f"the folder {tmp_path}/no/such/dir does not exist" in one_line_error(result)
    assert not (tmp_path / "no").exists()


def test_list_json_into_a_closed_pipe_stops_quietly(tmp_path: Path, write_ini: WriteIni) -> None:
    """`email-robot list --json | head` used to end in "internal error: BrokenPipeError"."""
    ini = str(write_ini(f"sqlite:///{tmp_path}/r.db", 25))
    assert cli("-c", ini, "db", "upgrade").returncode == 0
    host_sql(
        f"sqlite:///{tmp_path}/r.db",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) "
        "INSERT INTO outbox (recipient, subject, body_text) "
        "SELECT 'r' || i || '@example.org', 'Hello', 'Body' FROM n",
    )
    reader = subprocess.Popen(
        [sys.executable, "-m", "robot", "-c", ini, "list", "--json", "--limit", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.read(100)  # like `head -c 100`, then go away
    reader.stdout.close()
    errors = reader.stderr.read().decode()
    reader.stderr.close()
    assert reader.wait(30) == 141, errors  # 128 + SIGPIPE, as for any Unix tool
    assert errors == ""


def test_list_says_when_it_shows_only_some_and_refuses_a_bogus_status(
    tmp_path: Path, write_ini: WriteIni
) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    ini = str(write_ini(url, 25))
    assert cli("-c", ini, "db", "upgrade").returncode == 0
    for n in range(3):
        cli("-c", ini, "enqueue", "--to", f"r{n}@example.org", "--text", "x" * 5000)
    some = cli("-c", ini, "list", "--limit", "2", "--json")
    assert [row["recipient"] for row in json.loads(some.stdout)] == [
        "r2@example.org",
        "r1@example.org",
    ]
    assert "the newest 2 rows; --limit N shows more" in some.stderr
    assert "body_text" not in some.stdout  # bodies stay out of a listing; `show` has them
    every = cli("-c", ini, "list", "--limit", "3")
    assert every.stderr == ""
    bogus = cli("-c", ini, "list", "--status", "bogus")
    assert bogus.returncode == 2
    assert "invalid choice: 'bogus'" in bogus.stderr
