"""A row's subject and bodies as sandboxed Jinja2 templates, rendered with a cap on the output.

Pure: no I/O. The cap bounds what a template can make; the time it takes is bounded by the
process that runs `render` (robot.daemon.rendering), which is killed at a deadline.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from robot.errors import BadRowError

MIB = 1024 * 1024
CACHED_TEMPLATES = 64  # compiled templates kept for the next rows (a mailing shares them)
CACHED_SOURCE_CHARS = 64 * 1024  # longer templates are compiled for each row, not kept


@dataclass(frozen=True)
class Templates:
    """What a row with a context asks to render: its texts and the context (a JSON object)."""

    subject: str
    body_text: str | None
    body_html: str | None
    context: str


@dataclass(frozen=True)
class Rendered:
    """The subject and bodies that go into the message."""

    subject: str
    body_text: str | None
    body_html: str | None


def render(templates: Templates, max_body_mb: float) -> Rendered:
    """Render the subject and both bodies with the context. Raises BadRowError for a bad
    context, a template error, or an output of subject and bodies together over
    `max_body_mb` (the rendering stops there: what a template makes never passes the cap)."""
    try:
        context = json.loads(templates.context)
    except ValueError as exc:
        raise BadRowError(f"context is not valid JSON: {exc}") from None
    if not isinstance(context, dict):
        raise BadRowError("context must be a JSON object")
    output = _CappedOutput(int(max_body_mb * MIB), max_body_mb)
    try:
        subject = output.render(templates.subject, context, html=False)
        body_text = output.render(templates.body_text, context, html=False)
        body_html = output.render(templates.body_html, context, html=True)
    except TemplateError as exc:
        raise BadRowError(f"template error: {exc}") from None
    return Rendered(subject or "", body_text, body_html)


class _CappedOutput:
    """Counts the UTF-8 bytes rendered so far, over all the templates of a row."""

    def __init__(self, limit: int, max_body_mb: float) -> None:
        self.limit = limit
        self.max_body_mb = max_body_mb
        self.size = 0

    def render(self, source: str | None, context: dict[str, Any], *, html: bool) -> str | None:
        """`source` rendered (HTML-escaped when `html`), or None for no source. Raises
        BadRowError past the cap, and Jinja2's TemplateError."""
        if not source:
            return None
        chunks: list[str] = []
        for chunk in _template(source, html).generate(context):
            ascii_only = chunk.isascii()  # the common case: its length is its size
            self.size += len(chunk) if ascii_only else len(chunk.encode("utf-8", "surrogatepass"))
            if self.size > self.limit:
                raise BadRowError(
                    f"template rendered more than {self.max_body_mb:g} MiB ([robot] max_body_mb)"
                )
            chunks.append(chunk)
        return "".join(chunks)


def _template(source: str, html: bool) -> Template:
    """`source` compiled; a short one is compiled once for the rows of a mailing that share
    it (compiling takes some 40 times as long as rendering)."""
    if len(source) > CACHED_SOURCE_CHARS:
        return _ENVIRONMENTS[html].from_string(source)
    return _cached_template(source, html)


@functools.lru_cache(maxsize=CACHED_TEMPLATES)
def _cached_template(source: str, html: bool) -> Template:
    return _ENVIRONMENTS[html].from_string(source)


_ENVIRONMENTS = {  # by html: autoescape in HTML bodies only
    False: SandboxedEnvironment(undefined=StrictUndefined, autoescape=False),
    True: SandboxedEnvironment(undefined=StrictUndefined, autoescape=True),
}
