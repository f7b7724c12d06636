"""Bounces after acceptance: DSNs in a real IMAP mailbox (Dovecot on loopback) act on real rows.

The Dovecot server is started by the test set-up itself (tests/support/dovecot.py); if it cannot
start, these tests fail: they are never skipped.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import Engine

from robot.bounces.mailbox import BounceMailbox
from robot.config import load_settings, parse_mailbox_url
from robot.daemon.robot import Robot
from robot.logs import configure_logging
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.operations import Operations
from tests.conftest import WriteIni
from tests.integration.host import host_sql, now_plus_sql
from tests.support.dovecot import DovecotServer
from tests.support.smtpd import TestSMTPServer

DATA = Path(__file__).parents[2] / "data" / "dsn"
SAMPLE_ID = "<42.1f2e3d4c5b6a7980@example.org>"  # the Message-ID in the Postfix samples
SAMPLE_VERP = "bounces+42@example.org"


@pytest.fixture(scope="session")
def dovecot(tls_ca: trustme.CA) -> Iterator[DovecotServer]:
    """One Dovecot for the run: its own config, passwd-file users, Maildirs and ports."""
    server = DovecotServer(tls_ca)
    server.start()
    yield server
    server.stop()


class Mailbox:
    """A fresh mail user of the test server, and the robot.ini text that reads its INBOX."""

    def __init__(self, server: DovecotServer, tmp_path: Path) -> None:
        self.server = server
        self.user, self.password = server.add_user()
        self.password_file = tmp_path / "imap_password"
        self.password_file.write_text(self.password + "\n")

    def ini(
        self, *, starttls: bool = False, processed: str | None = "Processed", **keys: Any
    ) -> str:
        url = (
            f"imap://{self.user}@127.0.0.1:{self.server.imap_port}/INBOX"
            if starttls
            else f"imaps://{self.user}@127.0.0.1:{self.server.imaps_port}/INBOX"
        )
        values = {
            "mailbox": url,
            "password_file": str(self.password_file),
            "ca_file": str(self.server.ca_file),
            "poll_seconds": "60",
        }
        if processed:
            values["processed_folder"] = processed
        values |= {k: str(v) for k, v in keys.items()}
        return "[bounces]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())

    def deliver(self, message: bytes) -> None:
        self.server.append(self.user, self.password, message)

    def flags(self, folder: str = "INBOX") -> list[set[str]] | None:
        return self.server.flags(self.user, self.password, folder)


@pytest.fixture
def mailbox(dovecot: DovecotServer, tmp_path: Path) -> Mailbox:
    return Mailbox(dovecot, tmp_path)


class Logs:
    """The robot's JSON log lines, captured in memory."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        configure_logging("json", "debug", stream=self.stream)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.text.splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found


def sample(name: str, *replacements: tuple[str, str]) -> bytes:
    """A DSN sample of tests/data/dsn with some of its text replaced."""
    text = (DATA / name).read_text()
    for old, new in replacements:
        assert old in text, f"{old!r} is not in {name}"
        text = text.replace(old, new)
    return text.encode()


def insert_row(
    url: str, recipient: str, status: str = "sent", message_id: str | None = None
) -> tuple[int, str]:
    """A row as the robot leaves it after sending; its Message-ID is the robot's own form."""
    row_id = host_sql(
        url,
        "INSERT INTO outbox (recipient, subject, body_text, status, attempts, smtp_code, "
        f"smtp_reply, sent_at) VALUES (?, 'Parents evening', 'x', ?, 1, 250, '250 2.0.0 Ok', {now_plus_sql(url, 0)}) "
        "RETURNING id",
        [recipient, status],
    )[0][0]
    message_id = message_id or f"<{row_id}.{secrets.token_hex(8)}@example.org>"
    host_sql(url, "UPDATE outbox SET message_id = ? WHERE id = ?", [message_id, row_id])
    return row_id, message_id


