"""robot.logs on real pipes: lines of several processes never interleave, and a stream whose
reader went away never raises into the code that logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from robot.logs import configure_logging, get_logger

WRITER = """
import sys
from robot.logs import configure_logging, get_logger
configure_logging("json", "info")
log = get_logger("test")
for n in range(3000):
    log.info("line", n=n, who=sys.argv[1], padding="x" * 200)
"""


def test_two_processes_on_one_pipe_write_whole_lines() -> None:
    """Each line is one write: two processes sharing a pipe (as the sending processes of a
    supervisor share its stderr) produce only whole JSON lines."""
    read_end, write_end = os.pipe()
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, who], stderr=write_end)
        for who in ("a", "b")
    ]
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        lines = pipe.read().splitlines()
    assert [p.wait(30) for p in procs] == [0, 0]
    events = [json.loads(line) for line in lines]  # a glued '}{' line would not parse
    assert sorted((e["who"], e["n"]) for e in events) == sorted(
        (who, n) for who in ("a", "b") for n in range(3000)
    )


def test_a_closed_log_pipe_loses_lines_and_raises_nothing() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away: every write is EPIPE
    with os.fdopen(write_end, "w") as stream:
        configure_logging("json", "info", stream=stream)
        try:
            log = get_logger("test")
            for _ in range(3):
                log.info("nobody.reads", n=1)
                log.error("still.nobody")
        finally:
            configure_logging("json", "info")


# As an ordinary shell has it: PYTHONUNBUFFERED (set in many containers) would hide a stream
# whose buffer cannot be flushed at exit.
BUFFERED_ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}

LIBRARY_LOGGER = """
import logging, sys, warnings
from robot.logs import configure_logging, get_logger
configure_logging("json", "info")
get_logger("test").info("ours")
logging.getLogger("aiosmtplib").warning("a library's warning")
logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
warnings.warn("a library's deprecation")
get_logger("test").error("ours again")
print("survived")
"""


def test_a_closed_log_pipe_stops_neither_library_logging_nor_warnings() -> None:
    """Libraries log through stdlib logging (configured on the same stream) and `warnings`:
    neither raises into the code that logs when nobody reads the stream, and the process
    exits 0 (a failed flush of stderr at exit must not change its exit code)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run(
        [sys.executable, "-c", LIBRARY_LOGGER],
        stderr=write_end,
        stdout=subprocess.PIPE,
        text=True,
        timeout=60,
        env=BUFFERED_ENVIRONMENT,
    )
    os.close(write_end)
    assert (proc.returncode, proc.stdout) == (0, "survived\n")
