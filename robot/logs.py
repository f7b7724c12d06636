"""structlog set up once: JSON lines for machines or coloured console lines for people."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    fmt: str = "console", level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog (and stdlib logging of the libraries we use) to `stream` (stderr)."""
    stream = stream or sys.stderr
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging: keep their warnings, drop their chatter.
    logging.basicConfig(stream=stream, level=logging.WARNING, format="%(name)s: %(message)s")
    for noisy in ("apscheduler", "mail.log", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose events carry `logger=name`."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(logger=name)
    return logger


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): a
    database error's SQL and parameters stay out of the log."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