def row(url: str, row_id: int) -> tuple[Any, ...]:
    return host_sql(
        url,
        "SELECT status, smtp_code, smtp_reply, last_error FROM outbox WHERE id = ?",
        [row_id],
    )[0]


def suppressed(url: str) -> list[tuple[Any, ...]]:
    return host_sql(url, "SELECT address, reason, outbox_id FROM suppression ORDER BY address")


def events(engine: Engine, row_id: int) -> list[tuple[str, int | None, str | None]]:
    history = Operations(engine, grace_seconds=0).history(row_id)
    return [(e.kind, e.smtp_code, e.detail) for e in history]


def sqlite_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/robot.db"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def robot_for(ini: Path) -> Robot:
    settings = load_settings(ini, environ={})
    return Robot(settings, make_engine(settings.database.url))


async def poll_once(robot: Robot) -> None:
    try:
        await robot.jobs.poll_bounces()
    finally:
        robot.db.close()
        robot.outbox.engine.dispose()


async def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- one poll ------------------------------------------------------------------------------


async def test_a_dsn_bounces_the_sent_row_suppresses_the_address_and_is_moved(
    db_url: str, engine: Engine, write_ini: WriteIni, mailbox: Mailbox
) -> None:
    row_id, message_id = insert_row(db_url, "Pat Nobody <Nobody@Example.NET>")
    mailbox.deliver(
        sample(
            "postfix-user-unknown.eml",
            (SAMPLE_ID, message_id),
            (SAMPLE_VERP, "robot@example.org"),  # no VERP: found by its Message-ID
        )
    )
    logs = Logs()
    await poll_once(robot_for(write_ini(db_url, extra=mailbox.ini())))

    status, code, reply, last_error = row(db_url, row_id)
    assert status == "bounced"
    assert code == 550
    assert reply.startswith("5.1.1 smtp; 550 5.1.1 <Nobody@Example.NET>: Recipient address")
    assert "Nobody@Example.NET: 5.1.1" in last_error
    assert "delivery status notification from mail.example.org" in last_error
    [(address, reason, outbox_id)] = suppressed(db_url)
    assert (address, outbox_id) == ("nobody@example.net", row_id)
    assert "delivery status notification" in reason and "5.1.1" in reason
    [(kind, event_code, detail)] = events(engine, row_id)
    assert (kind, event_code) == ("bounced", 550)
    assert detail is not None and "User unknown in virtual mailbox table" in detail
    assert mailbox.flags("INBOX") == []
    assert mailbox.flags("Processed") == [{"\\Seen"}]
    [bounced] = logs.events("message.bounced_after_delivery")
    assert bounced["id"] == row_id
    assert logs.events("bounces.read")[0]["acted_on"] == 1


async def test_a_delay_a_reply_and_an_auto_reply_change_nothing(
    db_url: str, engine: Engine, write_ini: WriteIni, mailbox: Mailbox
) -> None:
    row_id, message_id = insert_row(db_url, "parent@example.net")
    delayed_id = "<43.0a1b2c3d4e5f6071@example.org>"
    mailbox.deliver(sample("postfix-delayed.eml", (delayed_id, message_id)))
    mailbox.deliver(sample("human-reply.eml", (SAMPLE_ID, message_id)))
    mailbox.deliver(
        sample(
            "vacation-autoreply.eml",
            (SAMPLE_ID, message_id),
            (SAMPLE_VERP, f"bounces+{row_id}@example.org"),
        )
    )
    ini = write_ini(db_url, extra=mailbox.ini(starttls=True))  # imap:// upgraded by STARTTLS
    logs = Logs()
    await poll_once(robot_for(ini))

    assert row(db_url, row_id) == ("sent", 250, "250 2.0.0 Ok", None)
    assert suppressed(db_url) == []
    assert events(engine, row_id) == []
    assert mailbox.flags("INBOX") == [{"\\Seen"}] * 3  # read, flagged, left where they were
    assert mailbox.flags("Processed") is None  # nothing acted on: the folder was never made
    assert [e["acted_on"] for e in logs.events("bounces.read")] == [0]

    await poll_once(robot_for(ini))  # seen messages are not read again
    assert len(logs.events("bounces.read")) == 1
    assert logs.events("bounces.mailbox_unavailable") == []


