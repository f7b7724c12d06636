"""Self-tests for the test-support servers (SMTP test server, PostgreSQL cluster) and the sink."""

from __future__ import annotations

import asyncio
import io
import mailbox
import ssl
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import aiosmtplib
import psycopg
import pytest
import trustme

from robot.cli.sink import serve_sink
from tests.support.pg import PgCluster
from tests.support.smtpd import NO_REPLY, TestSMTPServer


def make_message(subject: str = "hello", to: str = "alice@example.org") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "robot@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<test-1@example.com>"
    msg.set_content("body text\n")
    return msg


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
async def smtpd() -> AsyncIterator[TestSMTPServer]:
    server = TestSMTPServer()
    await server.start()
    yield server
    await server.stop()


# -- TestSMTPServer -----------------------------------------------------------------------


async def test_plain_delivery_is_recorded(smtpd: TestSMTPServer) -> None:
    await aiosmtplib.send(
        make_message("Grüße"), hostname=smtpd.host, port=smtpd.port, local_hostname="client.test"
    )
    await smtpd.wait_for(1)
    (got,) = smtpd.received
    assert got.mail_from == "robot@example.com"
    assert got.rcpt_tos == ["alice@example.org"]
    assert got.helo == "client.test"
    assert got.session_id == 0
    assert got.peer[0] == "127.0.0.1"
    assert got.message()["Subject"] == "Grüße"
    assert b"body text" in got.data
    assert smtpd.helos == ["client.test"]
    assert smtpd.connections == 1


async def test_starttls_with_verified_certificate(
    ca: trustme.CA, client_tls: ssl.SSLContext
) -> None:
    server = TestSMTPServer(tls_cert=ca.issue_cert("127.0.0.1", "localhost"), require_starttls=True)
    await server.start()
    try:
        await aiosmtplib.send(
            make_message(),
            hostname=server.host,
            port=server.port,
            start_tls=True,
            tls_context=client_tls,
            local_hostname="tls.test",
        )
        assert len(server.received) == 1
        assert server.helos == ["tls.test", "tls.test"]  # EHLO is repeated after STARTTLS
        with pytest.raises(aiosmtplib.SMTPResponseException) as excinfo:
            await aiosmtplib.send(
                make_message(), hostname=server.host, port=server.port, start_tls=False
            )
        assert excinfo.value.code == 530
    finally:
        await server.stop()


async def test_starttls_untrusted_certificate_fails(ca: trustme.CA) -> None:
    server = TestSMTPServer(tls_cert=ca.issue_cert("127.0.0.1"))
    await server.start()
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await aiosmtplib.send(
                make_message(),
                hostname=server.host,
                port=server.port,
                start_tls=True,
                tls_context=ssl.create_default_context(),
            )
        assert server.received == []
    finally:
        await server.stop()


async def test_implicit_tls(ca: trustme.CA, client_tls: ssl.SSLContext) -> None:
    server = TestSMTPServer(tls_cert=ca.issue_cert("127.0.0.1"), implicit_tls=True)
    await server.start()
    try:
        await aiosmtplib.send(
            make_message(),
            hostname=server.host,
            port=server.port,
            use_tls=True,
            tls_context=client_tls,
        )
        assert len(server.received) == 1
    finally:
        await server.stop()


async def test_auth_accepted_and_refused() -> None:
    server = TestSMTPServer(auth={"robot": "s3cret"})
    await server.start()
    try:
        await aiosmtplib.send(
            make_message(),
            hostname=server.host,
            port=server.port,
            username="robot",
            password="s3cret",
        )
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as excinfo:
            await aiosmtplib.send(
                make_message(),
                hostname=server.host,
                port=server.port,
                username="robot",
                password="wrong",
            )
        assert excinfo.value.code == 535
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await aiosmtplib.send(make_message(), hostname=server.host, port=server.port)
        assert refused.value.code == 530  # AUTH is required
        # aiosmtplib falls back from one mechanism to the next, so each may be tried once
        first, *refused_attempts = server.auth_attempts
        assert first == ("robot", True)
        assert refused_attempts and set(refused_attempts) == {("robot", False)}
        assert len(server.received) == 1
    finally:
        await server.stop()


async def test_auth_not_advertised_without_credentials(
    smtpd: TestSMTPServer,
) -> None:
    async with aiosmtplib.SMTP(hostname=smtpd.host, port=smtpd.port) as client:
        assert not client.supports_extension("auth")


