"""robot.compose.templates: a row's templates rendered with a cap on what they make, and
compose checking the rendered bodies against [robot] max_body_mb."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from robot.compose.message import compose
from robot.compose.templates import MIB, Rendered, Templates, render
from robot.config import Account
from robot.errors import BadRowError
from tests.unit.test_compose import NOW, make_account, make_row

# 20,000 x 1,000 characters: a 20 MB body from a template of a few dozen bytes
TWENTY_MB = "{% for i in range(20000) %}{{ line }}{% endfor %}"
LINE = json.dumps({"line": "x" * 1000})


@pytest.fixture
def account(tmp_path: Path) -> Account:
    return make_account(tmp_path, "[sender]\naddress = robot@example.org\n")


def test_a_template_that_renders_over_max_body_mb_fails_the_row(account: Account) -> None:
    """max_body_mb is what goes on the wire: it was checked on the template, not on what
    the template made, and a 20 MB body went out under a 10 MiB limit."""
    row = make_row(body_text=TWENTY_MB, context=LINE)
    with pytest.raises(BadRowError) as caught:
        compose(row, account, now=NOW, max_body_mb=10)
    assert str(caught.value) == "template rendered more than 10 MiB ([robot] max_body_mb)"


def test_the_cap_counts_the_subject_and_both_bodies(account: Account) -> None:
    """400 KB each: each alone is under 1 MiB, the three together are not."""
    big = "{% for i in range(400) %}{{ line }}{% endfor %}"
    row = make_row(subject="s", body_text=big, body_html=big, context=LINE)
    compose(row, account, now=NOW, max_body_mb=1)  # 800 KB: under the cap
    with pytest.raises(BadRowError, match=r"template rendered more than 1 MiB"):
        compose(make_row(subject=big, body_text=big, body_html=big, context=LINE), account,
                now=NOW, max_body_mb=1)  # fmt: skip


def test_rendering_stops_at_the_cap(account: Account) -> None:
    """A template that would make 50 MB: the render stops once past 1 MiB, so memory stays
    near the cap instead of holding all the output."""
    fifty_mb = "{% for i in range(50000) %}{{ line }}{% endfor %}"
    tracemalloc.start()
    try:
        with pytest.raises(BadRowError, match=r"template rendered more than 1 MiB"):
            compose(make_row(body_text=fifty_mb, context=LINE), account, now=NOW, max_body_mb=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"peak {peak / MIB:.1f} MiB while rendering under a 1 MiB cap"


def test_output_in_the_billions_fails_at_the_cap() -> None:
    """The loop of issue 12 (ten billion bytes) ends at the cap, not after the loop."""
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    with pytest.raises(BadRowError, match=r"template rendered more than 0.1 MiB"):
        render(Templates("s", loop, None, "{}"), max_body_mb=0.1)


def test_non_ascii_output_counts_its_utf8_bytes() -> None:
    """600,000 'ü' are 1.2 MB in UTF-8: over a 1 MiB cap, though only 600,000 characters."""
    source = "{% for i in range(600) %}{{ u }}{% endfor %}"
    context = json.dumps({"u": "ü" * 1000})
    with pytest.raises(BadRowError, match=r"template rendered more than 1 MiB"):
        render(Templates("s", source, None, context), max_body_mb=1)
    rendered = render(Templates("s", source, None, context), max_body_mb=2)
    assert rendered.body_text == "ü" * 600000


def test_render_gives_the_texts_for_the_message() -> None:
    rendered = render(
        Templates("Hi {{ n }}", "Dear {{ n }}", "<p>{{ n }}</p>", '{"n": "<Ann>"}'), 10
    )
    assert rendered == Rendered("Hi <Ann>", "Dear <Ann>", "<p>&lt;Ann&gt;</p>")
    assert render(Templates("", "x", None, "{}"), 10) == Rendered("", "x", None)


def test_bodies_rendered_elsewhere_are_checked_against_max_body_mb(account: Account) -> None:
    """compose takes the bodies the render process made and measures them again."""
    row = make_row(body_text="{{ x }}", context="{}")
    rendered = Rendered("s", "x" * (2 * MIB), None)
    with pytest.raises(BadRowError) as caught:
        compose(row, account, now=NOW, max_body_mb=1, rendered=rendered)
    assert str(caught.value) == (
        "body_text and body_html total 2.0 MiB, over the limit of 1 MiB ([robot] max_body_mb)"
    )
    small = compose(row, account, now=NOW, rendered=Rendered("s", "made elsewhere", None))
    assert b"made elsewhere" in small.data


def test_a_template_kept_compiled_serves_each_row_its_own_context() -> None:
    """The same source in the text and the HTML body: escaped in the HTML body only."""
    same = "{{ n }}"
    for name in ("<Ann>", "<Bob>"):
        rendered = render(Templates(same, same, same, json.dumps({"n": name})), 10)
        escaped = name.replace("<", "&lt;").replace(">", "&gt;")
        assert rendered == Rendered(name, name, escaped)
