"""`run` with `[robot] processes = N`: N sending processes under one supervisor.

Python runs one thread of Python code at a time; a second process sends on the second core.
Each child is a whole robot (claims, leases, timed jobs) with its share of `connections`,
`batch_size` and `rate`, like several robots on one outbox, which the queue is built for.
The supervisor is what systemd sees: it forwards SIGTERM, SIGINT and SIGHUP, sends READY=1,
STOPPING=1 and the watchdog pings, and exits when the children have. A child whose supervisor
died (kill -9) stops as on SIGTERM: Linux sends it one, and each robot also looks every second.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from robot.config import Settings
from robot.daemon.systemd import notify, watchdog_interval

CHILD_VARIABLE = "ROBOT_CHILD"  # "index/count", set in each child's environment
SUPERVISOR_VARIABLE = "ROBOT_SUPERVISOR"  # the supervisor's process id, in each child's
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent ends


def share(total: int, index: int, count: int) -> int:
    """Child `index`'s part of `total` when split `count` ways (the first get the rest)."""
    return total // count + (1 if index < total % count else 0)


def child_settings(settings: Settings, index: int, count: int) -> Settings:
    """The settings of child `index` of `count`: its share of connections, batch and rate;
    only the first serves the metrics."""
    robot = settings.robot
    rate = robot.rate / count if robot.rate else 0.0
    accounts = {
        name: dataclasses.replace(
            account,
            smtp=dataclasses.replace(account.smtp, rate=account.smtp.rate / count),
        )
        for name, account in settings.accounts.items()
    }
    return dataclasses.replace(
        settings,
        robot=dataclasses.replace(
            robot,
            name=f"{settings.robot_name}-{index}",
            processes=1,
            connections=max(1, share(robot.connections, index, count)),
            batch_size=max(1, share(robot.batch_size, index, count)),
            rate=rate,
        ),
        accounts=accounts,
        metrics=settings.metrics
        if index == 0
        else dataclasses.replace(settings.metrics, listen=None),
    )


def child_position() -> tuple[int, int] | None:
    """(index, count) when this process is a child of a supervisor."""
    value = os.environ.get(CHILD_VARIABLE)
    if not value:
        return None
    index, _, count = value.partition("/")
    return int(index), int(count)


def supervisor_pid() -> int | None:
    """The process id of this child's supervisor; None when this is no child."""
    value = os.environ.get(SUPERVISOR_VARIABLE)
    return int(value) if value else None


def stop_with_supervisor(supervisor: int) -> bool:
    """Ask Linux to send this process SIGTERM when its parent ends; False when the parent
    `supervisor` is already gone (it may have died before the request was made)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the robot's own look every second still notices
    return os.getppid() == supervisor


def supervise(settings: Settings, config_path: str, drain: bool) -> int:
    """Start `processes` children running `run`, wait for them; the exit code of `run`."""
    count = settings.robot.processes
    env = {key: value for key, value in os.environ.items() if key not in ("NOTIFY_SOCKET",)}
    env[SUPERVISOR_VARIABLE] = str(os.getpid())
    command = [sys.executable, "-m", "robot", "-c", config_path, "run"]
    if drain:
        command.append("--drain")
    children = [
        subprocess.Popen(command, env={**env, CHILD_VARIABLE: f"{index}/{count}"})
        for index in range(count)
    ]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not stopping:
                notify("STOPPING=1")
            stopping = True
            signum = signal.SIGTERM
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    notify("READY=1")
    ping = watchdog_interval()
    last_ping = time.monotonic()
    failed = False
    while any(child.poll() is None for child in children):
        time.sleep(0.2)
        if ping and time.monotonic() - last_ping >= ping:
            notify("WATCHDOG=1")
            last_ping = time.monotonic()
        if not stopping and not drain and any(c.returncode not in (None, 0) for c in children):
            failed = True  # one crashed: stop the rest, let systemd restart the service
            forward(signal.SIGTERM, None)
    codes = [child.returncode for child in children]
    if failed:  # the highest exit code; killed by a signal (negative) counts as 1
        return max(1, *codes)
    if any(code not in (0, 1) for code in codes):
        return 1
    return max(codes)
