"""Several sender accounts on several servers, DKIM, List-Unsubscribe and VERP, end to end."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from datetime import datetime
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from robot.config import load_settings
from robot.daemon.robot import Robot
from robot.logs import configure_logging
from robot.outbox.engine import make_engine
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.integration.whole_robot.test_cli import cli, one_line_error
from tests.support.robot_proc import wait_until
from tests.support.smtpd import TestSMTPServer


def dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    """A fresh RSA key as a PEM file, and the TXT record that publishes its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


async def test_two_accounts_on_two_servers_with_dkim_and_unsubscribe(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer, tmp_path: Path
) -> None:
    news_server = TestSMTPServer(auth={"news@example.net": "n3ws-pw"})
    await news_server.start()
    key_file, txt = dkim_key(tmp_path)
    try:
        ini = write_ini(
            db_url,
            smtp_server.port,
            "[account:news]\n"
            "address = news@example.net\n"
            "name = Example News\n"
            f"port = {news_server.port}\n"
            "username = news@example.net\n"
            "password = n3ws-pw\n"
            "list_unsubscribe = https://example.net/leave?who={recipient}\n"
            "dkim_domain = example.net\n"
            "dkim_selector = robot2026\n"
            f"dkim_key_file = {key_file}\n"
            "[bounces]\nverp = true\n",
        )
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, subject, body_text) "
            "VALUES ('parent@example.org', 'Booking confirmed', 'See you')",
        )
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, subject, body_text, account) "
            "VALUES ('reader@example.org', 'June news', 'Hello readers', 'news')",
        )
        code, events = await drain(ini)
    finally:
        await news_server.stop()
    assert code == 0
    (booking,) = smtp_server.received
    (news,) = news_server.received
    ids = dict(host_sql(db_url, "SELECT recipient, id FROM outbox"))
    assert booking.mail_from == f"bounces+{ids['parent@example.org']}@example.org"
    assert news.mail_from == f"bounces+{ids['reader@example.org']}@example.net"
    assert ("news@example.net", True) in news_server.auth_attempts
    assert smtp_server.auth_attempts == []
    assert "n3ws-pw" not in str(events)

    message = news.message()
    assert message["From"] == "Example News <news@example.net>"
    assert message["List-Unsubscribe"] == ("<https://example.net/leave?who=reader%40example.org>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    signature = message["DKIM-Signature"]
    assert "d=example.net" in signature and "s=robot2026" in signature
    assert "list-unsubscribe" in signature.lower()

    def txt_record(name: bytes, timeout: int = 5) -> bytes | None:
        return txt if name == b"robot2026._domainkey.example.net." else None

    assert dkim.verify(news.data, dnsfunc=txt_record)
    tampered = news.data.replace(b"Hello readers", b"Hello suckers")
    assert not dkim.verify(tampered, dnsfunc=txt_record)
    assert "DKIM-Signature" not in booking.message()  # the default account signs nothing


def test_a_bad_dkim_key_is_a_config_error(tmp_path: Path, write_ini: WriteIni) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    ini = write_ini(
        f"sqlite:///{tmp_path}/r.db",
        25,
        f"[sender]\ndkim_domain = example.org\ndkim_selector = s1\ndkim_key_file = {bad}\n",
    )
    result = cli("-c", str(ini), "run", "--drain")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "dkim_key_file" in line and "not a usable key" in line and str(ini) in line


async def test_an_accounts_rate_limits_that_account_only(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """rate = 2 for one account: its 5 messages cannot take less than 1.5 s (a burst of
    two, then one every half second). A lower bound: a slow machine cannot break it."""
    ini = write_ini(
        db_url,
        smtp_server.port,
        "[account:slow]\naddress = slow@example.org\nrate = 2\n",
    )
    for n in range(5):
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, body_text, account) VALUES (?, 'x', 'slow')",
            [f"s{n}@example.org"],
        )
    code, _ = await drain(ini)
    assert code == 0
    sent = host_sql(db_url, "SELECT min(sent_at), max(sent_at), count(*) FROM outbox")[0]
    assert sent[2] == 5 and len(smtp_server.received) == 5
    first, last = (
        (datetime.fromisoformat(str(t)) for t in sent[:2])
        if db_url.startswith("sqlite")
        else sent[:2]
    )
    assert (last - first).total_seconds() >= 1.4  # database clock, millisecond precision


async def test_verp_to_an_internationalised_domain_sends_every_row_over_one_connection(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """The envelope sender goes out in its ASCII form (the test server offers no SMTPUTF8).
    Before, the first row was deferred as "the server does not offer SMTPUTF8" and the
    second, on the reused connection, was tried twice as "stale" and then left with no
    outcome at all (the `for _ in range(2)` fall-through): it stayed `sending` until its
    lease expired."""
    ini = write_ini(
        db_url,
        smtp_server.port,
        "[robot]\nconnections = 1\n[bounces]\nverp = true\nverp_domain = Bücher.example\n",
    )
    for n in range(3):
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, subject, body_text) "
            f"VALUES ('r{n}@example.org', 'Hello', 'Hi')",
        )
    code, _ = await drain(ini)
    assert code == 0
    assert host_sql(db_url, "SELECT DISTINCT status FROM outbox") == [("sent",)]
    ids = [i for (i,) in host_sql(db_url, "SELECT id FROM outbox ORDER BY id")]
    assert sorted(m.mail_from for m in smtp_server.received) == sorted(
        f"bounces+{i}@xn--bcher-kva.example" for i in ids
    )
    assert smtp_server.connections == 1


