"""Staging: [robot] redirect_to sends every message to one QA address instead of its
recipients; suppression and VERP still apply; run and status say so loudly."""

from __future__ import annotations

from sqlalchemy import Engine

from robot.outbox.operations import Operations
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.integration.whole_robot.test_cli import cli
from tests.support.smtpd import TestSMTPServer

STAGING = "[robot]\ngrace_minutes = 0\nredirect_to = qa@example.org\n[bounces]\nverp = true\n"


async def test_redirect_to_sends_every_message_to_the_qa_address_alone(
    db_url: str, engine: Engine, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, cc, bcc, subject, body_text) VALUES (?, ?, ?, ?, ?)",
        ["Alice <alice@example.org>", "c@example.org", "b@example.org", "Ballot", "x"],
    )
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, cc, subject, body_text) VALUES (?, ?, ?, ?)",
        ["gone@example.org", "kept@example.org", "Half suppressed", "x"],
    )
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, subject, body_text) VALUES (?, ?, ?)",
        ["gone@example.org", "All suppressed", "x"],
    )
    host_sql(db_url, "INSERT INTO suppression (address) VALUES ('gone@example.org')")
    ini = write_ini(db_url, smtp_server.port, STAGING)

    code, events = await drain(ini)

    assert code == 0
    warnings = [e for e in events if e["event"] == "robot.redirecting"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert warnings[0]["redirect_to"] == "qa@example.org"
    by_subject = {r.message()["Subject"]: r for r in smtp_server.received}
    assert sorted(by_subject) == ["Ballot", "Half suppressed"]  # all suppressed: not sent
    ballot = by_subject["Ballot"]
    assert ballot.rcpt_tos == ["qa@example.org"]
    message = ballot.message()
    assert message["To"] == "Alice <alice@example.org>" and message["Cc"] == "c@example.org"
    assert "Bcc" not in message
    assert message["X-Redirected-From"] == (
        "to alice@example.org; cc c@example.org; bcc b@example.org"
    )
    table = host_sql(db_url, "SELECT id, status, recipient, cc, bcc FROM outbox ORDER BY id")
    assert ballot.mail_from == f"bounces+{table[0][0]}@example.org"  # VERP as usual
    assert by_subject["Half suppressed"].rcpt_tos == ["qa@example.org"]
    assert [r[1:] for r in table] == [
        ("sent", "Alice <alice@example.org>", "c@example.org", "b@example.org"),
        ("sent", "gone@example.org", "kept@example.org", None),
        ("suppressed", "gone@example.org", None, None),
    ]
    operations = Operations(engine, grace_seconds=0)
    history = operations.history(table[0][0])
    assert [e.kind for e in history] == ["claimed", "redirected", "sent"]
    assert history[1].detail == (
        "sent to qa@example.org instead of alice@example.org, c@example.org, b@example.org"
    )
    half = [(e.kind, e.detail) for e in operations.history(table[1][0])]
    assert half[1:3] == [  # the row's recipients, then the one left out as usual
        ("redirected", "sent to qa@example.org instead of gone@example.org, kept@example.org"),
        ("suppressed", "not sent to gone@example.org"),
    ]

    status = cli("-c", str(ini), "status")
    assert status.returncode == 0, status.stderr
    assert "redirect_to: every message goes to qa@example.org" in status.stdout


def test_redirect_to_must_be_one_address(write_ini: WriteIni) -> None:
    for value in ("qa", "qa@example.org, other@example.org", "QA <qa@example.org>"):
        ini = write_ini("sqlite:///x.db", 25, f"[robot]\nredirect_to = {value}\n")
        checked = cli("-c", str(ini), "status")
        assert checked.returncode == 2
        assert "[robot] redirect_to: must be one address" in checked.stderr
