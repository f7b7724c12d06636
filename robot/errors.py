"""The exceptions of email-robot: one base class, one subclass per kind of failure."""

from __future__ import annotations


class RobotError(Exception):
    """Base class of every error email-robot raises on purpose."""


class ConfigError(RobotError):
    """robot.ini (or its environment overrides) is missing, unreadable or wrong."""

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        where = ", ".join(part for part in (f"key {key}" if key else "", path or "") if part)
        super().__init__(f"{message} ({where})" if where else message)
        self.key = key
        self.path = path


class BadRowError(RobotError):
    """An outbox row cannot become a message (bad address, no body, header injection...)."""


class TransportFault(RobotError):
    """The account cannot send at all (connection refused, AUTH or TLS failure)."""


class MailboxError(RobotError):
    """The bounce mailbox cannot be read: connection, TLS, login or IMAP failure."""
