"""Rows with templates (a context) through a whole robot: the limit on the bodies applies to
what the templates made."""

from __future__ import annotations

import json

from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.support.smtpd import TestSMTPServer


def insert(
    url: str, recipient: str, body_text: str, context: str | None = None, subject: str = "Hello"
) -> int:
    host_sql(
        url,
        "INSERT INTO outbox (recipient, subject, body_text, context) VALUES (?, ?, ?, ?)",
        [recipient, subject, body_text, context],
    )
    return int(host_sql(url, "SELECT max(id) FROM outbox")[0][0])


def row_state(url: str, row_id: int) -> tuple[str, int, str | None]:
    status, attempts, last_error = host_sql(
        url, "SELECT status, attempts, last_error FROM outbox WHERE id = ?", [row_id]
    )[0]
    return status, attempts, last_error


async def test_a_template_that_renders_over_max_body_mb_is_not_sent(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """A 20 MB body from a 50-byte template went out under max_body_mb = 10."""
    big = insert(
        db_url,
        "big@example.org",
        "{% for i in range(20000) %}{{ line }}{% endfor %}",
        json.dumps({"line": "x" * 1000, "name": "Ann"}),
    )
    small = insert(db_url, "small@example.org", "x")
    code, _ = await drain(write_ini(db_url, smtp_server.port, "[robot]\nmax_body_mb = 10\n"))
    assert code == 0
    assert row_state(db_url, big) == (
        "failed",
        1,
        "template rendered more than 10 MiB ([robot] max_body_mb)",
    )
    assert row_state(db_url, small) == ("sent", 1, None)
    assert [r.rcpt_tos for r in smtp_server.received] == [["small@example.org"]]
