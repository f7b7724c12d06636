"""Where the robot's time goes: one drain sampled by py-spy, summarised.

py-spy (`record --format raw`, 100 Hz, every thread, idle samples left out) writes collapsed
stacks, one line per distinct stack: `thread (TID): NAME;frame;frame;... COUNT`. From them:
each thread's share of the samples, the functions that were on top of the stack (self time),
the functions anywhere on the stack (inclusive time), and the leaf samples per library.
The raw file loads as it is into speedscope or flamegraph.pl.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*):?(?P<line>\d*)\)$")
AREAS = (  # first match on the leaf frame's file wins
    ("robot", "robot (our code)"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("psycopg", "psycopg"),
    ("sqlite3/", "sqlite3"),
    ("aiosmtplib/", "aiosmtplib"),
    ("email/", "stdlib email"),
    ("email_validator/", "email-validator"),
    ("structlog/", "structlog"),
    ("apscheduler/", "APScheduler"),
    ("asyncio/", "asyncio"),
    ("concurrent/", "thread pool"),
    ("threading.py", "thread pool"),
    ("jinja2/", "jinja2"),
    ("selectors.py", "event loop wait (epoll)"),
    ("importlib", "start-up (imports)"),
)


def py_spy() -> str | None:
    """The py-spy binary of the venv, or on PATH."""
    here = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
    return str(here) if here.is_file() else shutil.which("py-spy")


def prefix(binary: str, output: Path, rate: int = 100, *, gil: bool = False) -> list[str]:
    """The command-line prefix that records the robot; with `gil`, only the thread that
    holds the GIL, at 250 Hz (what bounds a robot whose one interpreter is the limit)."""
    options = ["--nonblocking", "--threads", "--format", "raw", "-r", str(250 if gil else rate)]
    if gil:
        options.append("--gil")
    return [binary, "record", *options, "-o", str(output), "--"]


def _parse(line: str) -> tuple[str, list[str], int] | None:
    stack, _, count = line.rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = stack.split(";")
    thread = re.sub(r"^thread \(\d+\):? ?", "", frames[0]) or "unnamed thread"
    thread = re.sub(r"_\d+$", "", thread)  # robot-db_0, robot-db_1 -> robot-db
    return thread, frames[1:], int(count)


def _name(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame)
    if not match:
        return frame, ""
    return f"{match['func']} ({match['file']})", match["file"]


def _area(file: str) -> str:
    for needle, area in AREAS:
        if needle in file:
            return area
    return "other"


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Shares (percent of all samples) by thread, self function, inclusive function, area."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        thread, frames, count = parsed
        total += count
        threads[thread] += count
        if not frames:
            continue
        leaf, leaf_file = _name(frames[-1])
        own[leaf] += count
        areas[_area(leaf_file)] += count
        for name in {_name(f)[0] for f in frames}:
            inclusive[name] += count

    def shares(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": c, "percent": round(100 * c / total, 1)}
            for name, c in counter.most_common(n)
        ]

    return {
        "samples": total,
        "threads": {t: round(100 * c / total, 1) for t, c in threads.most_common()},
        "areas": {a: round(100 * c / total, 1) for a, c in areas.most_common()},
        "self": shares(own, top),
        "inclusive": shares(inclusive, top * 2),
        "robot_inclusive": shares(
            Counter({k: v for k, v in inclusive.items() if "(robot/" in k}), top
        ),
    }
