"""The robot run as a real process (`python -m robot ...`), its stderr read as it comes.

The JSON log lines (`[log] format = json`) are parsed into `events`; every line, JSON or not
(a traceback, a library's stdlib log line), is kept in `lines`. Reading concurrently keeps
the pipe from filling up and stalling the robot.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["RobotProcess", "wait_until"]

PRELUDE_MAIN = "import sys\nfrom robot.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"


class RobotProcess:
    """One `python -m robot -c INI <args>` process.

    `prelude`: Python run in the child before the command line (for example to shorten a
    module constant); the command line then runs as `python -c`.
    """

    def __init__(
        self,
        ini: Path,
        *args: str,
        prelude: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.ini = ini
        self.args = args or ("run",)
        self.prelude = prelude
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> RobotProcess:
        if self.prelude:
            command = ["-c", self.prelude + PRELUDE_MAIN]
        else:
            command = ["-m", "robot"]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *command,
            "-c",
            str(self.ini),
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            limit=4 * 1024 * 1024,
        )
        self._reader = asyncio.create_task(self._read(), name=f"robot-{self.proc.pid}-stderr")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        try:
            async for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                if line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except ValueError:
                        pass
                self._changed.set()
        finally:
            self._changed.set()

    async def wait(self, timeout: float) -> int:
        """Wait for the process to exit (and its stderr to be read to the end)."""
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout)
        return code

    async def kill(self) -> int:
        """SIGKILL: no clean-up at all, as in a crash or the OOM killer."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        return await self.wait(30)

    async def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def close(self) -> None:
        """Make sure the process is gone (for `finally:` blocks); never raises."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            await self.wait(30)
        except (TimeoutError, asyncio.CancelledError):
            pass

    # -- the log ---------------------------------------------------------------------------

    def named(self, name: str) -> list[dict[str, Any]]:
        """The JSON events called `name`, oldest first."""
        return [e for e in self.events if e.get("event") == name]

    def tail(self, lines: int = 30) -> str:
        """The last lines of stderr, for assertion messages."""
        return "\n".join(self.lines[-lines:])

    async def wait_for_event(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """The first event called `name`; fails if the process exits before it appears."""
        seen = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    for event in self.events[seen:]:
                        if event.get("event") == name:
                            return event
                    seen = len(self.events)
                    if self._reader is not None and self._reader.done():
                        raise AssertionError(
                            f"the robot exited ({self.returncode}) before logging {name!r}:\n"
                            + self.tail()
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"the robot did not log {name!r} within {timeout}s:\n{self.tail()}"
            ) from None


async def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` (a quick synchronous check) until it holds; fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        await asyncio.sleep(interval)
