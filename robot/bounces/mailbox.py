"""The bounce mailbox over IMAP (stdlib imaplib: blocking, so the daemon runs it in a thread).

`imaps://` speaks TLS from the first byte; `imap://` upgrades with STARTTLS and talks in clear
only to a server on loopback that offers no STARTTLS. Certificates are always verified.
"""

from __future__ import annotations

import base64
import imaplib
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any

from robot.config import BounceSettings, MailboxUrl, is_loopback, parse_mailbox_url
from robot.errors import ConfigError, MailboxError

TIMEOUT_SECONDS = 30.0
MAX_PER_POLL = 200  # messages read in one poll; the rest wait for the next one


class BounceMailbox:
    """One IMAP session on the bounce mailbox: open, read unseen messages, flag, move, close.

    Every failure is raised as MailboxError, whose text never contains the password.
    """

    def __init__(
        self,
        url: MailboxUrl,
        password: str,
        *,
        ca_file: str | None = None,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self._password = password
        self.ca_file = ca_file
        self.timeout = timeout
        self._conn: imaplib.IMAP4 | None = None
        self._capabilities: set[str] = set()
        self._created: set[str] = set()

    def __enter__(self) -> BounceMailbox:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect, secure the connection, log in and select the folder read-write."""
        url = self.url
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except OSError as exc:
            raise MailboxError(f"cannot read ca_file {self.ca_file}: {exc.strerror}") from exc
        try:
            if url.scheme == "imaps":
                self._conn = imaplib.IMAP4_SSL(
                    url.host, url.port, ssl_context=context, timeout=self.timeout
                )
            else:
                self._conn = imaplib.IMAP4(url.host, url.port, timeout=self.timeout)
                if "STARTTLS" in self._conn.capabilities:
                    self._conn.starttls(context)
                elif not is_loopback(url.host):
                    raise MailboxError(
                        f"{url.host} offers no STARTTLS: the password is never sent in clear "
                        "(use imaps://, or a server on loopback)"
                    )
            self._login()
            self._check(self._conn.select(quoted_folder(url.folder)), f"select {url.folder}")
            typ, data = self._conn.capability()
            if typ == "OK" and data and isinstance(data[0], bytes):
                self._capabilities = set(data[0].decode("ascii", "replace").upper().split())
        except MailboxError:
            self.close()
            raise
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            self.close()
            raise MailboxError(self._describe(exc, "connect and log in")) from exc

    def _login(self) -> None:
        assert self._conn is not None
        user, password = self.url.user, self._password
        try:
            if user.isascii() and password.isascii():
                self._conn.login(user, password)
            else:  # LOGIN is ASCII-only; SASL PLAIN carries UTF-8
                plain = f"\0{user}\0{password}".encode()
                self._conn.authenticate("PLAIN", lambda _challenge: plain)
        except imaplib.IMAP4.error as exc:
            if isinstance(exc, imaplib.IMAP4.abort):
                raise
            raise MailboxError(self._describe(exc, f"log in as {user}")) from exc

    def close(self) -> None:
        """Log out (quietly: the session is over either way)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError, EOFError):
            pass

    def unseen(self, limit: int = MAX_PER_POLL) -> list[str]:
        """UIDs of the messages not yet flagged \\Seen, oldest first, at most `limit`."""
        _, data = self._call("search for unseen messages", "SEARCH", "UNSEEN")
        uids = data[0].split() if data and isinstance(data[0], bytes) else []
        return [uid.decode("ascii") for uid in uids[:limit]]

    def fetch(self, uid: str) -> bytes | None:
        """The whole message, without flagging it \\Seen; None if it is gone meanwhile."""
        _, data = self._call("fetch a message", "FETCH", uid, "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1]
        return None

    def mark_seen(self, uid: str) -> None:
        """Flag a message \\Seen."""
        self._call("flag a message seen", "STORE", uid, "+FLAGS.SILENT", "(\\Seen)")

    def move(self, uid: str, folder: str) -> None:
        """Move a message to `folder` (created when missing): MOVE where the server has it,
        else COPY, \\Deleted and EXPUNGE (of that message alone where UIDPLUS allows)."""
        name = quoted_folder(folder)
        if folder not in self._created:
            assert self._conn is not None
            try:
                self._conn.create(name)  # NO when it exists already: fine
            except (imaplib.IMAP4.error, OSError, EOFError) as exc:
                raise MailboxError(self._describe(exc, f"create folder {folder}")) from exc
            self._created.add(folder)
        if "MOVE" in self._capabilities:
            self._call(f"move a message to {folder}", "MOVE", uid, name)
            return
        self._call(f"copy a message to {folder}", "COPY", uid, name)
        self._call("flag a message deleted", "STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
        if "UIDPLUS" in self._capabilities:
            self._call("expunge a message", "EXPUNGE", uid)
        else:
            assert self._conn is not None
            self._check(self._conn.expunge(), "expunge")

    def process(
        self,
        handle: Callable[[bytes], bool],
        *,
        move_to: str | None = None,
        limit: int = MAX_PER_POLL,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[int, int]:
        """Give every unseen message to `handle`, then flag it \\Seen, and move those it acted
        on (it returned True) to `move_to` when set. Returns (read, acted on).

        An exception from `handle` (the database is down) stops the poll before that message
        is flagged: it is read again next time.
        """
        read = acted = 0
        for uid in self.unseen(limit):
            if stop():
                break
            raw = self.fetch(uid)
            if raw is None:
                continue
            used = handle(raw)
            self.mark_seen(uid)
            read += 1
            if used:
                acted += 1
                if move_to:
                    self.move(uid, move_to)
        return read, acted

    # -- helpers -----------------------------------------------------------------------

    def _call(self, doing: str, command: str, *args: str) -> tuple[str, list[Any]]:
        if self._conn is None:
            raise MailboxError(f"{doing}: the mailbox is not open")
        try:
            result: tuple[str, list[Any]] = self._conn.uid(command, *args)
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            raise MailboxError(self._describe(exc, doing)) from exc
        return self._check(result, doing)

    def _check(self, result: tuple[str, list[Any]], doing: str) -> tuple[str, list[Any]]:
        typ, data = result
        if typ != "OK":
            detail = _text(data[-1]) if data else typ
            raise MailboxError(f"{self.url}: {doing}: the server said {typ} {detail}")
        return result

    def _describe(self, exc: BaseException, doing: str) -> str:
        """One line about `exc` for the log, the password blanked should it ever appear."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = f"TLS certificate not trusted: {exc.verify_message}"
        elif isinstance(exc, ssl.SSLError):
            reason = f"TLS failed: {exc.reason or exc}"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        elif isinstance(exc, EOFError):
            reason = "the server closed the connection"
        else:
            reason = _text(exc.args[0]) if exc.args else type(exc).__name__
        text = f"{self.url}: {doing}: {reason}"
        return text.replace(self._password, "***") if self._password else text


def read_new_messages(
    settings: BounceSettings,
    handle: Callable[[bytes], bool],
    *,
    stop: Callable[[], bool] = lambda: False,
    limit: int = MAX_PER_POLL,
) -> tuple[int, int]:
    """One poll of `[bounces] mailbox`: every unseen message goes to `handle` (see
    BounceMailbox.process). Returns (read, acted on). Raises MailboxError or ConfigError."""
    if not settings.mailbox:
        raise ConfigError("[bounces] mailbox is not set", key="mailbox")
    url = parse_mailbox_url(settings.mailbox)
    password = settings.read_password()
    if password is None:
        raise MailboxError(
            f"{url}: no password: set [bounces] password_file, ROBOT_BOUNCES_PASSWORD or "
            "the systemd credential bounces_password"
        )
    with BounceMailbox(url, password, ca_file=settings.ca_file) as box:
        return box.process(handle, move_to=settings.processed_folder, limit=limit, stop=stop)


def quoted_folder(folder: str) -> str:
    """A folder name as an IMAP quoted string, in modified UTF-7 (RFC 3501, 5.1.3)."""
    encoded: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            encoded.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in folder:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            encoded.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    text = "".join(encoded).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
