"""The main path end to end: plain SQL INSERTs, the robot, a real SMTP server on a socket."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import Engine

from robot.config import load_settings
from robot.daemon.robot import Robot
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.operations import Operations
from tests.conftest import WriteIni
from tests.integration.host import host_sql, now_plus_sql
from tests.integration.robot_run import drain
from tests.support.smtpd import TestSMTPServer


def rows(url: str, where: str = "1=1") -> list[tuple[Any, ...]]:
    return host_sql(
        url,
        "SELECT id, status, attempts, smtp_code, message_id, last_error, next_attempt_at "
        f"FROM outbox WHERE {where} ORDER BY id",
    )


async def test_host_rows_are_sent_with_their_message_id(
    db_url: str, engine: Engine, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, subject, body_text, cc, bcc) VALUES (?, ?, ?, ?, ?)",
        [
            "Alice <alice@example.org>",
            "Ballot notice",
            "Your ballot",
            "c@example.org",
            "b@example.org",
        ],
    )
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, subject, body_html) VALUES (?, ?, ?)",
        ["bob@example.org", "Grüße", "<p>Hello <a href='https://example.org/x'>here</a></p>"],
    )
    code, _ = await drain(write_ini(db_url, smtp_server.port))
    assert code == 0
    assert len(smtp_server.received) == 2
    table = rows(db_url)
    assert [r[1] for r in table] == ["sent", "sent"]
    assert [r[3] for r in table] == [250, 250]
    by_id = {r[4]: r for r in table}
    for received in smtp_server.received:
        message = received.message()
        assert message["Message-ID"] in by_id
        assert received.helo == "robot.test.example"
        assert received.mail_from == "robot@example.org"
    first = next(r for r in smtp_server.received if r.message()["Subject"] == "Ballot notice")
    assert sorted(first.rcpt_tos) == ["alice@example.org", "b@example.org", "c@example.org"]
    assert "Bcc" not in first.message()
    assert first.message()["From"] == "Test Robot <robot@example.org>"
    html_only = next(r for r in smtp_server.received if r.message()["Subject"] == "Grüße").message()
    assert html_only.get_content_type() == "multipart/alternative"
    plain = html_only.get_body(("plain",))
    assert plain is not None
    text = plain.get_content()
    assert "here (https://example.org/x)" in text
    kinds = [e.kind for e in Operations(engine, grace_seconds=0).history(table[0][0])]
    assert kinds == ["claimed", "sent"]


async def test_grace_delay_keeps_fresh_rows_and_priority_orders_the_rest(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    past = now_plus_sql(db_url, -600)
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, subject, body_text) VALUES ('fresh@example.org', 'fresh', 'x')",
    )
    for subject, priority in (("low", 0), ("high", 9), ("mid", 5)):
        host_sql(
            db_url,
            f"INSERT INTO outbox (recipient, subject, body_text, priority, created_at) "
            f"VALUES ('p@example.org', '{subject}', 'x', {priority}, {past})",
        )
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, subject, body_text, created_at, send_after) "
        f"VALUES ('s@example.org', 'scheduled', 'x', {past}, {now_plus_sql(db_url, 3600)})",
    )
    ini = write_ini(db_url, smtp_server.port, "[robot]\ngrace_minutes = 5\nconnections = 1\n")
    code, _ = await drain(ini)
    assert code == 0
    assert [r.message()["Subject"] for r in smtp_server.received] == ["high", "mid", "low"]
    waiting = host_sql(
        db_url, "SELECT subject, status FROM outbox WHERE status = 'pending' ORDER BY id"
    )
    assert waiting == [("fresh", "pending"), ("scheduled", "pending")]


async def test_max_per_connection_reconnects_with_helo_name(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    for n in range(10):
        host_sql(
            db_url, f"INSERT INTO outbox (recipient, body_text) VALUES ('r{n}@example.org', 'x')"
        )
    ini = write_ini(
        db_url, smtp_server.port, "[smtp]\nmax_per_connection = 3\n[robot]\nconnections = 2\n"
    )
    code, _ = await drain(ini)
    assert code == 0
    assert len(smtp_server.received) == 10
    assert smtp_server.connections >= 4
    per_session: dict[int, int] = {}
    for received in smtp_server.received:
        per_session[received.session_id] = per_session.get(received.session_id, 0) + 1
    assert max(per_session.values()) <= 3
    assert set(smtp_server.helos) == {"robot.test.example"}
    assert [r[1] for r in rows(db_url)] == ["sent"] * 10


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
async def test_a_pipelining_server_gets_a_body_and_the_next_envelope_in_one_write(
    db_url: str, write_ini: WriteIni, pipelining: bool
) -> None:
    """One round trip a message (RFC 2920 §3.1): the body, its final dot and the next
    message's MAIL, RCPT and DATA arrive in one read; never an envelope for a message the
    connection does not carry (the last before max_per_connection). Without PIPELINING,
    one command a write."""
    server = TestSMTPServer(pipelining=pipelining)
    await server.start()
    try:
        for n in range(10):
            host_sql(
                db_url, f"INSERT INTO outbox (recipient, body_text) VALUES ('r{n}@x.org', 'x')"
            )
        extra = "[smtp]\nmax_per_connection = 4\n[robot]\nconnections = 1\n"
        code, _ = await drain(write_ini(db_url, server.port, extra))
    finally:
        await server.stop()
    assert code == 0
    assert [r[1] for r in rows(db_url)] == ["sent"] * 10
    carried = Counter(r.session_id for r in server.received)
    assert sorted(carried.values()) == [2, 4, 4]
    for session, chunks in server.reads.items():
        messages = carried[session]
        assert sum(chunk.count(b"MAIL FROM:") for chunk in chunks) == messages
        body_then_envelope = [c for c in chunks if b"\r\n.\r\nMAIL FROM:" in c]
        if pipelining:  # EHLO, the first envelope, each body with the next envelope, QUIT
            assert len(body_then_envelope) == messages - 1
            assert len(chunks) == messages + 3, chunks
        else:  # EHLO, MAIL, RCPT, DATA and the body for each message, QUIT
            assert body_then_envelope == []
            assert len(chunks) == 4 * messages + 2, chunks


async def test_a_stop_releases_the_next_row_whose_envelope_went_ahead(
    db_url: str, write_ini: WriteIni
) -> None:
    """Stopping, the robot finishes the message on the wire and gives the next one back
    untried, though the server took its envelope: the connection is dropped in that DATA
    (no QUIT, no ".": the server delivers nothing)."""
    server = TestSMTPServer()
    await server.start()
    server.fault("DATA", delay=0.5, times=1)  # the reply to the first body comes late
    for n in range(4):
        host_sql(db_url, f"INSERT INTO outbox (recipient, body_text) VALUES ('r{n}@x.org', 'x')")
    ini = write_ini(db_url, server.port, "[robot]\nconnections = 1\n")
    settings = load_settings(ini, environ={})
    engine = make_engine(db_url)
    try:
        robot = Robot(settings, engine)
        running = asyncio.create_task(robot.run())
        async with asyncio.timeout(15):
            while not server.transactions:  # the first body came, its reply waits: stop
                await asyncio.sleep(0.01)
        robot.stop()
        assert await asyncio.wait_for(running, 20) == 0
    finally:
        engine.dispose()
        await server.stop()
    assert [r.rcpt_tos for r in server.received] == [["r0@x.org"]]
    (reads,) = server.reads.values()
    assert b"RCPT TO:<r1@x.org>" in b"".join(reads)  # its envelope went ahead
    assert b"QUIT" not in b"".join(reads)
    table = rows(db_url)
    assert [(r[1], r[2]) for r in table] == [("sent", 1)] + [("pending", 0)] * 3


async def test_a_connection_sends_on_while_an_outcome_commits_and_waits_for_it_next(
    tmp_path: Path, write_ini: WriteIni
) -> None:
    """An outcome is committed while the next message goes out; the one after that waits
    for the commit. With the database locked, one connection sends exactly two messages:
    at most two are unrecorded, all that a crash may repeat."""
    url = f"sqlite:///{tmp_path}/robot.db"
    engine = make_engine(url)
    upgrade(engine)
    server = TestSMTPServer()
    await server.start()
    server.fault("DATA", delay=0.3, times=1)  # time to lock the database meanwhile
    for n in range(5):
        host_sql(url, f"INSERT INTO outbox (recipient, body_text) VALUES ('r{n}@x.org', 'x')")
    ini = write_ini(url, server.port, "[robot]\nconnections = 1\n")
    locker = sqlite3.connect(
        tmp_path / "robot.db", timeout=30, isolation_level=None, check_same_thread=False
    )
    try:
        robot = Robot(load_settings(ini, environ={}), engine, drain=True)
        running = asyncio.create_task(robot.run())
        async with asyncio.timeout(15):
            while not server.transactions:  # the first body came, its reply waits
                await asyncio.sleep(0.01)
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        await server.wait_for(2, timeout=15)
        await asyncio.sleep(0.5)  # the third body would come now if nothing held it back
        locked = [r.rcpt_tos for r in server.received]
        locker.execute("ROLLBACK")
        assert await asyncio.wait_for(running, 30) == 0
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
        engine.dispose()
        await server.stop()
    assert locked == [["r0@x.org"], ["r1@x.org"]]
    assert [r.rcpt_tos for r in server.received] == [[f"r{n}@x.org"] for n in range(5)]
    assert [r[1] for r in rows(url)] == ["sent"] * 5


async def test_starttls_verified_and_auth(
    db_url: str, write_ini: WriteIni, tls_ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    server = TestSMTPServer(
        tls_cert=tls_ca.issue_cert("127.0.0.1", "localhost"),
        require_starttls=True,
        auth={"robot": "s3cret-pw"},
    )
    await server.start()
    try:
        secret = tmp_path / "pw"
        secret.write_text("s3cret-pw\n")
        ini = write_ini(
            db_url,
            server.port,
            f"[smtp]\nsecurity = starttls\nca_file = {ca_file}\nusername = robot\n"
            f"password_file = {secret}\n",
        )
        host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@example.org', 'x')")
        code, events = await drain(ini)
    finally:
        await server.stop()
    assert code == 0
    assert len(server.received) == 1
    assert ("robot", True) in server.auth_attempts
    assert "s3cret-pw" not in str(events)


async def test_untrusted_certificate_is_a_transport_fault(
    db_url: str, write_ini: WriteIni, tls_ca: trustme.CA
) -> None:
    server = TestSMTPServer(tls_cert=tls_ca.issue_cert("127.0.0.1"), require_starttls=True)
    await server.start()
    try:
        ini = write_ini(db_url, server.port, "[smtp]\nsecurity = starttls\n")  # no ca_file
        host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@example.org', 'x')")
        code, events = await drain(ini)
    finally:
        await server.stop()
    assert code == 1
    assert server.received == []
    faults = [e for e in events if e["event"] == "account.fault"]
    assert faults and "TLS" in faults[0]["reason"]
    assert rows(db_url)[0][1:3] == ("pending", 0)  # no attempt burnt


async def test_refused_login_keeps_rows_pending_and_never_logs_the_password(
    db_url: str, write_ini: WriteIni, tls_ca: trustme.CA, ca_file: Path
) -> None:
    server = TestSMTPServer(
        tls_cert=tls_ca.issue_cert("127.0.0.1"), require_starttls=True, auth={"robot": "right"}
    )
    await server.start()
    try:
        ini = write_ini(
            db_url,
            server.port,
            f"[smtp]\nsecurity = starttls\nca_file = {ca_file}\nusername = robot\n"
            "password = wrong-password-123\n",
        )
        host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@example.org', 'x')")
        code, events = await drain(ini)
    finally:
        await server.stop()
    assert code == 1
    assert ("robot", False) in server.auth_attempts
    assert rows(db_url)[0][1:3] == ("pending", 0)
    assert "wrong-password-123" not in str(events)
    assert any(e["event"] == "account.fault" and "refused the login" in e["reason"] for e in events)


async def test_connection_refused_is_a_transport_fault(db_url: str, write_ini: WriteIni) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nobody listens there
    host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@example.org', 'x')")
    code, events = await drain(write_ini(db_url, port))
    assert code == 1
    assert rows(db_url)[0][1:3] == ("pending", 0)
    assert any("connection refused" in e.get("reason", "") for e in events)


async def test_replies_decide_the_status(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    smtp_server.rcpt_replies = {"gone@example.org": "550 5.1.1 No such user"}
    for recipient in ("gone@example.org", "ok@example.org"):
        host_sql(db_url, f"INSERT INTO outbox (recipient, body_text) VALUES ('{recipient}', 'x')")
    ini = write_ini(db_url, smtp_server.port, "[robot]\nconnections = 1\n")
    code, _ = await drain(ini)
    assert code == 0
    table = {r[0]: r for r in rows(db_url)}
    assert table[1][1] == "bounced"
    assert "5.1.1" in table[1][5]
    assert table[2][1] == "sent"
    assert host_sql(db_url, "SELECT address FROM suppression") == [("gone@example.org",)]


async def test_temporary_and_permanent_data_replies(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    smtp_server.data_replies = ["451 4.3.0 try later", "554 5.7.1 rejected as spam"]
    for n in range(3):
        host_sql(
            db_url, f"INSERT INTO outbox (recipient, body_text) VALUES ('r{n}@example.org', 'x')"
        )
    ini = write_ini(db_url, smtp_server.port, "[robot]\nconnections = 1\n")
    code, _ = await drain(ini)
    assert code == 0
    table = rows(db_url)
    assert [r[1] for r in table] == ["deferred", "failed", "sent"]
    assert table[0][6] is not None  # next_attempt_at set for the retry
    assert "451" in table[0][5] and "554" in table[1][5]


async def test_dropped_connection_defers_one_row_and_the_rest_go_on(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    smtp_server.drop_after_data_count = 2
    for n in range(5):
        host_sql(
            db_url, f"INSERT INTO outbox (recipient, body_text) VALUES ('r{n}@example.org', 'x')"
        )
    ini = write_ini(db_url, smtp_server.port, "[robot]\nconnections = 1\n")
    code, _ = await drain(ini)
    assert code == 0
    statuses = [r[1] for r in rows(db_url)]
    assert statuses.count("sent") == 4
    assert statuses.count("deferred") == 1
    assert smtp_server.connections >= 2


async def test_bad_rows_fail_with_a_reason_and_do_not_stop_the_others(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    bad = [
        ("no-body@example.org", "NULL", "NULL", "'nobody'"),
        ("not an address", "'x'", "NULL", "NULL"),
        ("a@example.org", "'x'", '\'{"X-Tag": "a\\r\\nBcc: evil@example.org"}\'', "NULL"),
        ("a@example.org", "'x'", "'not json'", "NULL"),
    ]
    for recipient, body, headers, account in bad:
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, body_text, headers, account) "
            f"VALUES ('{recipient}', {body}, {headers}, {account})",
        )
    host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('good@example.org', 'x')")
    code, _ = await drain(write_ini(db_url, smtp_server.port))
    assert code == 0
    table = rows(db_url)
    assert [r[1] for r in table] == ["failed"] * 4 + ["sent"]
    reasons = [r[5] for r in table[:4]]
    assert "neither body_text nor body_html" in reasons[0] or "nobody" in reasons[0]
    assert "recipient" in reasons[1]
    assert "line break" in reasons[2]
    assert "JSON" in reasons[3]
    assert [r.rcpt_tos for r in smtp_server.received] == [["good@example.org"]]


async def test_unknown_account_fails_the_row(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, body_text, account) VALUES ('a@example.org', 'x', 'nosuch')",
    )
    code, _ = await drain(write_ini(db_url, smtp_server.port))
    assert code == 0
    (row,) = rows(db_url)
    assert row[1] == "failed"
    assert "unknown account 'nosuch'" in row[5]
