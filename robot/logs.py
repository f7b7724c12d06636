"""structlog set up once: JSON lines for machines or coloured console lines for people.

Logging never changes control flow: a log stream whose reader went away (a pipe to a killed
`tee`, a restarted log shipper) loses lines, never raises into the code that logs. Each line
is one write, so the lines of several processes sharing a pipe never interleave.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import sys
import threading
from typing import Any, TextIO

import structlog


class LineWriter:
    """A structlog logger that writes each rendered line with one write call (a write of up
    to PIPE_BUF bytes to a pipe is atomic) and drops it when the stream is gone."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a StringIO in tests
            self._fd = None

    def msg(self, message: str) -> None:
        """Write `message` and a newline; never raises."""
        line = message + "\n"
        try:
            with self._lock:
                if self._fd is None:
                    self._stream.write(line)
                    self._stream.flush()
                    return
                self._stream.flush()  # whatever went through the stream object first
                data = line.encode("utf-8", "backslashreplace")
                while data:
                    data = data[os.write(self._fd, data) :]
        except OSError as exc:  # broken pipe: this line and every later one are lost
            if exc.errno == errno.EPIPE:
                drop_what_a_closed_pipe_gets(self._stream)
        except ValueError:  # a closed stream object: the line is lost
            pass

    log = debug = info = warning = warn = error = err = critical = exception = fatal = msg

    def __call__(self, *args: Any) -> LineWriter:
        """structlog's logger factory: the same writer for every logger."""
        return self


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
            _leave_out_empty_fields,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=LineWriter(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging: keep their warnings, drop their chatter.
    logging.basicConfig(stream=stream, level=logging.WARNING, format="%(name)s: %(message)s")
    # What a library wrote last may still sit in the stream's buffer: flush it before the
    # interpreter does, so that a reader gone away cannot turn the exit code into 120.
    atexit.unregister(_flush_or_drop)
    atexit.register(_flush_or_drop, stream)
    for noisy in ("apscheduler", "mail.log", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def drop_what_a_closed_pipe_gets(stream: TextIO) -> None:
    """Point `stream`'s file descriptor at /dev/null: its reader went away, so what the stream
    still buffers and whatever is written later is dropped instead of failing again. Without
    this the interpreter's own flush of stderr at exit fails, and it exits 120 whatever the
    exit code was meant to be (unless PYTHONUNBUFFERED happens to be set)."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):  # no file descriptor: nothing to redirect
        return
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _flush_or_drop(stream: TextIO) -> None:
    """At exit: flush `stream`, or drop what it holds when nobody reads it any more."""
    try:
        stream.flush()
    except OSError:
        drop_what_a_closed_pipe_gets(stream)
    except ValueError:  # already closed
        pass


def _leave_out_empty_fields(
    logger: Any, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A field without a value (`reason=None`) says nothing: leave it out of the line."""
    return {key: value for key, value in event.items() if value is not None}


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose events carry `logger=name`."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(logger=name)
    return logger


class Bound:
    """`log.bind(**values)` made lazily: each event gets `values` as a bound logger's would,
    and nothing is bound until something other than an event is asked for. A row's logger
    is made for every message, and at the usual level most of them log nothing (a bind
    copies the context each time)."""

    __slots__ = ("_log", "_values")

    def __init__(self, log: Any, **values: Any) -> None:
        self._log = log
        self._values = values

    def debug(self, event: str, **fields: Any) -> Any:
        return self._log.debug(event, **{**self._values, **fields})

    def info(self, event: str, **fields: Any) -> Any:
        return self._log.info(event, **{**self._values, **fields})

    def warning(self, event: str, **fields: Any) -> Any:
        return self._log.warning(event, **{**self._values, **fields})

    def error(self, event: str, **fields: Any) -> Any:
        return self._log.error(event, **{**self._values, **fields})

    def exception(self, event: str, **fields: Any) -> Any:
        return self._log.exception(event, **{**self._values, **fields})

    def __getattr__(self, name: str) -> Any:  # bind, new, ...: the bound logger's own
        return getattr(self._log.bind(**self._values), name)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): a
    database error's SQL and parameters stay out of the log."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
