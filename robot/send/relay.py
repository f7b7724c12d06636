"""SMTP connections of one account, over aiosmtplib. The only module that sees its errors.

aiosmtplib's exceptions are re-raised as TransportFault (the account cannot send at all),
TransientDeliveryError (try the message later) or PermanentDeliveryError (never).
"""

from __future__ import annotations

import enum
import socket
import ssl
from dataclasses import dataclass, field

import aiosmtplib

from robot.compose.message import Composed
from robot.config import Account, is_loopback
from robot.errors import (
    ConfigError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransportFault,
)
from robot.outcome.replies import Outcome, Reply, Stage, classify
from robot.send.protocol import SessionBroken, SmtpReply, SmtpSession, path

COMPLETED = 250
START_INPUT = 354
SERVICE_CLOSING = 421
AUTH_REQUIRED = 530  # RFC 4954; also "530 Must issue a STARTTLS command first"


@dataclass(frozen=True)
class SendResult:
    """The server accepted DATA for at least one recipient."""

    code: int
    reply: str
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # recipient -> reply


def tls_context(account: Account) -> ssl.SSLContext:
    """Verified by default (system CAs, or `ca_file`); unverified only if verify_tls = false."""
    context = ssl.create_default_context(cafile=account.smtp.ca_file)
    if not account.smtp.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpConnection:
    """One reusable connection of an account: open, send messages, close.

    aiosmtplib opens it (connect, TLS, EHLO, STARTTLS, AUTH); the transactions go through
    robot.send.protocol, pipelined when the server offers PIPELINING.
    """

    def __init__(self, account: Account) -> None:
        self.account = account
        self.sent_on_connection = 0
        self._session: SmtpSession | None = None

    @property
    def is_open(self) -> bool:
        """True while the connection can take another message."""
        return self._session is not None and self._session.is_open

    @property
    def where(self) -> str:
        """host:port of the server, for messages."""
        return f"{self.account.smtp.host}:{self.account.port}"

    @property
    def exhausted(self) -> bool:
        """True once max_per_connection messages went over this connection."""
        return self.sent_on_connection >= self.account.smtp.max_per_connection

    async def open(self) -> str:
        """Connect, EHLO with helo_name, STARTTLS or TLS, AUTH. Returns the greeting.

        Raises TransportFault when the server cannot be reached, TLS fails or AUTH is refused.
        """
        smtp_settings = self.account.smtp
        security = smtp_settings.security
        smtp = aiosmtplib.SMTP(
            hostname=smtp_settings.host,
            port=self.account.port,
            local_hostname=self.account.helo_name,
            timeout=smtp_settings.timeout_seconds,
            use_tls=security == "ssl",
            start_tls=security == "starttls",
            validate_certs=smtp_settings.verify_tls,
            tls_context=tls_context(self.account) if security != "none" else None,
        )
        where = f"{smtp_settings.host}:{self.account.port}"
        try:
            greeting = await smtp.connect()
            if smtp_settings.username:
                await self._login(smtp, where)
            await self._take_over(smtp)
        except ssl.SSLError as exc:
            await _abort(smtp)
            raise TransportFault(f"TLS with {where} failed: {exc.reason or exc}") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _abort(smtp)
            raise TransportFault(
                f"{where} refused the login of {smtp_settings.username!r}: {exc.code} {exc.message}"
            ) from exc
        except (aiosmtplib.SMTPException, OSError, SessionBroken) as exc:
            await _abort(smtp)
            raise _connection_fault(exc, where) from exc
        return f"{greeting.code} {greeting.message}"

    async def _take_over(self, smtp: aiosmtplib.SMTP) -> None:
        """Hand the greeted connection to our session. aiosmtplib says EHLO only when a
        command needs it: a plain connection without AUTH has not said it yet."""
        if smtp.is_ehlo_or_helo_needed:
            await _hello(smtp)
        self._session = SmtpSession.take_over(smtp, self.account.smtp.timeout_seconds)
        self.sent_on_connection = 0

    async def _login(self, smtp: aiosmtplib.SMTP, where: str) -> None:
        settings = self.account.smtp
        if (
            settings.security == "none"
            and not settings.allow_insecure_auth
            and not is_loopback(settings.host)
        ):
            raise TransportFault(
                f"refusing to send the password of {settings.username!r} to {where} "
                "over an unencrypted connection (set security = starttls or ssl, "
                "or allow_insecure_auth = true)"
            )
        try:
            password = self.account.read_password()
        except ConfigError as exc:
            raise TransportFault(str(exc)) from None
        if password is None:
            raise TransportFault(
                f"account {self.account.name} has a username but no password "
                "(password_file, ROBOT_SMTP_PASSWORD or a systemd credential)"
            )
        assert settings.username is not None
        await smtp.login(settings.username, password)

    async def send(self, message: Composed) -> SendResult:
        """Send one message: MAIL, RCPT for each recipient, DATA (pipelined when offered),
        then the body.

        Raises TransientDeliveryError or PermanentDeliveryError, with the stage (and the
        recipient, when the reply is about one), or TransportFault when the server wants a
        login or TLS first (530 to MAIL): no message of this account can go through.
        """
        session = self._session
        if session is None:
            raise TransientDeliveryError("connection is not open", stage=Stage.CONNECT)
        self.sent_on_connection += 1
        recipients = message.recipients
        mail, rcpts = self._paths(session, message)
        broken: SessionBroken | None = None
        try:
            replies = await session.envelope(mail, rcpts)
        except SessionBroken as exc:
            broken, replies = exc, exc.replies
        mail_reply = replies[0] if replies else None
        data_reply = replies[len(rcpts) + 1] if len(replies) > len(rcpts) + 1 else None
        if mail_reply is not None and not mail_reply.ok:
            await self._abandon(mail_reply, data_reply)
            if mail_reply.code == AUTH_REQUIRED:
                raise TransportFault(
                    f"{self.where} answered {mail_reply.code} {mail_reply.text} (at MAIL): "
                    "check username and security"
                )
            raise _delivery_error(mail_reply.code, mail_reply.text, Stage.MAIL, None)
        refused: dict[str, tuple[int, str]] = {}
        for recipient, reply in zip(recipients, replies[1 : len(rcpts) + 1], strict=False):
            if reply.code == SERVICE_CLOSING:  # the server is closing: not a refusal
                await self.close()
                raise _delivery_error(reply.code, reply.text, Stage.RCPT, recipient)
            if not reply.ok:
                refused[recipient] = (reply.code, reply.text)
        if broken is not None:
            await self.close()
            stage = (  # the command whose reply did not come
                Stage.MAIL
                if not replies
                else Stage.RCPT
                if len(replies) <= len(rcpts)
                else Stage.DATA
            )
            raise TransientDeliveryError(
                str(broken), reply=str(broken), stage=stage, before_data=True
            ) from broken
        if len(refused) == len(recipients):
            await self._abandon(None, data_reply)
            # Bounce only if every refusal is for good: one that may change defers the row.
            first = next(
                (
                    r
                    for r, (c, t) in refused.items()
                    if classify(Reply(c, t, Stage.RCPT)) is Outcome.DEFERRED
                ),
                next(iter(refused)),
            )
            code, text = refused[first]
            raise _delivery_error(code, text, Stage.RCPT, first, refused)
        accepted = [r for r in recipients if r not in refused]
        only = accepted[0] if len(accepted) == 1 else None
        assert data_reply is not None
        if data_reply.code != START_INPUT:
            await self._abandon(data_reply, None)
            raise _delivery_error(data_reply.code, data_reply.text, Stage.DATA, only)
        try:
            reply = await session.body(message.data)
        except SessionBroken as exc:
            await self.close()
            raise TransientDeliveryError(
                str(exc), reply=str(exc), stage=Stage.DATA, before_data=False
            ) from exc
        if reply.code != COMPLETED:
            await self._abandon(reply, None)
            raise _delivery_error(reply.code, reply.text, Stage.DATA, only)
        return SendResult(code=reply.code, reply=reply.text, refused=refused)

    def _paths(self, session: SmtpSession, message: Composed) -> tuple[bytes, list[bytes]]:
        """MAIL FROM's path with its parameters, and each RCPT TO's path."""
        utf8 = not message.envelope_from.isascii() or not all(
            a.isascii() for a in message.recipients
        )
        if utf8 and not session.supports("smtputf8"):
            raise TransientDeliveryError(
                f"{self.where} does not offer SMTPUTF8, which a non-ASCII address needs",
                stage=Stage.MAIL,
                before_data=True,
            )
        try:
            mail = path(message.envelope_from, utf8)
            rcpts = [path(r, utf8) for r in message.recipients]
        except ValueError as exc:
            raise PermanentDeliveryError(str(exc), stage=Stage.MAIL, before_data=True) from exc
        if utf8:
            mail += b" SMTPUTF8"
        if session.supports("size"):
            mail += b" SIZE=%d" % len(message.data)
        return mail, rcpts

    async def _abandon(self, refusal: SmtpReply | None, data_reply: SmtpReply | None) -> None:
        """After a refused transaction: close on 421, else end a DATA the server accepted
        anyway (RFC 2920: a lone ".") and RSET, so the connection can carry the next one."""
        session = self._session
        if session is None:
            return
        if refusal is not None and refusal.code == SERVICE_CLOSING:
            await self.close()
            return
        try:
            if data_reply is not None and data_reply.code == START_INPUT:
                await session.end_empty()
            if (await session.command(b"RSET")).ok:
                return
        except SessionBroken:
            pass
        await self.close()

    async def close(self) -> None:
        """QUIT politely; drop the socket if the server does not answer."""
        session, self._session = self._session, None
        if session is None:
            return
        if session.is_open:
            try:
                await session.command(b"QUIT", timeout=5)
            except SessionBroken:
                pass
        session.close()


