"""Rows with templates (a context) through a whole robot: a template that runs long or makes
too much fails its row at the first attempt and delays no other row nor a stop; the limit on
the bodies applies to what the templates made."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from robot.outbox.engine import make_engine, upgrade
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.support.robot_proc import RobotProcess, wait_until
from tests.support.smtpd import TestSMTPServer

# Ten billion turns: without output (only a kill ends it), and with one byte each (issue 12).
SILENT_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
LOUD_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


def insert(
    url: str, recipient: str, body_text: str, context: str | None = None, subject: str = "Hello"
) -> int:
    host_sql(
        url,
        "INSERT INTO outbox (recipient, subject, body_text, context) VALUES (?, ?, ?, ?)",
        [recipient, subject, body_text, context],
    )
    return int(host_sql(url, "SELECT max(id) FROM outbox")[0][0])


def row_state(url: str, row_id: int) -> tuple[str, int, str | None]:
    status, attempts, last_error = host_sql(
        url, "SELECT status, attempts, last_error FROM outbox WHERE id = ?", [row_id]
    )[0]
    return status, attempts, last_error


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def cpu_seconds(pid: int) -> float:
    """The CPU time `pid` has used so far (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left for a PID 1 that does not reap does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_an_endless_template_fails_at_once_and_delays_no_other_row(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """Issue 12: the render ran on the event loop, so no other row went out, the lease ran
    out and the next attempt stalled again."""
    silent = insert(db_url, "silent@example.org", SILENT_LOOP, "{}")
    loud = insert(db_url, "loud@example.org", LOUD_LOOP, "{}")
    context = json.dumps({"name": "Ann"})
    good = [insert(db_url, f"plain{n}@example.org", "plain") for n in range(4)]
    good += [
        insert(db_url, f"tpl{n}@example.org", "Dear {{ name }}", context, "Hello {{ name }}")
        for n in range(4)
    ]
    ini = write_ini(db_url, smtp_server.port, "[robot]\ntemplate_seconds = 3\nmax_body_mb = 1\n")

    code, events = await drain(ini, timeout=60)

    assert code == 0
    assert row_state(db_url, silent) == ("failed", 1, "template took longer than 3 s to render")
    assert row_state(db_url, loud) == (
        "failed",
        1,
        "template rendered more than 1 MiB ([robot] max_body_mb)",
    )
    for row_id in good:
        assert row_state(db_url, row_id) == ("sent", 1, None)
    # Every good row went out while the endless template was still being rendered.
    outcomes = [(e["event"], int(e["id"])) for e in events if e["event"].startswith("message.")]
    assert outcomes[-1] == ("message.failed", silent)
    assert sorted(row_id for event, row_id in outcomes if event == "message.sent") == good
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(
        [f"plain{n}@example.org" for n in range(4)] + [f"tpl{n}@example.org" for n in range(4)]
    )
    templated = next(r for r in smtp_server.received if r.rcpt_tos[0] == "tpl0@example.org")
    assert b"Subject: Hello Ann" in templated.data
    assert b"Dear Ann" in templated.data


async def test_a_template_that_renders_over_max_body_mb_is_not_sent(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """A 20 MB body from a 50-byte template went out under max_body_mb = 10."""
    big = insert(
        db_url,
        "big@example.org",
        "{% for i in range(20000) %}{{ line }}{% endfor %}",
        json.dumps({"line": "x" * 1000, "name": "Ann"}),
    )
    small = insert(db_url, "small@example.org", "x")
    code, _ = await drain(write_ini(db_url, smtp_server.port, "[robot]\nmax_body_mb = 10\n"))
    assert code == 0
    assert row_state(db_url, big) == (
        "failed",
        1,
        "template rendered more than 10 MiB ([robot] max_body_mb)",
    )
    assert row_state(db_url, small) == ("sent", 1, None)
    assert [r.rcpt_tos for r in smtp_server.received] == [["small@example.org"]]


async def test_sigterm_during_an_endless_render_stops_the_robot(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """The render is killed, the row goes back untried, the robot exits 0."""
    row_id = insert(db_url, "silent@example.org", SILENT_LOOP, "{}")
    ini = write_ini(db_url, smtp_server.port, "[robot]\ntemplate_seconds = 300\n")
    robot = await RobotProcess(ini, "run").start()
    try:
        await wait_until(lambda: row_state(db_url, row_id)[0] == "sending", 30, "the claim")
        await asyncio.sleep(1)  # well into the render
        renderers = children_of(robot.pid)
        code = await robot.terminate(timeout=15)
    finally:
        await robot.close()
    assert code == 0, robot.tail()
    assert robot.named("robot.stopped")
    assert renderers  # it was rendering in a process of its own...
    assert not [pid for pid in renderers if alive(pid)]  # ...which is gone
    assert row_state(db_url, row_id) == ("pending", 0, None)
    history = host_sql(
        db_url, "SELECT kind, detail FROM outbox_event WHERE outbox_id = ? ORDER BY id", [row_id]
    )
    assert history[-1] == ("unclaimed", "robot stopping")
    assert not smtp_server.received


async def test_a_killed_robot_leaves_no_render_running(
    tmp_path: Path, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """SIGKILL (a crash, the OOM killer): the render process dies with its robot."""
    url = f"sqlite:///{tmp_path}/killed.db"
    ini = write_ini(url, smtp_server.port, "[robot]\ntemplate_seconds = 300\n")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    insert(url, "silent@example.org", SILENT_LOOP, "{}")
    robot = await RobotProcess(ini, "run").start()
    try:
        await wait_until(lambda: bool(children_of(robot.pid)), 30, "a render process")
        renderers = children_of(robot.pid)
        await robot.kill()
    finally:
        await robot.close()
    await wait_until(
        lambda: not [pid for pid in renderers if alive(pid)], 10, "the render process to end"
    )


async def test_a_render_process_killed_from_outside_defers_the_row(
    tmp_path: Path, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """Not the row's fault for certain (the OOM killer, an operator): tried again later."""
    url = f"sqlite:///{tmp_path}/outside.db"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    row_id = insert(url, "silent@example.org", SILENT_LOOP, "{}")
    ini = write_ini(url, smtp_server.port, "[robot]\ntemplate_seconds = 300\n")
    robot = await RobotProcess(ini, "run").start()
    try:
        await wait_until(lambda: bool(children_of(robot.pid)), 30, "a render process")
        (pid,) = children_of(robot.pid)
        await wait_until(lambda: cpu_seconds(pid) > 1, 30, "the render under way")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: row_state(url, row_id)[0] == "deferred", 30, "the deferral")
        event = await robot.wait_for_event("template.process_failed")
        assert await robot.terminate(timeout=15) == 0
    finally:
        await robot.close()
    assert row_state(url, row_id) == (
        "deferred",
        1,
        "the template rendering process ended while rendering (exit code -9)",
    )
    assert event["reason"] == row_state(url, row_id)[2]