async def test_rcpt_reply_rejects_one_recipient(smtpd: TestSMTPServer) -> None:
    smtpd.rcpt_replies["bob@example.org"] = "550 5.1.1 No such user"
    errors, _ = await aiosmtplib.send(
        make_message(),
        recipients=["alice@example.org", "Bob@Example.org"],
        hostname=smtpd.host,
        port=smtpd.port,
    )
    assert list(errors) == ["Bob@Example.org"]
    assert errors["Bob@Example.org"].code == 550
    assert "No such user" in errors["Bob@Example.org"].message
    assert smtpd.received[0].rcpt_tos == ["alice@example.org"]


async def test_mail_reply(smtpd: TestSMTPServer) -> None:
    smtpd.mail_reply = "553 5.7.1 Sender not allowed"
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as excinfo:
        await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
    assert excinfo.value.code == 553
    assert smtpd.received == []


async def test_data_replies_are_consumed_in_order(smtpd: TestSMTPServer) -> None:
    smtpd.data_replies[:] = ["451 4.3.0 try later", "554 5.7.1 spam"]
    for code in (451, 554):
        with pytest.raises(aiosmtplib.SMTPDataError) as excinfo:
            await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
        assert excinfo.value.code == code
    await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
    assert len(smtpd.received) == 1
    assert smtpd.data_replies == []


async def test_drop_during_data(smtpd: TestSMTPServer) -> None:
    smtpd.drop_after_data_count = 1
    await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
    assert len(smtpd.received) == 1
    assert smtpd.drop_after_data_count is None  # one-shot
    await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
    assert [r.session_id for r in smtpd.received] == [0, 2]
    assert smtpd.connections == 3


async def test_session_ids_and_connection_count(smtpd: TestSMTPServer) -> None:
    async with aiosmtplib.SMTP(hostname=smtpd.host, port=smtpd.port) as client:
        await client.send_message(make_message("one"))
        await client.send_message(make_message("two"))
    async with aiosmtplib.SMTP(hostname=smtpd.host, port=smtpd.port) as client:
        await client.send_message(make_message("three"))
    assert [(r.session_id, r.message()["Subject"]) for r in smtpd.received] == [
        (0, "one"),
        (0, "two"),
        (1, "three"),
    ]
    assert smtpd.connections == 2


async def test_data_delay_causes_client_timeout(smtpd: TestSMTPServer) -> None:
    smtpd.data_delay = 5
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port, timeout=0.3)
    assert smtpd.received == []


async def test_wait_for_times_out(smtpd: TestSMTPServer) -> None:
    with pytest.raises(TimeoutError):
        await smtpd.wait_for(1, timeout=0.1)


async def test_stop_closes_open_client_connections() -> None:
    server = TestSMTPServer()
    await server.start()
    client = aiosmtplib.SMTP(hostname=server.host, port=server.port)
    await client.connect()
    await client.ehlo()
    await server.stop()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()


# -- TestSMTPServer.fault() ----------------------------------------------------------------


async def _read_reply(reader: asyncio.StreamReader) -> str:
    """One (possibly multi-line) reply; returns its last line, or '' at end of stream."""
    while True:
        line = (await asyncio.wait_for(reader.readline(), 10)).decode()
        if not line or line[3:4] != "-":
            return line.rstrip("\r\n")


