"""Starting and stopping real robot processes when something around them goes away: the
reader of their log, their supervising process, the database at start."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from robot.config import load_settings
from robot.daemon.robot import Robot
from robot.logs import configure_logging
from robot.outbox.engine import make_engine
from tests.conftest import WriteIni
from tests.integration.host import host_sql, insert_many
from tests.support.outage import RestartableDatabase
from tests.support.robot_proc import RobotProcess, wait_until
from tests.support.smtpd import TestSMTPServer


class PipedRobot:
    """`python -m robot -c INI run` whose stderr is a pipe that this test reads, and can
    close, as `head` or a killed `tee` does: its next write then fails with EPIPE."""

    def __init__(self, ini: Path) -> None:
        self.ini = ini
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._read_fd: int | None = None
        self._partial = b""

    async def start(self) -> PipedRobot:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "robot", "-c", str(self.ini), "run",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=write_fd,
        )  # fmt: skip
        os.close(write_fd)  # the robot (and its children) hold the only write ends
        self._read_fd = read_fd
        asyncio.get_running_loop().add_reader(read_fd, self._read)
        return self

    def _read(self) -> None:
        assert self._read_fd is not None
        try:
            data = os.read(self._read_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self._read_fd)
            return
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def hang_up(self) -> None:
        """Close the reading end: nobody reads the robot's stderr any more."""
        if self._read_fd is not None:
            asyncio.get_running_loop().remove_reader(self._read_fd)
            os.close(self._read_fd)
            self._read_fd = None

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def tail(self) -> str:
        return "\n".join(self.lines[-20:])

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the robot still runs after `timeout` seconds."""
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return None

    async def close(self, children: list[int]) -> None:
        """Make sure the robot and its `children` are gone; never raises."""
        self.hang_up()
        for pid in children:
            kill_quietly(pid)
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def runs(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a parent that may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def robot_pids(events: list[dict[str, Any]]) -> list[int]:
    """The process ids of the sending processes that logged robot.started."""
    return [int(e["robot"].rsplit(":", 1)[1]) for e in events if e.get("event") == "robot.started"]


# -- a log reader that went away -------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigterm_stops_the_robot_after_its_log_reader_went_away(
    processes: int, db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """`email-robot run 2>&1 | head`: once the reader is gone every log line fails with
    EPIPE. SIGTERM must still stop the robot at once, exit 0, and claim nothing more."""
    ini = write_ini(
        db_url,
        smtp_server.port,
        f"[robot]\nprocesses = {processes}\nconnections = 2\n[log]\nlevel = info\n",
    )
    robot = await PipedRobot(ini).start()
    children: list[int] = []
    try:
        await wait_until(
            lambda: len(robot.named("robot.started")) == processes,
            60,
            "robot.started",
            describe=robot.tail,
        )
        children = robot_pids(robot.events)
        insert_many(db_url, 3)
        await smtp_server.wait_for(3, timeout=30)
        await wait_until(
            lambda: len(robot.named("message.sent")) == 3, 30, "3 sent", describe=robot.tail
        )
        robot.hang_up()
        await asyncio.sleep(0.3)
        robot.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # the robot has stopped claiming by now
        late = insert_many(db_url, 5)
        code = await robot.wait(15)
        still = [pid for pid in children if runs(pid)]
        late_rows = host_sql(
            db_url,
            f"SELECT status, attempts FROM outbox WHERE id IN ({', '.join(map(str, late))})",
        )
    finally:
        await robot.close(children)
    assert code == 0, f"exit code {code} (None: still running 15 s after SIGTERM): {late_rows}"
    assert still == []
    assert sorted(late_rows) == [("pending", 0)] * 5, "rows claimed after the SIGTERM"
    assert len(smtp_server.received) == 3
    assert host_sql(db_url, "SELECT count(*) FROM outbox WHERE status = 'sending'") == [(0,)]


def test_a_start_up_error_with_nobody_reading_stderr_still_exits_2(tmp_path: Path) -> None:
    """The one-line error of the command line is lost, not raised, on a closed stderr: the
    exit code still says what happened."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run(
        [sys.executable, "-m", "robot", "-c", str(tmp_path / "missing.ini"), "run"],
        stderr=write_end,
        stdout=subprocess.DEVNULL,
        timeout=60,
        # As an ordinary shell has it: PYTHONUNBUFFERED would hide the failed flush at exit.
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    os.close(write_end)
    assert proc.returncode == 2


# -- a supervisor that died ------------------------------------------------------------


