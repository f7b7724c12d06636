"""Several sender accounts on several servers, DKIM, List-Unsubscribe and VERP, end to end."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.integration.whole_robot.test_cli import cli, one_line_error
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