class TlsUse(enum.StrEnum):
    """How a direct-delivery connection ended up protected."""

    VERIFIED = "verified"  # STARTTLS, certificate valid for the MX name
    UNVERIFIED = "unverified"  # STARTTLS, certificate not checked (it failed verification)
    NONE = "none"  # plain text: STARTTLS not offered, or its handshake failed


class DirectConnection(SmtpConnection):
    """A connection to one address of a recipient domain's mail host, for direct delivery.

    EHLO with the account's helo_name, STARTTLS whenever the server offers it, never AUTH.
    TLS is opportunistic, as between MTAs without DANE or MTA-STS: a certificate that fails
    verification for the MX name is common, so the host is tried again over TLS without
    verification rather than not at all; a handshake that fails outright is tried again in
    plain text. `tls` says what was used.
    """

    def __init__(self, account: Account, address: str, port: int, server_name: str) -> None:
        super().__init__(account)
        self.address = address
        self.port = port
        self.server_name = server_name  # the MX name: TLS SNI and certificate check
        self.tls = TlsUse.NONE

    @property
    def where(self) -> str:
        """mx-name[address]:port, for messages."""
        return f"{self.server_name}[{self.address}]:{self.port}"

    async def open(self) -> str:
        """Connect, EHLO (HELO if EHLO is not understood), STARTTLS when offered.

        Returns the greeting. Raises TransportFault when this host cannot take mail now:
        connection refused or timed out, a greeting or EHLO other than 2xx, a dropped
        connection. The caller then tries the next host.
        """
        use = TlsUse.VERIFIED if self.account.smtp.verify_tls else TlsUse.UNVERIFIED
        while True:
            try:
                return await self._open_as(use)
            except ssl.SSLCertVerificationError as exc:
                if use is not TlsUse.VERIFIED:
                    raise TransportFault(f"TLS with {self.where} failed: {exc}") from exc
                use = TlsUse.UNVERIFIED
            except ssl.SSLError as exc:
                if use is TlsUse.NONE:
                    raise TransportFault(f"TLS with {self.where} failed: {exc}") from exc
                use = TlsUse.NONE

    async def _open_as(self, use: TlsUse) -> str:
        smtp = aiosmtplib.SMTP(
            hostname=self.address,
            port=self.port,
            local_hostname=self.account.helo_name,
            timeout=self.account.smtp.timeout_seconds,
            use_tls=False,
            start_tls=False,
        )
        try:
            greeting = await smtp.connect()
            await _hello(smtp)
            tls = TlsUse.NONE
            if use is not TlsUse.NONE and smtp.supports_extension("starttls"):
                context = (
                    tls_context(self.account) if use is TlsUse.VERIFIED else _unverified_context()
                )
                await smtp.starttls(server_hostname=self.server_name, tls_context=context)
                await _hello(smtp)
                tls = use
            await self._take_over(smtp)
        except ssl.SSLError:
            await _abort(smtp)
            raise
        except (aiosmtplib.SMTPException, OSError, SessionBroken) as exc:
            await _abort(smtp)
            raise _connection_fault(exc, self.where) from exc
        self.tls = tls
        return f"{greeting.code} {greeting.message}"


