"""robot.daemon.rendering: templates rendered in real child processes, killed at a deadline."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from robot.compose.templates import Rendered, Templates
from robot.daemon.rendering import RenderProcessError, TemplateRenderers
from robot.errors import BadRowError

# Ten billion turns that make no output: only a kill ends it.
SILENT_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
GOOD = Templates("Hi {{ n }}", "Dear {{ n }}", "<p>{{ n }}</p>", '{"n": "<Ann>"}')


@pytest.fixture
async def renderers() -> AsyncIterator[TemplateRenderers]:
    pool = TemplateRenderers(2)
    try:
        yield pool
    finally:
        await pool.close()


async def render(
    pool: TemplateRenderers,
    templates: Templates,
    seconds: float = 10,
    stopping: asyncio.Event | None = None,
) -> Rendered | None:
    return await pool.render(
        templates, max_body_mb=10, seconds=seconds, stopping=stopping or asyncio.Event()
    )


def running(pid: int) -> bool:
    """Whether process `pid` exists (reaped: no; a zombie would still count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def busy_pid(pool: TemplateRenderers) -> int:
    """The pid of the process rendering, once there is one."""
    async with asyncio.timeout(30):
        while not pool.busy:
            await asyncio.sleep(0.02)
    return next(iter(pool.busy)).process.pid


async def test_a_template_past_its_deadline_is_killed_while_others_render(
    renderers: TemplateRenderers,
) -> None:
    slow = asyncio.create_task(render(renderers, Templates("s", SILENT_LOOP, None, "{}"), 3))
    pid = await busy_pid(renderers)
    for _ in range(5):  # the second process renders while the first one loops
        assert await render(renderers, GOOD) == Rendered(
            "Hi <Ann>", "Dear <Ann>", "<p>&lt;Ann&gt;</p>"
        )
    assert not slow.done()
    with pytest.raises(BadRowError) as caught:
        await slow
    assert str(caught.value) == "template took longer than 3 s to render"
    assert not running(pid)
    assert [p.process.pid for p in renderers.idle] != [pid]
    assert await render(renderers, GOOD) is not None


async def test_stopping_kills_the_render(renderers: TemplateRenderers) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(
        render(renderers, Templates("s", SILENT_LOOP, None, "{}"), 60, stopping)
    )
    pid = await busy_pid(renderers)
    stopping.set()
    assert await asyncio.wait_for(task, 10) is None
    assert not running(pid)
    assert not renderers.busy


async def test_errors_in_the_process_fail_the_row_and_keep_the_process(
    renderers: TemplateRenderers,
) -> None:
    cases = {
        "{{ 'x' * 4000000000 }}": "template needs more than 1184 MiB of memory to render",
        "{{ 1 / 0 }}": "template error: ZeroDivisionError: division by zero",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}": "template error: RecursionError: "
        "maximum recursion depth exceeded",
        "{{ nmae }}": "template error: 'nmae' is undefined",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}": (
            "template rendered more than 10 MiB ([robot] max_body_mb)"
        ),
    }
    for source, reason in cases.items():
        with pytest.raises(BadRowError) as caught:
            await render(renderers, Templates("s", source, None, "{}"))
        assert str(caught.value).startswith(reason)  # a recursion error may say more
    assert len(renderers.idle) == 1  # one process did it all, and is still there


async def test_odd_characters_cross_the_pipe(renderers: TemplateRenderers) -> None:
    """A lone surrogate from a JSON context, and characters beyond the BMP."""
    context = '{"x": "\\ud83d\\ude00 \\ud800"}'
    rendered = await render(renderers, Templates("s ü", "é {{ x }}", None, context))
    assert rendered == Rendered("s ü", "é \U0001f600 \ud800", None)


async def test_a_process_killed_while_rendering_is_not_the_rows_fault(
    renderers: TemplateRenderers,
) -> None:
    task = asyncio.create_task(render(renderers, Templates("s", SILENT_LOOP, None, "{}"), 60))
    os.kill(await busy_pid(renderers), signal.SIGKILL)
    with pytest.raises(RenderProcessError, match="ended while rendering"):
        await asyncio.wait_for(task, 10)
    assert await render(renderers, GOOD) is not None


async def test_the_signals_a_group_gets_are_left_to_the_robot(
    renderers: TemplateRenderers,
) -> None:
    """systemd's SIGTERM and a terminal's SIGINT reach the whole group: the robot decides."""
    assert await render(renderers, GOOD) is not None
    process = renderers.idle[0].process
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(process.pid, sig)
    await asyncio.sleep(0.3)
    assert process.returncode is None
    assert await render(renderers, GOOD) is not None
    assert renderers.idle[0].process is process


async def test_a_process_killed_while_idle_is_not_used_again(
    renderers: TemplateRenderers,
) -> None:
    assert await render(renderers, GOOD) is not None
    process = renderers.idle[0].process
    process.kill()
    await process.wait()
    assert await render(renderers, GOOD) is not None
    assert [p.process for p in renderers.idle] != [process]
