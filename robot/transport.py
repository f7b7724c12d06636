"""SMTP connections of one account, over aiosmtplib. The only module that sees its errors.

aiosmtplib's exceptions are re-raised as TransportFault (the account cannot send at all),
TransientDeliveryError (try the message later) or PermanentDeliveryError (never).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field

import aiosmtplib

from robot.compose import Composed
from robot.config import Account
from robot.errors import (
    ConfigError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransportFault,
)
from robot.policy import Outcome, Reply, Stage, classify

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


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SmtpConnection:
    """One reusable connection of an account: open, send messages, close."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.sent_on_connection = 0
        self._smtp: aiosmtplib.SMTP | None = None

    @property
    def is_open(self) -> bool:
        """True while the connection can take another message."""
        return self._smtp is not None and self._smtp.is_connected

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
        except ssl.SSLError as exc:
            await _abort(smtp)
            raise TransportFault(f"TLS with {where} failed: {exc.reason or exc}") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _abort(smtp)
            raise TransportFault(
                f"{where} refused the login of {smtp_settings.username!r}: {exc.code} {exc.message}"
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            await _abort(smtp)
            raise _connection_fault(exc, where) from exc
        self._smtp = smtp
        self.sent_on_connection = 0
        return f"{greeting.code} {greeting.message}"

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
        """Send one message: MAIL, RCPT for each recipient, DATA.

        Raises TransientDeliveryError or PermanentDeliveryError, with the stage (and the
        recipient, when the reply is about one), or TransportFault when the server wants a
        login or TLS first (530 before DATA): no message of this account can go through.
        """
        if self._smtp is None:
            raise TransientDeliveryError("connection is not open", stage=Stage.CONNECT)
        smtp = self._smtp
        self.sent_on_connection += 1
        options = []
        if not message.envelope_from.isascii() or not all(a.isascii() for a in message.recipients):
            options.append("SMTPUTF8")
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(message.data)}")
        stage = Stage.MAIL
        refused: dict[str, tuple[int, str]] = {}
        try:
            await smtp.mail(message.envelope_from, options=options)
            stage = Stage.RCPT
            for recipient in message.recipients:
                try:
                    await smtp.rcpt(recipient)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    if exc.code == SERVICE_CLOSING:  # the server closed: not a refusal
                        await self.close()
                        raise _delivery_error(exc.code, exc.message, stage, recipient) from exc
                    refused[recipient] = (exc.code, exc.message)
            if len(refused) == len(message.recipients):
                await self._reset()
                # Bounce only if every refusal is for good: one that may change defers the row.
                first = next(
                    (
                        r
                        for r, (c, t) in refused.items()
                        if classify(Reply(c, t, stage)) is Outcome.DEFERRED
                    ),
                    next(iter(refused)),
                )
                code, text = refused[first]
                raise _delivery_error(code, text, Stage.RCPT, first, refused)
            stage = Stage.DATA
            reply = await smtp.data(message.data)
        except (TransientDeliveryError, PermanentDeliveryError):
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == SERVICE_CLOSING:
                await self.close()
            else:
                await self._reset()
            if exc.code == AUTH_REQUIRED and stage is not Stage.DATA:
                raise TransportFault(
                    f"{self.where} answered {exc.code} "
                    f"{exc.message} (at {stage.upper()}): check username and security"
                ) from exc
            accepted = [r for r in message.recipients if r not in refused]
            only = accepted[0] if stage is Stage.DATA and len(accepted) == 1 else None
            raise _delivery_error(exc.code, exc.message, stage, only) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            raise TransientDeliveryError(
                _describe(exc), reply=_describe(exc), stage=stage, before_data=stage != Stage.DATA
            ) from exc
        return SendResult(code=reply.code, reply=reply.message, refused=refused)

    async def _reset(self) -> None:
        """RSET after a refused transaction, so the connection can carry the next message."""
        if self._smtp is None:
            return
        try:
            await self._smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self.close()

    async def close(self) -> None:
        """QUIT politely; drop the socket if the server does not answer."""
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await smtp.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


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
        except ssl.SSLError:
            await _abort(smtp)
            raise
        except (aiosmtplib.SMTPException, OSError) as exc:
            await _abort(smtp)
            raise _connection_fault(exc, self.where) from exc
        self._smtp = smtp
        self.tls = tls
        self.sent_on_connection = 0
        return f"{greeting.code} {greeting.message}"


def _connection_fault(exc: aiosmtplib.SMTPException | OSError, where: str) -> TransportFault:
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