async def test_a_slow_account_does_not_hold_the_connections_of_the_others(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """Account `slow` (rate = 2) has 40 rows due before the default account's 40: the four
    connections must not all wait for the slow account's next token. The default account's
    rows go out at once; the slow one's at its rate, neither faster nor stopped."""
    ini = write_ini(
        db_url,
        smtp_server.port,
        "[robot]\nconnections = 4\n[log]\nlevel = info\n"
        "[account:slow]\naddress = slow@example.org\nrate = 2\n",
    )
    for account, prefix in (("slow", "s"), (None, "d")):
        for n in range(40):
            host_sql(
                db_url,
                "INSERT INTO outbox (recipient, body_text, account) VALUES (?, 'x', ?)",
                [f"{prefix}{n}@example.org", account],
            )
    arrivals: dict[str, list[float]] = {"slow@example.org": [], "robot@example.org": []}

    async def watch() -> None:  # when each message reached the server, to 5 ms
        seen = 0
        while True:
            for message in smtp_server.received[seen:]:
                arrivals[message.mail_from].append(time.monotonic())
            seen = len(smtp_server.received)
            await asyncio.sleep(0.005)

    settings = load_settings(ini, environ={})
    configure_logging("json", "info", stream=io.StringIO())
    engine = make_engine(settings.database.url)
    robot = Robot(settings, engine)
    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    running = asyncio.create_task(robot.run())
    try:
        await wait_until(lambda: len(arrivals["robot@example.org"]) == 40, 60, "40 default")
        default_done = arrivals["robot@example.org"][-1] - started
        await wait_until(lambda: len(arrivals["slow@example.org"]) >= 8, 60, "8 slow ones")
    finally:
        robot.stop()
        assert await asyncio.wait_for(running, 30) == 0
        watcher.cancel()
        engine.dispose()
    slow = arrivals["slow@example.org"]
    # Before, the default rows waited behind the slow account's: some 20 s (40 at 2/s).
    assert default_done < 10, f"the default account's rows took {default_done:.1f}s"
    # A burst of two, then one every half second: k messages after any one take at least
    # (k - 1) / 2 s (0.1 s of slack: a new connection's set-up, the polling above).
    for i, first in enumerate(slow):
        for k, at in enumerate(slow[i + 1 :], start=1):
            assert at - first >= (k - 1) / 2 - 0.1, (i, k, at - first)
    statuses = dict(host_sql(db_url, "SELECT status, count(*) FROM outbox GROUP BY status"))
    assert statuses == {"sent": 40 + len(slow), "pending": 40 - len(slow)}


async def test_a_slow_accounts_backlog_is_claimed_only_a_little_ahead_of_its_rate(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """Account `slow` (rate = 2) has 150 rows among 300 of the default account, every third
    row in claim order. While the default account's rows go out, the robot holds (leases)
    only a few seconds' worth of the slow ones, not a share of every claim: at most
    ten in status 'sending' at once. A reload that raises the slow account's rate
    is honoured, and every row goes out, once."""
    few_slow_rows = 10  # rate 2 x 2 s ahead, its burst of 2, and a claim's slack
    extra = "[robot]\nconnections = 4\nbatch_size = 60\n[log]\nlevel = info\n"
    slow = "[account:slow]\naddress = slow@example.org\nrate = {}\n"
    ini = write_ini(db_url, smtp_server.port, extra + slow.format(2))
    for n in range(450):
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, body_text, account) VALUES (?, 'x', ?)",
            [f"r{n}@example.org", "slow" if n % 3 == 0 else None],
        )
    settings = load_settings(ini, environ={})
    configure_logging("json", "info", stream=io.StringIO())
    engine = make_engine(settings.database.url)
    robot = Robot(settings, engine, reload=lambda: load_settings(ini, environ={}))
    running = asyncio.create_task(robot.run())
    slow_claimed: list[int] = []

    def default_rows_sent() -> bool:
        slow_claimed.append(
            host_sql(
                db_url,
                "SELECT count(*) FROM outbox WHERE account = 'slow' AND status = 'sending'",
            )[0][0]
        )
        return len([m for m in smtp_server.received if m.mail_from == "robot@example.org"]) == 300

    try:
        await wait_until(default_rows_sent, 60, "the default account's 300 rows")
        assert max(slow_claimed) <= few_slow_rows, slow_claimed
        write_ini(db_url, smtp_server.port, extra + slow.format(1000))
        robot.reload_settings()
        await wait_until(
            lambda: len(smtp_server.received) == 450,
            30,
            "the slow rows too",
            describe=lambda: f"{len(smtp_server.received)} received",
        )
    finally:
        robot.stop()
        assert await asyncio.wait_for(running, 30) == 0
        engine.dispose()
    assert host_sql(db_url, "SELECT status, count(*) FROM outbox GROUP BY status") == [
        ("sent", 450)
    ]
    assert len({m.rcpt_tos[0] for m in smtp_server.received}) == 450
