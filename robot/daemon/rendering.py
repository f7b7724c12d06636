"""Rows' templates rendered in separate processes, so that a template that runs long cannot
stall the robot: each render has a deadline, and a process past it is killed.

Only rows with a context use them. The processes start when the first such row comes, one
per render under way up to `size`, and stay for the next; a killed one is replaced at the
next render. Parent and child speak length-prefixed JSON over the child's stdin and stdout;
the child runs `main` of this module, with the parent's sys.path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import struct
import sys
from typing import IO, Any

from robot.compose.templates import MIB, Rendered, Templates, render
from robot.errors import BadRowError, RobotError

FRAME = struct.Struct(">I")  # the length of the JSON that follows
READY = b'"ready"'  # the child's first frame, once it has imported Jinja2
START_SECONDS = 30.0  # a child not ready by then is given up
FEWEST_PROCESSES = 4  # a robot may start this many even on fewer cores (see for_workers)
MEMORY_BASE = 1024 * MIB  # a child's address space: this plus MEMORY_PER_BODY x the body cap
MEMORY_PER_BODY = 16
CHILD = (
    "import json, sys\n"
    "sys.path[:] = json.loads(sys.argv[1])\n"
    "from robot.daemon.rendering import main\n"
    "main()\n"
)
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


class RenderProcessError(RobotError):
    """A render process could not be started, or died while rendering (not the row's fault
    for certain: the row is tried again later)."""


class TemplateRenderers:
    """Up to `size` render processes of one robot, started when first needed."""

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.idle: list[RenderProcess] = []
        self.busy: set[RenderProcess] = set()

    @classmethod
    def for_workers(cls, workers: int) -> TemplateRenderers:
        """Render processes for `workers` connection workers: one per core, or at least
        FEWEST_PROCESSES (a template running to its deadline leaves others to render), and
        never more than the workers that ask for them."""
        return cls(min(workers, max(FEWEST_PROCESSES, os.cpu_count() or 1)))

    async def render(
        self, templates: Templates, *, max_body_mb: float, seconds: float, stopping: asyncio.Event
    ) -> Rendered | None:
        """`templates` rendered within `seconds`, or None when `stopping` is set first (the
        render is then killed). Raises BadRowError (the deadline, the output cap, a template
        error) and RenderProcessError."""
        work = asyncio.ensure_future(self._render(templates, max_body_mb, seconds))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()  # its process is killed
                await asyncio.wait((work,))
        if work.cancelled():
            return None
        return work.result()

    async def _render(self, templates: Templates, max_body_mb: float, seconds: float) -> Rendered:
        request = _encode({"templates": dataclasses.asdict(templates), "max_body_mb": max_body_mb})
        async with self.slots:
            process = self._idle_process() or await RenderProcess.start()
            self.busy.add(process)
            answered = False
            try:
                answer = await asyncio.wait_for(process.ask(request), seconds)
                answered = True
            except TimeoutError:
                raise BadRowError(f"template took longer than {seconds:g} s to render") from None
            finally:
                self.busy.discard(process)
                if answered:
                    self.idle.append(process)
                else:  # killed at the deadline or on a stop, or dead already
                    await process.kill()
        if "error" in answer:
            raise BadRowError(answer["error"])
        return Rendered(answer["subject"], answer["body_text"], answer["body_html"])

    def _idle_process(self) -> RenderProcess | None:
        """A process waiting for work, if any is left alive (one may have been killed)."""
        while self.idle:
            process = self.idle.pop()
            if process.process.returncode is None:
                return process
        return None

    async def close(self) -> None:
        """End every render process (the robot is stopping)."""
        processes = [*self.idle, *self.busy]
        self.idle.clear()
        self.busy.clear()
        for process in processes:
            await process.kill()


class RenderProcess:
    """One child that renders templates, one request at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls) -> RenderProcess:
        """A new child, ready to render. Raises RenderProcessError."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                json.dumps(sys.path),  # the child imports the very code of this robot
                str(os.getpid()),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise RenderProcessError(f"cannot start a template rendering process: {exc}") from None
        child = cls(process)
        ready = b""
        try:
            ready = await asyncio.wait_for(child._read(), START_SECONDS)
        except (TimeoutError, RenderProcessError):
            pass
        finally:  # not ready, or the render was called off while it started
            if ready != READY:
                await child.kill()
        if ready != READY:
            raise RenderProcessError(
                f"a template rendering process did not start (exit code {process.returncode})"
            )
        return child

    async def ask(self, request: bytes) -> dict[str, Any]:
        """Send `request`, return the answer. Raises RenderProcessError."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(FRAME.pack(len(request)) + request)
            await self.process.stdin.drain()
        except ConnectionError:
            await self.kill()  # reaped, for its exit code
            raise self._died() from None
        answer: dict[str, Any] = _decode(await self._read())
        return answer

    async def _read(self) -> bytes:
        assert self.process.stdout is not None
        try:
            (length,) = FRAME.unpack(await self.process.stdout.readexactly(FRAME.size))
            return await self.process.stdout.readexactly(length)
        except asyncio.IncompleteReadError:
            await self.kill()  # reaped, for its exit code
            raise self._died() from None

    def _died(self) -> RenderProcessError:
        return RenderProcessError(
            "the template rendering process ended while rendering"
            f" (exit code {self.process.returncode})"
        )

    async def kill(self) -> None:
        """SIGKILL the child (if it still runs) and reap it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        if self.process.stdin is not None:
            self.process.stdin.close()
        await self.process.wait()


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _decode(data: bytes) -> Any:
    return json.loads(data.decode("utf-8", "surrogatepass"))


# -- the child ---------------------------------------------------------------------------------


def serve(parent: int, source: IO[bytes], sink: IO[bytes]) -> None:
    """Answer render requests from `source` on `sink` until `source` ends."""
    _stay_with(parent)
    _write(sink, READY)
    while (request := _read(source)) is not None:
        _write(sink, _encode(_answer(_decode(request))))


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    max_body_mb = float(request["max_body_mb"])
    memory = _limit_memory(max_body_mb)
    try:
        rendered = render(Templates(**request["templates"]), max_body_mb)
    except BadRowError as exc:
        return {"error": str(exc)}
    except MemoryError:
        return {"error": f"template needs more than {memory // MIB} MiB of memory to render"}
    except Exception as exc:  # the template's own error (a division by zero, a recursion)
        return {"error": f"template error: {type(exc).__name__}: {exc}"}
    return dataclasses.asdict(rendered)


def _stay_with(parent: int) -> None:
    """Die with the parent (Linux), and leave the signals a terminal or systemd sends to the
    whole group to the parent: it kills this process when it stops."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl
        sys.exit(0)


def _limit_memory(max_body_mb: float) -> int:
    """Cap the address space, so that a template asking for gigabytes gets a MemoryError
    instead of the host's memory. Returns the cap in bytes."""
    limit = MEMORY_BASE + int(MEMORY_PER_BODY * max_body_mb * MIB)
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):  # not on this platform: the deadline still holds
        pass
    return limit


def _read(source: IO[bytes]) -> bytes | None:
    head = source.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (length,) = FRAME.unpack(head)
    return source.read(length)


def _write(sink: IO[bytes], data: bytes) -> None:
    sink.write(FRAME.pack(len(data)) + data)
    sink.flush()


def main() -> None:
    """The child's entry: `python -c CHILD SYS_PATH_JSON PARENT_PID`."""
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the answers: nothing else may write there
    serve(int(sys.argv[2]), sys.stdin.buffer, answers)