async def test_verp_finds_the_row_and_a_row_not_sent_only_gets_an_event(
    db_url: str, engine: Engine, write_ini: WriteIni, mailbox: Mailbox
) -> None:
    verp_row, _ = insert_row(db_url, "gone@example.net")
    # The returned headers carry no Message-ID: only the VERP address names the row.
    no_message_id = f"Message-ID: {SAMPLE_ID}\n"
    mailbox.deliver(
        sample(
            "postfix-user-unknown.eml",
            (no_message_id, ""),
            (SAMPLE_VERP, f"bounces+{verp_row}@example.org"),
            ("Nobody@Example.NET", "gone@example.net"),
        )
    )
    # A row a host gave its own Message-ID, and that is not `sent` (retried meanwhile).
    pending_row, host_id = insert_row(
        db_url, "Held@Example.NET", "pending", "<custom-1@host.example>"
    )
    mailbox.deliver(
        sample(
            "postfix-user-unknown.eml",
            (SAMPLE_ID, host_id),
            (SAMPLE_VERP, "robot@example.org"),
            ("Nobody@Example.NET", "Held@Example.NET"),
        )
    )
    # A report about a message this robot never sent.
    mailbox.deliver(
        sample(
            "postfix-user-unknown.eml",
            (SAMPLE_ID, "<elsewhere@example.com>"),
            (SAMPLE_VERP, "x@example.com"),
        )
    )
    logs = Logs()
    await poll_once(robot_for(write_ini(db_url, extra=mailbox.ini(verp="true"))))

    assert row(db_url, verp_row)[:2] == ("bounced", 550)
    status, code, reply, last_error = row(db_url, pending_row)
    assert (status, code, reply, last_error) == ("pending", 250, "250 2.0.0 Ok", None)
    [(kind, _, detail)] = events(engine, pending_row)
    assert kind == "dsn" and detail is not None and "Held@Example.NET: 5.1.1" in detail
    assert [a for a, _, _ in suppressed(db_url)] == ["gone@example.net", "held@example.net"]
    assert mailbox.flags("Processed") == [{"\\Seen"}] * 2
    assert mailbox.flags("INBOX") == [{"\\Seen"}]  # the stranger's report stays, read
    [unmatched] = logs.events("bounce.unmatched")
    assert unmatched["message_id"] == "<elsewhere@example.com>"


# -- the daemon ----------------------------------------------------------------------------


async def test_the_daemon_polls_the_mailbox_when_it_starts(
    tmp_path: Path, write_ini: WriteIni, mailbox: Mailbox
) -> None:
    url = sqlite_db(tmp_path)
    row_id, message_id = insert_row(url, "nobody@example.net")
    mailbox.deliver(sample("postfix-user-unknown.eml", (SAMPLE_ID, message_id)))
    Logs()
    robot = robot_for(write_ini(url, extra=mailbox.ini()))
    task = asyncio.create_task(robot.run())
    try:
        await wait_until(lambda: row(url, row_id)[0] == "bounced")
    finally:
        robot.stop()
        assert await asyncio.wait_for(task, 20) == 0
        robot.outbox.engine.dispose()
    assert mailbox.flags("Processed") == [{"\\Seen"}]


