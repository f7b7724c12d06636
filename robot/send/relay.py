"""SMTP connections of one account, over aiosmtplib: the only module that sees its errors.

aiosmtplib opens a connection (a failure is a TransportFault: the account cannot send);
the transactions go over robot.send.protocol and come back as an Attempt, whatever the
server said. `Relay` keeps a worker's connections, one per account.

Given the next message of the same account, a connection to a server that offers
PIPELINING writes its envelope together with the current message's body (RFC 2920 §3.1),
and keeps the replies to it for when that message is sent: one round trip a message. The
reply to the body is read first and belongs to the current message; the replies after it
belong to the next one, whatever they say.
"""

from __future__ import annotations

import enum
import itertools
import socket
import ssl
from dataclasses import dataclass

import aiosmtplib

from robot.compose.message import Composed
from robot.config import Account, is_loopback
from robot.errors import ConfigError, TransportFault
from robot.send.attempt import Attempt, Refusal, Reply, SmtpCode, Stage
from robot.send.protocol import SessionBroken, SmtpReply, SmtpSession, path, printable


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
        self._ahead: _Ahead | None = None  # the next message's envelope, written early

    def waits_for(self, message: Composed) -> bool:
        """The envelope of `message` went ahead with the last body: the server waits for
        its content."""
        return self._ahead is not None and self._ahead.message is message

    def ready_for(self, message: Composed) -> bool:
        """No envelope was written ahead, or it was for `message`: the connection is not in
        the middle of another message's DATA."""
        return self._ahead is None or self._ahead.message is message

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
                f"{where} refused the login of {smtp_settings.username!r}: "
                f"{exc.code} {printable(exc.message)}"
            ) from exc
        except (aiosmtplib.SMTPException, OSError, SessionBroken) as exc:
            await _abort(smtp)
            raise _connection_fault(exc, where) from exc
        return f"{greeting.code} {printable(greeting.message)}"

    async def _take_over(self, smtp: aiosmtplib.SMTP) -> None:
        """Hand the greeted connection to our session. aiosmtplib says EHLO only when a
        command needs it: a plain connection without AUTH has not said it yet."""
        if smtp.is_ehlo_or_helo_needed:
            await _hello(smtp)
        settings = self.account.smtp
        self._session = SmtpSession.take_over(
            smtp, settings.timeout_seconds, settings.data_timeout_seconds
        )
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

    async def send(self, message: Composed, then: Composed | None = None) -> tuple[Attempt, bool]:
        """Send one message: MAIL, RCPT for each recipient, DATA (pipelined when offered),
        then the body. Returns the attempt, and whether the connection failed before DATA
        (nothing was sent: a reused connection that went stale is worth a fresh one).

        `then`, the message to be sent next on this connection: when the server offers
        PIPELINING and the connection takes one more message, its envelope goes out in the
        write of this message's body, and its replies are kept for `send(then)`, which
        writes no envelope then. The caller must send `then` next, or close the
        connection (it is in the middle of `then`'s DATA: `close` drops it, which the
        server takes as no message).

        Recipients the server has no room for (452 at RCPT: its limit of recipients per
        transaction, RFC 5321 §4.5.3.1.10) go in further transactions on the connection,
        as many as the server takes at a time, until every recipient was accepted or
        refused otherwise, or a transaction takes none of them: only then is a 452 a
        refusal. A server that wants a login or TLS first (530 to MAIL) is the account's
        fault, not the message's: the attempt says so and the connection is closed.
        """
        session = self._session
        if session is not None and not self.ready_for(message):
            await self.close()  # another message's DATA is open: dropping it discards it
            session = None
        if session is None:
            reply = Reply(None, "connection is not open", Stage.CONNECT)
            return _ended(message.recipients, reply), True
        ahead, self._ahead = self._ahead, None
        self.sent_on_connection += 1
        try:
            mail, rcpts = self._paths(session, message)
        except ValueError as exc:  # compose lets no such address through: a last guard
            return _ended(message.recipients, Reply(554, f"5.6.0 {exc}", Stage.MAIL, True)), False
        following = self._following(session, then)
        attempt, before_data = Attempt(), False
        pending, room = message.recipients, len(message.recipients)
        limit_reply: Reply | None = None  # the 452 that showed the server's limit
        for transaction in itertools.count():
            batch, later = pending[:room], pending[room:]
            done = await self._transaction(
                session,
                mail,
                rcpts,
                batch,
                message.data,
                first=transaction == 0,
                ahead=ahead if transaction == 0 else None,
                following=following if not later else None,
            )
            attempt = done.attempt if transaction == 0 else attempt.merged(done.attempt)
            if attempt.fault is not None:
                return attempt, False
            if transaction == 0:  # later ones come after a message went: never stale
                before_data = done.before_data
            postponed = tuple(recipient for recipient, _ in done.postponed)
            limit_reply = done.postponed[0][1] if done.postponed else limit_reply
            pending = postponed + later
            if not pending:
                break
            ended = any(refusal.ended for refusal in done.attempt.refusals)
            if ended or postponed == batch or not self.is_open:  # no further transaction
                unplaced = tuple(Refusal((r,), reply, r) for r, reply in done.postponed)
                if later:  # never offered: the server's limit kept them out too
                    assert limit_reply is not None
                    unplaced += (Refusal(later, limit_reply),)
                attempt = attempt.merged(Attempt(refusals=unplaced))
                break
            room = _room(batch, postponed) or room
        if attempt.accepted:
            attempt = attempt.answered_by(self.where)
        return attempt, before_data

    async def _transaction(
        self,
        session: SmtpSession,
        mail: bytes,
        rcpts: dict[str, bytes],
        recipients: tuple[str, ...],
        data: bytes,
        first: bool,
        ahead: _Ahead | None = None,
        following: _Following | None = None,
    ) -> _Transaction:
        """One transaction of the message for `recipients`: the attempt, whether the
        connection failed before DATA, and the recipients postponed (452 at RCPT).

        `ahead`: the envelope was written with the previous message's body, and these are
        its replies. `following`: the next message's envelope, to go with the body when
        no recipient is postponed (then no further transaction of this message follows)."""
        broken: SessionBroken | None = None
        if ahead is not None:
            replies, broken = ahead.replies, ahead.broken
            if broken is None and not session.is_open:  # the server gave up while we waited
                broken = SessionBroken("connection dropped", replies, timed_out=False)
        else:
            try:
                replies = await session.envelope(mail, [rcpts[r] for r in recipients])
            except SessionBroken as exc:
                broken, replies = exc, exc.replies
        count = len(recipients)
        mail_reply = replies[0] if replies else None
        data_reply = replies[count + 1] if len(replies) > count + 1 else None
        if mail_reply is not None and not mail_reply.ok:
            await self._abandon(mail_reply, data_reply)
            if mail_reply.code == SmtpCode.AUTH_REQUIRED and first:
                await self.close()
                return _Transaction(
                    Attempt.faulted(
                        f"{self.where} answered {mail_reply.code} {mail_reply.text} (at MAIL): "
                        "check username and security"
                    )
                )
            return _Transaction(_ended(recipients, _reply(mail_reply, Stage.MAIL)))
        refused: list[Refusal] = []
        postponed: list[tuple[str, Reply]] = []
        for recipient, reply in zip(recipients, replies[1 : count + 1], strict=False):
            if reply.code == SmtpCode.SERVICE_CLOSING:  # the server is closing: not a refusal
                await self.close()
                rest = _not_refused(recipients, refused)
                closing = Refusal(rest, _reply(reply, Stage.RCPT), recipient, ended=True)
                return _Transaction(Attempt(refusals=(*refused, closing)))
            if reply.code == SmtpCode.TOO_MANY_RECIPIENTS:
                postponed.append((recipient, _reply(reply, Stage.RCPT)))
            elif not reply.ok:
                refused.append(Refusal((recipient,), _reply(reply, Stage.RCPT), recipient))
        if broken is not None:
            await self.close()
            stage = (  # the command whose reply did not come
                Stage.MAIL if not replies else Stage.RCPT if len(replies) <= count else Stage.DATA
            )
            silence = Refusal(_not_refused(recipients, refused), Reply(None, str(broken), stage))
            return _Transaction(Attempt(refusals=(*refused, _ending(silence))), True)
        no_room = tuple(postponed)
        accepted = _not_refused(recipients, refused, {r for r, _ in no_room})
        if not accepted:
            await self._abandon(None, data_reply)
            return _Transaction(Attempt(refusals=tuple(refused)), postponed=no_room)
        only = accepted[0] if len(accepted) == 1 else None
        assert data_reply is not None
        if data_reply.code != SmtpCode.START_INPUT:
            await self._abandon(data_reply, None)
            ending = Refusal(accepted, _reply(data_reply, Stage.DATA), only, ended=True)
            return _Transaction(Attempt(refusals=(*refused, ending)), postponed=no_room)
        if no_room:
            following = None  # a further transaction of this message comes first
        try:
            if following is None:
                reply = await session.body(data)
            else:
                reply = await self._body_then(session, data, following)
        except SessionBroken as exc:  # once written whole, the message may have been taken
            await self.close()
            unanswered = Reply(None, str(exc), Stage.DATA)
            ending = Refusal(accepted, unanswered, only, ended=True, maybe_delivered=exc.written)
            return _Transaction(Attempt(refusals=(*refused, ending)), postponed=no_room)
        if reply.code != SmtpCode.COMPLETED:
            if following is None or reply.code == SmtpCode.SERVICE_CLOSING:
                await self._abandon(reply, None)
            # else no RSET: the "." ended the transaction, and the next one is under way
            ending = Refusal(accepted, _reply(reply, Stage.DATA), only, ended=True)
            return _Transaction(Attempt(refusals=(*refused, ending)), postponed=no_room)
        attempt = Attempt(accepted, _reply(reply, Stage.DATA), tuple(refused))
        return _Transaction(attempt, postponed=no_room)

    async def _body_then(
        self, session: SmtpSession, data: bytes, following: _Following
    ) -> SmtpReply:
        """The body and the next message's envelope in one write; the reply to the body.
        The envelope's replies (or the failure that cut them short) are kept for when that
        message is sent. Raises SessionBroken when the body's own reply did not come."""
        try:
            replies = await session.body_then_envelope(data, following.mail, following.rcpts)
        except SessionBroken as exc:
            if not exc.replies:
                raise
            self._ahead = _Ahead(following.message, exc.replies[1:], exc)
            return exc.replies[0]
        self._ahead = _Ahead(following.message, replies[1:])
        return replies[0]

    def _following(self, session: SmtpSession, then: Composed | None) -> _Following | None:
        """The envelope of `then` to write with this message's body, when the server offers
        PIPELINING, the connection takes one more message and `then` can be addressed."""
        if then is None or not session.pipelining or self.exhausted:
            return None
        try:
            mail, rcpts = self._paths(session, then)
        except ValueError:
            return None  # send() refuses it on its own
        return _Following(then, mail, [rcpts[r] for r in then.recipients])

    def _paths(self, session: SmtpSession, message: Composed) -> tuple[bytes, dict[str, bytes]]:
        """MAIL FROM's path with its parameters, and each recipient's RCPT TO path. Raises
        ValueError for an address that cannot go on a command line (compose refuses those
        first)."""
        mail = path(message.envelope_from)
        rcpts = {r: path(r) for r in message.recipients}
        if session.supports("size"):
            mail += b" SIZE=%d" % len(message.data)
        return mail, rcpts

    async def _abandon(self, refusal: SmtpReply | None, data_reply: SmtpReply | None) -> None:
        """After a refused transaction: close on 421, else end a DATA the server accepted
        anyway (RFC 2920: a lone ".") and RSET, so the connection can carry the next one."""
        session = self._session
        if session is None:
            return
        if refusal is not None and refusal.code == SmtpCode.SERVICE_CLOSING:
            await self.close()
            return
        try:
            if data_reply is not None and data_reply.code == SmtpCode.START_INPUT:
                await session.end_empty()
            if (await session.command(b"RSET")).ok:
                return
        except SessionBroken:
            pass
        await self.close()

    async def close(self) -> None:
        """QUIT politely; drop the socket if the server does not answer. In the middle of
        a DATA (an envelope written ahead for a message not sent), close without QUIT:
        whatever followed would be taken for the message, and a connection closed before
        the final "." delivers nothing."""
        session, self._session = self._session, None
        ahead, self._ahead = self._ahead, None
        if session is None:
            return
        if session.is_open and ahead is None:
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
        return f"{greeting.code} {printable(greeting.message)}"


