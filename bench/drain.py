"""Time `email-robot -c INI run --drain` as a subprocess.

Two clocks: the wall time of the process, from its start to its exit (interpreter start-up,
schema check and the final QUITs included), and the robot's own sending window, from the
first to the last `sent_at` in the database (the database clock). Peak RSS is the child's
ru_maxrss from wait4(2): its VmHWM, the high-water mark of its resident memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import outbox

ROOT = Path(__file__).resolve().parent.parent
# The project's venv; a git worktree without one uses the venv of the running interpreter.
BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv").exists() else Path(sys.executable).parent
EMAIL_ROBOT = BIN / "email-robot"
PYTHON = BIN / "python"
KILL_AFTER = 60.0  # seconds between SIGTERM and SIGKILL


@dataclass(frozen=True)
class RobotConfig:
    """The robot.ini of a benchmark run (throughput settings unless told otherwise)."""

    url: str
    port: int
    connections: int
    name: str = "bench"
    batch_size: int = 500
    poll_seconds: float = 1.0
    grace_minutes: float = 0.0
    max_per_connection: int = 100
    accounts: str = ""  # [account:NAME] sections, as robot.ini text
    processes: int = 1  # [robot] processes: sending processes under one supervisor

    def text(self) -> str:
        """robot.ini."""
        return (
            f"[database]\nurl = {self.url}\n\n"
            f"[robot]\nname = {self.name}\ngrace_minutes = {self.grace_minutes}\n"
            f"poll_seconds = {self.poll_seconds}\nbatch_size = {self.batch_size}\n"
            f"connections = {self.connections}\nrate = 0\nprocesses = {self.processes}\n\n"
            f"[smtp]\nhost = 127.0.0.1\nport = {self.port}\nsecurity = none\n"
            f"helo_name = bench.example.org\nmax_per_connection = {self.max_per_connection}\n\n"
            "[sender]\naddress = news@example.org\nname = Example Shop\n\n"
            "[log]\nformat = json\nlevel = warning\n"
            + (f"\n{self.accounts}" if self.accounts else "")
        )

    def write(self, path: Path) -> Path:
        """Write robot.ini to `path`; return it."""
        path.write_text(self.text())
        return path


SOURCE: Path | None = None  # a robot/ + migrations/ tree to run instead of the working tree


def use_source(tree: Path | None) -> None:
    """Run the robot of `tree` (it goes first on PYTHONPATH), or the working tree's (None)."""
    global SOURCE
    SOURCE = tree


def robot_env() -> dict[str, str]:
    """The environment without ROBOT_* overrides (robot.ini alone decides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOT_")}
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONPATH", None)
    if SOURCE is not None:
        env["PYTHONPATH"] = str(SOURCE)
    return env


def bench_env() -> dict[str, str]:
    """The environment of a bench module run in a fresh interpreter (`python -m bench.X`,
    from outside the working tree): the robot of SOURCE when set, then the working tree's
    bench/ (and robot/ when there is no SOURCE)."""
    env = robot_env()
    env["PYTHONPATH"] = os.pathsep.join([*([str(SOURCE)] if SOURCE else []), str(ROOT)])
    return env


def run_module(module: str, args: list[str], cwd: Path) -> dict[str, Any]:
    """`python -m bench.MODULE ARGS` with bench_env(), from `cwd` (not the working tree, so
    that SOURCE's robot comes first); the JSON object it prints."""
    proc = subprocess.run(
        [str(PYTHON), "-m", module, *args],
        capture_output=True,
        text=True,
        env=bench_env(),
        cwd=cwd,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def db_upgrade(ini: Path) -> None:
    """`email-robot -c INI db upgrade`: the schema, created as an operator would."""
    proc = subprocess.run(
        [str(EMAIL_ROBOT), "-c", str(ini), "db", "upgrade"],
        capture_output=True,
        text=True,
        env=robot_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"db upgrade failed: {proc.stderr.strip() or proc.stdout.strip()}")


class RobotProcess:
    """`email-robot -c INI run [--drain]` started now; `wait` reaps it with its rusage."""

    def __init__(
        self, ini: Path, log: Path, *, drain: bool = True, prefix: list[str] | None = None
    ) -> None:
        cmd = [*(prefix or []), str(EMAIL_ROBOT), "-c", str(ini), "run"]
        if drain:
            cmd.append("--drain")
        self.command = cmd
        self.log = log
        self._log_file = log.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=robot_env()
        )
        self.ended = 0.0
        self.terminated = False  # True once we sent SIGTERM
        self.returncode: int | None = None
        self.peak_rss_mb = 0.0

    def terminate(self) -> None:
        """SIGTERM: the robot stops claiming and exits 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def wait(self, timeout: float | None = None) -> int:
        """Reap the process: SIGTERM `timeout` seconds after its start (at once if that is
        past), SIGKILL KILL_AFTER seconds later."""
        deadline = None if timeout is None else self.started + timeout
        kill_at = None
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter()
            if deadline is not None and now >= deadline:
                self.terminate()
                deadline, kill_at = None, now + KILL_AFTER
            if kill_at is not None and now >= kill_at:
                self.proc.kill()  # it did not stop on SIGTERM: recorded by its exit code
                kill_at = None
            time.sleep(0.02)
        self.ended = time.perf_counter()
        self.proc.returncode = self.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_mb = round(usage.ru_maxrss / 1024, 1)  # ru_maxrss is in KiB on Linux
        self._log_file.close()
        return self.returncode

    @property
    def wall_seconds(self) -> float:
        """From start to exit."""
        return round(self.ended - self.started, 3)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the robot logged."""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def drain(
    config: RobotConfig,
    work: Path,
    rows: int,
    *,
    tag: str,
    time_limit: float | None = None,
    prefix: list[str] | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Drain an outbox of `rows` due rows with one robot; the measurements as a dict.

    A robot that exits with rows unsent raises RuntimeError, unless not `strict`: then the
    result says so (`exited_early`, `statuses`, the robot's last log lines)."""
    ini = config.write(work / f"{tag}.ini")
    robot = RobotProcess(ini, work / f"{tag}.log", prefix=prefix)
    code = robot.wait(time_limit)
    found = outbox.summary(config.url)
    stopped = robot.terminated and found["sent"] < rows
    early = not robot.terminated and found["sent"] < rows  # exited with rows still unsent
    if code != 0 or found["sent"] > rows or (early and strict):
        raise RuntimeError(
            f"drain {tag}: exit {code}, {found['sent']} of {rows} rows sent, "
            f"statuses {found['statuses']}\n{robot.log_tail()}"
        )
    window = found["window_seconds"]
    sent = found["sent"]
    return {
        "connections": config.connections,
        "rows": rows,
        "sent": sent,
        "stopped_at_time_limit": stopped,
        "exited_early": early,
        "statuses": found["statuses"],
        "log_tail": robot.log_tail(5) if early else "",
        "wall_seconds": robot.wall_seconds,
        "window_seconds": window,
        "msgs_per_s": round((sent - 1) / window, 1) if window > 0 else 0.0,
        "msgs_per_s_wall": round(sent / robot.wall_seconds, 1),
        "peak_rss_mb": None if prefix else robot.peak_rss_mb,  # a wrapper's RSS is not ours
        "exit_code": code,
        "command": " ".join(robot.command),
    }
