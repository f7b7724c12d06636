"""What one delivery attempt gave: every reply that matters, as a value.

The send stage never judges: a refusal, a timeout or a server that wants a login first all
come back in an `Attempt`, and robot.outcome decides what they mean for the row. Pure.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class SmtpCode(enum.IntEnum):
    """The reply codes the robot acts on by number (RFC 5321 §4.2.3, RFC 4954)."""

    COMPLETED = 250
    START_INPUT = 354
    SERVICE_CLOSING = 421
    TEMPORARY_LOCAL_ERROR = 451
    TOO_MANY_RECIPIENTS = 452
    UNROUTABLE = 550  # what the robot says for a domain that takes no mail (DNS)
    NULL_MX = 556  # RFC 7505: the domain declares that it accepts no mail
    AUTH_REQUIRED = 530  # also "530 Must issue a STARTTLS command first"


class Stage(enum.StrEnum):
    """Where in the SMTP dialogue a reply came."""

    CONNECT = "connect"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True)
class Reply:
    """One reply: its basic code (None for a timeout or a dropped connection), its text and
    the stage it answered. `by_robot` marks what the robot said itself because no server
    could be asked (DNS said the domain takes no mail, say); its code is then a stand-in
    for classifying, never stored as a server's."""

    code: int | None
    text: str
    stage: Stage = Stage.DATA
    by_robot: bool = False

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code at the start of the text, if any."""
        match = ENHANCED.match(self.text)
        return ".".join(match.groups()) if match else None

    @property
    def server_code(self) -> int | None:
        """The code as a server said it: None for a timeout or what the robot said."""
        return None if self.by_robot else self.code

    def describe(self) -> str:
        """One line for last_error and logs: '550 5.1.1 No such user (at RCPT)'."""
        if self.by_robot:
            return self.text
        if self.code is None:
            return f"{self.text} (at {self.stage.upper()})"
        return f"{self.code} {self.text} (at {self.stage.upper()})".strip()

    def line(self) -> str:
        """Code and text as a history line shows them: '550 5.1.1 No such user'."""
        code = self.server_code
        return self.text if code is None else f"{code} {self.text}"


@dataclass(frozen=True)
class Refusal:
    """Recipients a reply kept the message from: one refused at RCPT, or every recipient
    of a transaction that failed at MAIL, at DATA or on the wire. `about` is the recipient
    the reply is about, when it is about one (it is blamed, and suppressed on a 5.1.x).
    `maybe_delivered`: the whole message went out but its reply never came (a timeout, a
    dropped connection), so the server may have accepted it."""

    recipients: tuple[str, ...]
    reply: Reply
    about: str | None = None
    ended: bool = False  # the reply ended the transaction (MAIL, DATA, the wire, 421, DNS)
    maybe_delivered: bool = False

    def detail(self) -> str:
        """'bob@example.org: 550 5.1.1 No such user', as the history records it."""
        return f"{', '.join(self.recipients)}: {self.reply.line()}"

    def reason(self) -> str:
        """'bob@example.org: 550 5.1.1 No such user (at RCPT)', for last_error."""
        described = self.reply.describe()
        return f"{self.about}: {described}" if self.about else described


@dataclass(frozen=True)
class Attempt:
    """One message offered to the servers: the recipients that took it and the reply that
    said so, every refusal in order, or the fault that kept the account from sending at
    all (nothing was sent: the row goes back untried). `hosts` names the servers that
    answered, for the log."""

    accepted: tuple[str, ...] = ()
    accepted_reply: Reply | None = None  # the first DATA reply that accepted the message
    refusals: tuple[Refusal, ...] = ()
    fault: str | None = None
    hosts: tuple[str, ...] = ()

    @staticmethod
    def faulted(reason: str) -> Attempt:
        """The account cannot send: connection, TLS or login failed, or a login is wanted."""
        return Attempt(fault=reason)

    def answered_by(self, host: str) -> Attempt:
        """This attempt with `host` as the one server that answered."""
        return Attempt(self.accepted, self.accepted_reply, self.refusals, self.fault, (host,))

    def merged(self, other: Attempt) -> Attempt:
        """This attempt and another transaction of the same message (another domain)."""
        return Attempt(
            accepted=self.accepted + other.accepted,
            accepted_reply=self.accepted_reply or other.accepted_reply,
            refusals=self.refusals + other.refusals,
            fault=self.fault or other.fault,
            hosts=self.hosts + other.hosts,
        )