async def _raw_dialogue(server: TestSMTPServer, *commands: str) -> tuple[list[str], bool]:
    """Send commands one by one over a bare socket; the replies, and whether the server
    closed the connection after the last one (without being asked to)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        replies = [await _read_reply(reader)]  # greeting
        for command in commands:
            writer.write(command.encode() + b"\r\n")
            replies.append(await _read_reply(reader))
        closed = await asyncio.wait_for(reader.read(), 10) == b""
        return replies, closed
    finally:
        writer.close()


async def test_fault_replies_per_command_and_address(smtpd: TestSMTPServer) -> None:
    refuse_bob = smtpd.fault("rcpt", "550 5.1.1 No such user", address="Bob@example.org")
    busy_once = smtpd.fault("MAIL", "451 4.3.2 Busy", times=1)
    spam = smtpd.fault("DATA", "554 5.7.1 Spam", address="carol@example.org")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as mail_refused:
        await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
    assert mail_refused.value.code == 451
    errors, _ = await aiosmtplib.send(
        make_message(),
        recipients=["alice@example.org", "bob@example.org"],
        hostname=smtpd.host,
        port=smtpd.port,
    )
    assert list(errors) == ["bob@example.org"] and errors["bob@example.org"].code == 550
    with pytest.raises(aiosmtplib.SMTPDataError) as data_refused:
        await aiosmtplib.send(
            make_message(),
            recipients=["alice@example.org", "carol@example.org"],
            hostname=smtpd.host,
            port=smtpd.port,
        )
    assert data_refused.value.code == 554
    assert (busy_once.fired, refuse_bob.fired, spam.fired) == (1, 1, 1)
    assert [r.rcpt_tos for r in smtpd.received] == [["alice@example.org"]]
    assert [(t.rcpt_tos, t.reply) for t in smtpd.transactions] == [
        (["alice@example.org"], "250 OK"),
        (["alice@example.org", "carol@example.org"], "554 5.7.1 Spam"),
    ]


async def test_fault_rules_count_down_and_first_match_wins(smtpd: TestSMTPServer) -> None:
    smtpd.fault("DATA", "452 4.3.1 Full", times=2)
    smtpd.fault("DATA", "554 5.7.1 never reached while the first rule applies", times=1)
    codes = []
    for _ in range(4):
        try:
            await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
            codes.append(250)
        except aiosmtplib.SMTPDataError as exc:
            codes.append(exc.code)
    assert codes == [452, 452, 554, 250]
    assert [f.fired for f in smtpd.faults] == [2, 1]
    with pytest.raises(ValueError, match="unknown command"):
        smtpd.fault("QUIT", "221 bye")


@pytest.mark.parametrize(
    ("command", "fault_address", "commands"),
    [
        ("EHLO", None, ["EHLO client.test"]),
        ("MAIL", None, ["EHLO client.test", "MAIL FROM:<robot@example.com>"]),
        (
            "RCPT",
            "b@example.org",
            [
                "EHLO client.test",
                "MAIL FROM:<robot@example.com>",
                "RCPT TO:<a@example.org>",
                "RCPT TO:<b@example.org>",
            ],
        ),
        (
            "DATA",
            None,
            [
                "EHLO client.test",
                "MAIL FROM:<robot@example.com>",
                "RCPT TO:<a@example.org>",
                "DATA",
                "Subject: x\r\n\r\nbody\r\n.",
            ],
        ),
    ],
)
async def test_fault_421_replies_then_closes(
    smtpd: TestSMTPServer, command: str, fault_address: str | None, commands: list[str]
) -> None:
    smtpd.fault(command, "421 4.7.0 Too busy, closing", address=fault_address)
    replies, closed = await _raw_dialogue(smtpd, *commands)
    assert replies[-1] == "421 4.7.0 Too busy, closing"
    assert all(r.startswith(("2", "3")) for r in replies[:-1]), replies
    assert closed
    assert smtpd.received == []


async def test_without_421_the_connection_stays_open(smtpd: TestSMTPServer) -> None:
    smtpd.fault("RCPT", "450 4.2.0 Mailbox busy")
    replies, closed = await _raw_dialogue(
        smtpd, "EHLO client.test", "MAIL FROM:<r@example.com>", "RCPT TO:<a@example.org>", "QUIT"
    )
    assert replies[-2:] == ["450 4.2.0 Mailbox busy", "221 Bye"]
    assert closed  # after QUIT only


async def test_fault_delay_outlasts_the_client_timeout(smtpd: TestSMTPServer) -> None:
    slow = smtpd.fault("RCPT", delay=30, times=1)  # normal reply, but far too late
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port, timeout=0.5)
    assert slow.fired == 1
    await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port, timeout=10)
    assert len(smtpd.received) == 1


async def test_fault_delay_on_data_records_the_unanswered_message(smtpd: TestSMTPServer) -> None:
    smtpd.fault("DATA", delay=30, address="alice@example.org")
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port, timeout=0.5)
    (seen,) = smtpd.transactions
    assert seen.reply == NO_REPLY
    assert seen.message()["Message-ID"] == "<test-1@example.com>"
    assert smtpd.received == []


async def test_fault_drop_per_address(smtpd: TestSMTPServer) -> None:
    smtpd.fault("DATA", address="bob@example.org", drop=True, times=1)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await aiosmtplib.send(
            make_message(), recipients=["bob@example.org"], hostname=smtpd.host, port=smtpd.port
        )
    await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)
    await aiosmtplib.send(
        make_message(), recipients=["bob@example.org"], hostname=smtpd.host, port=smtpd.port
    )
    assert [r.rcpt_tos for r in smtpd.received] == [["alice@example.org"], ["bob@example.org"]]
    assert [t.reply for t in smtpd.transactions] == [NO_REPLY, "250 OK", "250 OK"]
    smtpd.fault("MAIL", drop=True)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await aiosmtplib.send(make_message(), hostname=smtpd.host, port=smtpd.port)


async def test_fault_on_auth() -> None:
    server = TestSMTPServer(auth={"robot": "s3cret"})
    await server.start()
    try:
        rule = server.fault("AUTH", "454 4.7.0 Temporary authentication failure")
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as excinfo:
            await aiosmtplib.send(
                make_message(),
                hostname=server.host,
                port=server.port,
                username="robot",
                password="s3cret",
            )
        assert excinfo.value.code == 454
        assert rule.fired >= 1
        assert server.auth_attempts == []  # the password was never checked
        server.faults.clear()
        await aiosmtplib.send(
            make_message(),
            hostname=server.host,
            port=server.port,
            username="robot",
            password="s3cret",
        )
        assert server.auth_attempts == [("robot", True)]
    finally:
        await server.stop()


# -- robot.cli.sink ---------------------------------------------------------------------------


async def _wait_for_text(out: io.StringIO, needle: str, timeout: float = 5) -> str:
    async with asyncio.timeout(timeout):
        while needle not in out.getvalue():
            await asyncio.sleep(0.01)
    return out.getvalue()


async def test_sink_prints_and_stores_in_maildir(tmp_path: Path) -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    maildir = tmp_path / "Maildir"
    task = asyncio.create_task(serve_sink("127.0.0.1", 0, maildir, out, stop))
    try:
        text = await _wait_for_text(out, "sink listening on ")
        first = text.splitlines()[0]
        assert first.endswith(f" maildir={maildir}")
        port = int(first.split()[3].rsplit(":", 1)[1])

        message = make_message("Grüße aus dem Test", to="bob@example.org")
        await aiosmtplib.send(
            message,
            recipients=["bob@example.org", "carol@example.org"],
            hostname="127.0.0.1",
            port=port,
        )
        line = (await _wait_for_text(out, "received ")).splitlines()[1]
        assert line.startswith("received ")
        assert " from=robot@example.com to=bob@example.org,carol@example.org " in line
        assert " subject=Grüße aus dem Test " in line
        assert " message-id=<test-1@example.com> " in line
        assert int(line.rsplit("size=", 1)[1]) > 0

        box = mailbox.Maildir(maildir, create=False)
        (key,) = box.keys()
        stored = BytesParser(policy=default_policy).parsebytes(box.get_bytes(key))
        assert stored["Subject"] == "Grüße aus dem Test"
        assert stored["Message-ID"] == "<test-1@example.com>"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_sink_without_maildir_accepts_auth() -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(serve_sink("127.0.0.1", 0, None, out, stop))
    try:
        first = (await _wait_for_text(out, "sink listening on ")).splitlines()[0]
        assert "maildir=" not in first
        port = int(first.rsplit(":", 1)[1])
        idle = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await idle.connect()  # left open: stopping the sink must close it
        await aiosmtplib.send(
            make_message(), hostname="127.0.0.1", port=port, username="any", password="thing"
        )
        await _wait_for_text(out, "received ")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await idle.noop()
    idle.close()


# -- PgCluster ----------------------------------------------------------------------------


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    cluster = PgCluster()
    cluster.start()
    yield cluster
    base = cluster.base_dir
    cluster.stop()
    assert not base.exists()


@pytest.mark.postgres
def test_pg_cluster_databases(pg: PgCluster) -> None:
    assert pg.url() == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/postgres"
    url = pg.create_database("support_selftest")
    assert url.endswith("/support_selftest")
    with psycopg.connect(_libpq(url)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (42)")
    copy_url = pg.create_database("support_selftest_copy", template="support_selftest")
    with psycopg.connect(_libpq(copy_url)) as conn:
        assert conn.execute("select x from t").fetchone() == (42,)
        enc = conn.execute(
            "select pg_encoding_to_char(encoding) from pg_database "
            "where datname = current_database()"
        ).fetchone()
        assert enc == ("UTF8",)
    pg.drop_database("support_selftest_copy")
    pg.drop_database("support_selftest")
    pg.drop_database("support_selftest")  # idempotent
    with psycopg.connect(_libpq(pg.url())) as conn:
        names = {r[0] for r in conn.execute("select datname from pg_database")}
    assert "support_selftest" not in names


@pytest.mark.postgres
def test_pg_cluster_restart_breaks_existing_connections(pg: PgCluster) -> None:
    port = pg.port
    conn = psycopg.connect(_libpq(pg.url()), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        pg.restart()
        assert pg.port == port
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()
    with psycopg.connect(_libpq(pg.url())) as fresh:
        assert fresh.execute("select 1").fetchone() == (1,)