async def test_a_wrong_password_logs_one_error_and_the_robot_carries_on(
    tmp_path: Path, write_ini: WriteIni, mailbox: Mailbox, smtp_server: TestSMTPServer
) -> None:
    url = sqlite_db(tmp_path)
    wrong = "Wr0ng-" + secrets.token_hex(6)
    mailbox.password_file.write_text(wrong + "\n")
    mailbox.deliver(sample("postfix-user-unknown.eml"))
    host_sql(
        url, "INSERT INTO outbox (recipient, subject, body_text) VALUES ('a@example.org', 's', 'b')"
    )
    logs = Logs()
    robot = robot_for(write_ini(url, smtp_server.port, extra=mailbox.ini()))
    task = asyncio.create_task(robot.run())
    try:
        await wait_until(
            lambda: (
                bool(logs.events("bounces.mailbox_unavailable"))
                and host_sql(url, "SELECT status FROM outbox")[0][0] == "sent"
            )
        )
    finally:
        robot.stop()
        assert await asyncio.wait_for(task, 20) == 0
        robot.outbox.engine.dispose()
    [error] = logs.events("bounces.mailbox_unavailable")
    assert error["level"] == "error"
    assert f"log in as {mailbox.user}" in error["error"]
    assert "AUTHENTICATIONFAILED" in error["error"]
    assert wrong not in logs.text and mailbox.password not in logs.text
    assert mailbox.flags("INBOX") == [set()]  # not read: still new for the next poll
    assert len(smtp_server.received) == 1


@pytest.mark.parametrize("problem", ["closed port", "untrusted certificate", "no password"])
async def test_an_unreachable_mailbox_logs_one_clear_error(
    problem: str, tmp_path: Path, write_ini: WriteIni, dovecot: DovecotServer, mailbox: Mailbox
) -> None:
    url = f"sqlite:///{tmp_path}/robot.db"
    if problem == "closed port":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        extra = mailbox.ini().replace(f":{dovecot.imaps_port}/", f":{port}/")
        expected = "Connection refused"
    elif problem == "untrusted certificate":
        extra = mailbox.ini(ca_file="")  # the system's CAs do not know the test CA
        expected = "TLS certificate not trusted"
    else:
        extra = mailbox.ini(password_file="")
        expected = "no password"
    logs = Logs()
    await poll_once(robot_for(write_ini(url, extra=extra)))
    [error] = logs.events("bounces.mailbox_unavailable")
    assert expected in error["error"]
    assert f"imaps://{mailbox.user}@127.0.0.1:" in error["error"]
    assert mailbox.password not in logs.text


# -- the IMAP client alone -------------------------------------------------------------------


async def test_without_move_a_message_is_copied_and_only_it_expunged(
    dovecot: DovecotServer, mailbox: Mailbox
) -> None:
    """Servers without MOVE (RFC 6851): COPY, \\Deleted, then UID EXPUNGE of that message
    alone, so that a message someone else flagged \\Deleted is not expunged with it."""
    conn = dovecot.client(mailbox.user, mailbox.password)
    try:
        typ, _ = conn.append("INBOX", "(\\Deleted \\Seen)", None, b"Subject: keep\r\n\r\nx\r\n")
        assert typ == "OK"
    finally:
        conn.logout()
    mailbox.deliver(sample("postfix-user-unknown.eml"))
    folder = "Erledigt/Rückläufer"
    url = parse_mailbox_url(f"imaps://{mailbox.user}@127.0.0.1:{dovecot.imaps_port}/INBOX")
    box = BounceMailbox(url, mailbox.password, ca_file=str(dovecot.ca_file))
    handled: list[bytes] = []

    def handle(raw: bytes) -> bool:
        handled.append(raw)
        return True

    def session() -> tuple[int, int]:
        with box:
            assert "MOVE" in box._capabilities and "UIDPLUS" in box._capabilities
            box._capabilities.discard("MOVE")
            return box.process(handle, move_to=folder)

    assert await asyncio.to_thread(session) == (1, 1)
    assert b"Undelivered Mail Returned to Sender" in handled[0]
    assert mailbox.flags("INBOX") == [{"\\Deleted", "\\Seen"}]  # the other one is still there
    assert mailbox.flags("Erledigt/R&APw-ckl&AOQ-ufer") == [{"\\Seen"}]