async def test_sending_processes_stop_when_their_supervisor_is_killed(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """kill -9 of the supervising process: both sending processes finish the message on
    their wire, record it, give back the rest of their claim and exit."""
    smtp_server.data_delay = 0.1
    insert_many(db_url, 200)
    ini = write_ini(
        db_url, smtp_server.port, "[robot]\nprocesses = 2\nconnections = 4\n[log]\nlevel = info\n"
    )
    robot = await RobotProcess(ini).start()
    children: list[int] = []
    try:
        await wait_until(
            lambda: len(robot.named("robot.started")) == 2, 60, "two robots", describe=robot.tail
        )
        children = robot_pids(robot.events)
        await smtp_server.wait_for(10, timeout=30)
        os.kill(robot.pid, signal.SIGKILL)
        await wait_until(
            lambda: not any(runs(pid) for pid in children),
            10,
            "both sending processes gone",
            interval=0.05,
            describe=lambda: f"{[p for p in children if runs(p)]} still run; {robot.tail(5)}",
        )
        await robot.wait(30)  # the last holder of stderr is gone: read to the end
    finally:
        for pid in children:
            kill_quietly(pid)
        await robot.close()
    counts = dict(host_sql(db_url, "SELECT status, count(*) FROM outbox GROUP BY status"))
    assert "sending" not in counts, counts
    assert counts["sent"] == len(smtp_server.received) < 200  # what went out is recorded
    assert counts["pending"] == 200 - counts["sent"]
    assert len(robot.named("robot.stopped")) == 2, robot.tail()


async def test_a_sending_process_looks_for_its_supervisor_itself(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """Where no signal comes (not Linux, or the request failed), the robot sees within a
    second or so that its parent is not its supervisor any more, and stops."""
    settings = load_settings(write_ini(db_url, smtp_server.port), environ={})
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    engine = make_engine(settings.database.url)
    try:
        robot = Robot(settings, engine, supervisor=os.getpid())  # not this process's parent
        code = await asyncio.wait_for(robot.run(), 10)
    finally:
        engine.dispose()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert code == 0
    assert [e["event"] for e in events if e["event"].startswith(("supervisor", "robot.st"))] == [
        "robot.started",
        "supervisor.gone",
        "robot.stopping",
        "robot.stopped",
    ]


# -- a database that is not there yet --------------------------------------------------


async def test_run_waits_for_a_database_that_is_down_at_start(
    restartable_db: RestartableDatabase, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """PostgreSQL or MariaDB is down when the robot starts (a reboot, a failover): the robot
    says so at each try and starts once the database answers, as it rides out an outage
    later on."""
    pg_url = restartable_db.url
    ini = write_ini(pg_url, smtp_server.port, "[log]\nlevel = info\n")
    robot = RobotProcess(ini)
    await asyncio.to_thread(restartable_db.down)
    try:
        await robot.start()
        await wait_until(
            lambda: len(robot.named("database.unavailable")) >= 2 or not robot.alive,
            30,
            "two tries",
            describe=robot.tail,
        )
        assert robot.alive, robot.tail()
    finally:
        await asyncio.to_thread(restartable_db.up)
    try:
        await robot.wait_for_event("robot.started", 30)
        host_sql(pg_url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@example.org', 'x')")
        await smtp_server.wait_for(1, timeout=30)
        code = await robot.terminate()
    finally:
        await robot.close()
    assert code == 0, robot.tail()
    tries = robot.named("database.unavailable")
    assert all(e["doing"] == "start" and e["level"] == "error" for e in tries), tries
    assert [e["retry_in"] for e in tries[:3]] == [0.5, 1.0, 2.0][: len(tries[:3])]
    assert robot.named("database.available"), robot.tail()
    assert host_sql(pg_url, "SELECT status FROM outbox") == [("sent",)]


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigterm_while_waiting_for_the_database_exits_0_at_once(
    processes: int, restartable_db: RestartableDatabase, write_ini: WriteIni
) -> None:
    pg_url = restartable_db.url
    ini = write_ini(pg_url, 25, f"[robot]\nprocesses = {processes}\n[log]\nlevel = info\n")
    robot = RobotProcess(ini)
    await asyncio.to_thread(restartable_db.down)
    try:
        await robot.start()
        await robot.wait_for_event("database.unavailable", 30)
        code = await robot.terminate(timeout=5)
    finally:
        await robot.close()
        await asyncio.to_thread(restartable_db.up)
    assert code == 0, robot.tail()
    assert robot.named("robot.stopped"), robot.tail()


def test_run_refuses_a_database_that_does_not_exist(
    restartable_db: RestartableDatabase, write_ini: WriteIni
) -> None:
    """A database that answers "no such database" will not change its mind: exit 2."""
    url = make_url(restartable_db.url).set(database="no_such_db")
    ini = write_ini(url.render_as_string(hide_password=False), 25)
    result = subprocess.run(
        [sys.executable, "-m", "robot", "-c", str(ini), "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "[database] url: " in line
    assert (
        'database "no_such_db" does not exist' in line or "Unknown database 'no_such_db'" in line
    ), line
