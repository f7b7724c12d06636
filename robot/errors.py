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


class DeliveryError(RobotError):
    """The SMTP server did not accept a message; carries the reply."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reply: str = "",
        enhanced: str | None = None,
        recipient: str | None = None,
        stage: str = "",
        refused: dict[str, tuple[int, str]] | None = None,
        before_data: bool = False,
    ) -> None:
        super().__init__(message)
        self.before_data = before_data  # the connection failed before DATA: nothing was sent
        self.refused = refused or {}  # every refused recipient -> (code, reply)
        self.code = code
        self.reply = reply
        self.enhanced = enhanced
        self.recipient = recipient
        self.stage = stage


class TransientDeliveryError(DeliveryError):
    """4xx, timeout or dropped connection: try this message again later."""


class PermanentDeliveryError(DeliveryError):
    """5xx: this message will never be accepted as it is."""


class TransportFault(RobotError):
    """The account cannot send at all (connection refused, AUTH or TLS failure)."""


class DatabaseUnavailable(RobotError):
    """The database cannot be reached or is locked; the robot waits and tries again."""


class MailboxError(RobotError):
    """The bounce mailbox cannot be read: connection, TLS, login or IMAP failure."""