def _connection_fault(
    exc: aiosmtplib.SMTPException | OSError | SessionBroken, where: str
) -> TransportFault:
    """Why opening a connection to `where` failed: the server's reply, or the socket's."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return TransportFault(f"{where} answered {exc.code} {exc.message}")
    return TransportFault(f"cannot connect to {where}: {_describe(exc)}")


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _hello(smtp: aiosmtplib.SMTP) -> None:
    """EHLO; HELO when the server does not know EHLO (5xx). Raises aiosmtplib errors."""
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        if not (500 <= exc.code < 600) or not smtp.is_connected:
            raise
        await smtp.helo()


def _delivery_error(
    code: int,
    text: str,
    stage: Stage,
    recipient: str | None,
    refused: dict[str, tuple[int, str]] | None = None,
) -> TransientDeliveryError | PermanentDeliveryError:
    kind = PermanentDeliveryError if 500 <= code < 600 else TransientDeliveryError
    return kind(
        f"{code} {text}",
        code=code,
        reply=text,
        recipient=recipient,
        stage=stage,
        refused=refused,
    )


def _describe(exc: BaseException) -> str:
    """A short reason; aiosmtplib wraps the socket error, so look at the cause too."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, aiosmtplib.SMTPConnectError) and isinstance(cause, OSError):
        exc = cause
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return f"timed out ({exc})"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return f"connection dropped ({exc})"
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


async def _abort(smtp: aiosmtplib.SMTP) -> None:
    if smtp.is_connected:
        smtp.close()
