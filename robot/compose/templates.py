"""A row's subject and bodies as sandboxed Jinja2 templates, rendered with a cap on the output.

Pure: no I/O. The cap bounds what a template can make; the time it takes is bounded by the
process that runs `render` (robot.daemon.rendering), which is killed at a deadline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from robot.errors import BadRowError

MIB = 1024 * 1024


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
    plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
    try:
        subject = output.render(plain, templates.subject, context)
        body_text = output.render(plain, templates.body_text, context)
        body_html = output.render(html, templates.body_html, context)
    except TemplateError as exc:
        raise BadRowError(f"template error: {exc}") from None
    return Rendered(subject or "", body_text, body_html)


class _CappedOutput:
    """Counts the UTF-8 bytes rendered so far, over all the templates of a row."""

    def __init__(self, limit: int, max_body_mb: float) -> None:
        self.limit = limit
        self.max_body_mb = max_body_mb
        self.size = 0

    def render(
        self, environment: SandboxedEnvironment, source: str | None, context: dict[str, Any]
    ) -> str | None:
        """`source` rendered, or None for no source. Raises BadRowError past the cap."""
        if not source:
            return None
        chunks: list[str] = []
        for chunk in environment.from_string(source).generate(context):
            ascii_only = chunk.isascii()  # the common case: its length is its size
            self.size += len(chunk) if ascii_only else len(chunk.encode("utf-8", "surrogatepass"))
            if self.size > self.limit:
                raise BadRowError(
                    f"template rendered more than {self.max_body_mb:g} MiB ([robot] max_body_mb)"
                )
            chunks.append(chunk)
        return "".join(chunks)