def _connection_fault(
    exc: aiosmtplib.SMTPException | OSError | SessionBroken, where: str
) -> TransportFault:
    """Why opening a connection to `where` failed: the server's reply, or the socket's
    (aiosmtplib's texts are the server's bytes as they came: made printable here)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return TransportFault(f"{where} answered {exc.code} {printable(exc.message)}")
    return TransportFault(f"cannot connect to {where}: {printable(_describe(exc))}")


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


@dataclass(frozen=True)
class _Following:
    """The next message of the connection, with its MAIL FROM and RCPT TO paths."""

    message: Composed
    mail: bytes
    rcpts: list[bytes]


@dataclass(frozen=True)
class _Ahead:
    """The envelope of `message`, written with the previous message's body: the replies
    that came, and the failure that cut them short, if any."""

    message: Composed
    replies: list[SmtpReply]
    broken: SessionBroken | None = None


@dataclass(frozen=True)
class _Transaction:
    """What one transaction of a message gave: its attempt, whether the connection failed
    before DATA, and the recipients the server had no room for, each with its 452 reply,
    in order (they are not in the attempt: they go in the next transaction)."""

    attempt: Attempt
    before_data: bool = False
    postponed: tuple[tuple[str, Reply], ...] = ()


def _room(batch: tuple[str, ...], postponed: tuple[str, ...]) -> int | None:
    """How many recipients the server takes in one transaction, when the replies to
    `batch` show its limit: every recipient from the first postponed one on was
    postponed. None when they do not (a 452 for one recipient's full mailbox, say)."""
    if not postponed:
        return None
    cut = batch.index(postponed[0])
    return cut if cut > 0 and batch[cut:] == postponed else None


def _reply(reply: SmtpReply, stage: Stage) -> Reply:
    return Reply(reply.code, reply.text, stage)


def _not_refused(
    recipients: tuple[str, ...], refused: list[Refusal], postponed: set[str] | None = None
) -> tuple[str, ...]:
    gone = {r for refusal in refused for r in refusal.recipients} | (postponed or set())
    return tuple(r for r in recipients if r not in gone)


def _ending(refusal: Refusal) -> Refusal:
    return Refusal(refusal.recipients, refusal.reply, refusal.about, ended=True)


def _ended(recipients: tuple[str, ...], reply: Reply) -> Attempt:
    """Every recipient refused by one reply that ended the transaction."""
    return Attempt(refusals=(Refusal(recipients, reply, ended=True),))


class Relay:
    """The relay connections of one connection worker, one per account: reused for the
    next message, reopened after max_per_connection messages or once the server closed it."""

    def __init__(self) -> None:
        self.connections: dict[str, SmtpConnection] = {}

    async def send(
        self, account: Account, message: Composed, then: Composed | None = None
    ) -> Attempt:
        """Send `message` from `account`. A reused connection found dead before DATA (the
        server timed it out while idle) costs one more try on a fresh connection; whatever
        that try gives is the attempt. `then`: the next message of the same account, whose
        envelope may go with this one's body (SmtpConnection.send); send it next, or give
        it to `drop_unsent`."""
        attempt, stale = await self._send_once(account, message, then)
        if stale and attempt.fault is None:
            await self._drop(account.name)
            attempt, _ = await self._send_once(account, message, then)
        connection = self.connections.get(account.name)
        if connection is not None and connection.exhausted:
            await self._drop(account.name)
        return attempt

    async def _send_once(
        self, account: Account, message: Composed, then: Composed | None
    ) -> tuple[Attempt, bool]:
        """One try: (attempt, True when a reused connection failed before DATA)."""
        connection = self.connections.get(account.name)
        # A connection that waits for this message has the replies to its envelope, even
        # when the server closed it since (a 421 to MAIL): they are the attempt's.
        if (
            connection is not None
            and not connection.waits_for(message)
            and (
                connection.account is not account
                or not connection.is_open
                or connection.exhausted
                or not connection.ready_for(message)
            )
        ):
            await self._drop(account.name)
            connection = None
        if connection is None:
            connection = SmtpConnection(account)
            try:
                await connection.open()
            except TransportFault as exc:
                return Attempt.faulted(str(exc)), False
            self.connections[account.name] = connection
        reused = connection.sent_on_connection > 0
        attempt, before_data = await connection.send(message, then)
        return attempt, before_data and reused

    async def drop_unsent(self, message: Composed) -> None:
        """`message` will not be sent now: close the connection whose server waits for its
        content (its envelope went ahead), which discards it."""
        for name, connection in list(self.connections.items()):
            if connection.waits_for(message):
                await self._drop(name)

    def open_connections(self) -> dict[str, int]:
        """Open connections by account name, for the metrics."""
        return {name: int(c.is_open) for name, c in self.connections.items()}

    async def _drop(self, name: str) -> None:
        connection = self.connections.pop(name, None)
        if connection is not None:
            await connection.close()

    async def close(self) -> None:
        """QUIT every connection."""
        for name in list(self.connections):
            await self._drop(name)
