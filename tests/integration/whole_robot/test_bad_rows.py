"""Rows no server should see: each becomes `failed` with a reason, and the others still go."""

from __future__ import annotations

from pathlib import Path

from robot.outbox.engine import make_engine, upgrade
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.support.smtpd import TestSMTPServer


def outcome(url: str) -> dict[str, tuple[str, str | None]]:
    return {
        r: (s, e) for r, s, e in host_sql(url, "SELECT recipient, status, last_error FROM outbox")
    }


async def test_undecodable_and_non_text_values_on_sqlite(
    tmp_path: Path, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """SQLite keeps whatever bytes a host writes: bytes that are not UTF-8, a BLOB where
    text belongs, a NUL, a send_after that is not a time."""
    url = f"sqlite:///{tmp_path}/odd.db"
    ini = write_ini(url, smtp_server.port)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    host_sql(
        url,
        "INSERT INTO outbox (recipient, body_text) VALUES "
        "('latin1@example.org', CAST(x'4772fcdf65' AS TEXT)), "
        "('blob@example.org', x'00ff10'), "
        "('nul@example.org', 'a' || char(0) || 'b'), "
        "('good@example.org', 'fine')",
    )
    host_sql(
        url,
        "INSERT INTO outbox (recipient, body_text, send_after) "
        "VALUES ('when@example.org', 'x', 'next tuesday')",
    )
    code, events = await drain(ini)
    assert code == 0
    rows = outcome(url)
    assert rows["good@example.org"] == ("sent", None)
    assert rows["latin1@example.org"][0] == "failed"
    assert "not valid UTF-8" in (rows["latin1@example.org"][1] or "")
    assert rows["blob@example.org"] == ("failed", "body_text is not text but bytes")
    assert rows["nul@example.org"] == ("failed", "body_text contains a NUL character")
    assert rows["when@example.org"][0] == "failed"
    assert "send_after" in (rows["when@example.org"][1] or "")
    assert [r.rcpt_tos for r in smtp_server.received] == [["good@example.org"]]
    assert not [e for e in events if e.get("level") == "critical"]


async def test_a_100_mb_body_fails_without_being_loaded(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    huge = (
        "replace(hex(zeroblob(50000000)), '0', 'x')"
        if db_url.startswith("sqlite")
        else "repeat('x', 100000000)"
    )
    host_sql(
        db_url,
        f"INSERT INTO outbox (recipient, body_text) VALUES ('huge@example.org', {huge})",
    )
    host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('small@example.org', 'x')")
    code, _ = await drain(write_ini(db_url, smtp_server.port))
    assert code == 0
    rows = outcome(db_url)
    assert rows["small@example.org"] == ("sent", None)
    status, reason = rows["huge@example.org"]
    assert status == "failed"
    assert reason == (
        "body_text and body_html total 95.4 MiB, over the limit of 10 MiB ([robot] max_body_mb)"
    )
    assert len(smtp_server.received) == 1


async def test_attachments_over_the_limit_and_a_removed_account(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, body_text) VALUES ('files@example.org', 'see attached')",
    )
    (row_id,) = host_sql(db_url, "SELECT max(id) FROM outbox")[0]
    for name in ("a.pdf", "b.pdf"):
        host_sql(
            db_url,
            "INSERT INTO outbox_attachment (outbox_id, filename, content_type, content) "
            "VALUES (?, ?, 'application/pdf', ?)",
            [row_id, name, b"%PDF" + b"\0" * (700 * 1024)],
        )
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, body_text, account) "
        "VALUES ('news@example.org', 'x', 'newsletter')",
    )
    host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('ok@example.org', 'x')")
    # The newsletter account was removed from robot.ini while rows still name it.
    ini = write_ini(db_url, smtp_server.port, "[attachments]\nmax_mb = 1\n")
    code, _ = await drain(ini)
    assert code == 0
    rows = outcome(db_url)
    assert rows["ok@example.org"] == ("sent", None)
    assert rows["files@example.org"] == (
        "failed",
        "attachments total 1.4 MiB, over the limit of 1 MiB ([attachments] max_mb)",
    )
    assert rows["news@example.org"][0] == "failed"
    assert "unknown account 'newsletter'" in (rows["news@example.org"][1] or "")


async def test_two_addresses_in_recipient_fail_the_row(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """The second address was dropped without a word and the row marked sent."""
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, body_text) VALUES "
        "('two@example.org, other@example.org', 'x'), ('\"Doe, Jane\" <jane@example.org>', 'x')",
    )
    code, _ = await drain(write_ini(db_url, smtp_server.port))
    assert code == 0
    rows = outcome(db_url)
    assert rows["two@example.org, other@example.org"] == (
        "failed",
        "recipient holds 2 addresses (two@example.org, other@example.org); "
        "put one in recipient and the others in cc or bcc",
    )
    assert rows['"Doe, Jane" <jane@example.org>'] == ("sent", None)
    assert [r.rcpt_tos for r in smtp_server.received] == [["jane@example.org"]]
    assert b'To: "Doe, Jane" <jane@example.org>' in smtp_server.received[0].data


async def test_a_reply_postgresql_cannot_store_does_not_hold_up_the_others(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """A relay's reply with a NUL and a control character in it: the protocol layer makes
    them visible (PostgreSQL cannot store a NUL), the outcome is recorded and the other rows
    go as usual. (A refusal that still comes is isolated by the group commit:
    tests/integration/components/test_refused_outcomes.py.)"""
    for n in range(6):
        host_sql(
            db_url, f"INSERT INTO outbox (recipient, body_text) VALUES ('r{n}@example.org', 'x')"
        )
    smtp_server.fault("DATA", "250 2.0.0 queued as \x00\x1bA1", address="r3@example.org")
    code, events = await drain(write_ini(db_url, smtp_server.port), timeout=20)
    assert code == 0
    rows = {
        r: (s, reply)
        for r, s, reply in host_sql(db_url, "SELECT recipient, status, smtp_reply FROM outbox")
    }
    assert rows["r3@example.org"] == ("sent", "2.0.0 queued as \\x00\\x1bA1")
    assert all(status == "sent" for status, _ in rows.values())
    assert len(smtp_server.received) == 6
    assert not [e for e in events if e["event"] == "database.unavailable"]
