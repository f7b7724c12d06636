"""Every value a host can store in a column the robot reads: one odd row beside good ones, a
drain, and the robot exits normally, sends the good rows, and ends the odd row `failed` with
a reason naming the column, or `sent` when the value is harmlessly read as what it means.

SQLite keeps any type in any column (text in INTEGER, blobs in TEXT, numbers as text in
time columns); PostgreSQL's types let through less, but extremes (the largest integer,
'-infinity') still reach the robot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from robot.outbox.engine import make_engine, upgrade
from robot.outbox.operations import Operations
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.support.smtpd import TestSMTPServer

Outcome = Literal["sent", "failed"]
SENT: Outcome = "sent"
FAILED: Outcome = "failed"

NUMBERS: list[tuple[str, Outcome]] = [
    ("'high'", FAILED),
    ("''", FAILED),
    ("x'00ff'", FAILED),
    ("1.5", SENT),
    ("9223372036854775807", SENT),
    ("-9223372036854775808", SENT),
    ("-5", SENT),
]
TIMES: list[tuple[str, Outcome]] = [
    ("'next tuesday'", FAILED),
    ("''", FAILED),
    ("x'00ff'", FAILED),
    ("CAST('2024-01-01 10:00:00' AS BLOB)", SENT),  # bytes that spell a time
    ("1700000000", FAILED),  # seconds since 1970: far beyond SQLite's Julian days
    ("'2460000.5'", SENT),  # a Julian day, which SQLite reads as a time (2023)
    ("'2024-02-30 10:00:00'", SENT),
    ("'0000-01-01 00:00:00'", SENT),
    ("'2024-01-01T10:00:00+02:00'", SENT),
]
TEXTS: list[tuple[str, Outcome]] = [
    ("x'00ff'", FAILED),
    ("CAST('text@example.org' AS BLOB)", FAILED),
    ("CAST(x'4772fcdf65' AS TEXT)", FAILED),  # Latin-1 bytes, not UTF-8
]
SQLITE_COLUMNS: dict[str, list[tuple[str, Outcome]]] = {
    "priority": NUMBERS,
    "attempts": NUMBERS,
    "transactional": [
        ("'yes'", SENT),
        ("'false'", SENT),
        ("2", SENT),
        ("0.5", SENT),
        ("'banana'", FAILED),
        ("''", FAILED),
        ("x'01'", FAILED),
    ],
    "created_at": TIMES,
    "send_after": TIMES,
    "next_attempt_at": TIMES,
    "account": TEXTS,
    "sender": TEXTS,
    "sender_name": TEXTS,
    "reply_to": TEXTS,
    "recipient": TEXTS,
    "cc": TEXTS,
    "bcc": TEXTS,
    "subject": TEXTS,
    "body_text": TEXTS,
    "body_html": TEXTS,
    "headers": TEXTS,
    "context": TEXTS,
    "message_id": [
        *TEXTS,
        ("'<1@example.org>' || char(13, 10) || 'Bcc: evil@example.net'", FAILED),
        ("'<2@example.org>' || char(0)", FAILED),
        ("'<3@example.org>'", SENT),
    ],
    "batch": [("x'00ff'", FAILED), ("CAST(x'4772fcdf65' AS TEXT)", SENT)],  # never sent
    "claimed_by": [("x'00ff'", SENT), ("'another-robot'", SENT)],  # the claim writes it
    "outbox_attachment.filename": TEXTS,
    "outbox_attachment.content_type": TEXTS,
    "outbox_attachment.content": [("'plain text'", SENT), ("42", SENT)],
}
POSTGRES_COLUMNS: dict[str, list[tuple[str, Outcome]]] = {
    "priority": [("2147483647", SENT), ("-2147483648", SENT)],
    "attempts": [("2147483647", SENT), ("-2147483648", SENT)],
    "created_at": [("'-infinity'", SENT)],
    "send_after": [("'-infinity'", SENT)],
    "next_attempt_at": [("'-infinity'", SENT)],
    "message_id": [("'<1@example.org>' || chr(13) || chr(10) || 'Bcc: evil@example.net'", FAILED)],
}
GOOD = ("good1@example.org", "good2@example.org")


def insert_odd_row(url: str, column: str, literal: str) -> int:
    """One row with `literal` (SQL) in `column` (of outbox, or of its attachment)."""
    values = {"recipient": "'odd@example.org'", "subject": "'odd'", "body_text": "'x'"}
    table, _, name = column.rpartition(".")
    if not table:
        values[name] = literal
    columns = ", ".join(values)
    host_sql(url, f"INSERT INTO outbox ({columns}) VALUES ({', '.join(values.values())})")
    row_id = int(host_sql(url, "SELECT max(id) FROM outbox")[0][0])
    if table:
        attachment = {"filename": "'a.txt'", "content_type": "'text/plain'", "content": "x'41'"}
        attachment[name] = literal
        host_sql(
            url,
            f"INSERT INTO outbox_attachment (outbox_id, {', '.join(attachment)}) "
            f"VALUES ({row_id}, {', '.join(attachment.values())})",
        )
    return row_id


def cases(columns: dict[str, list[tuple[str, Outcome]]]) -> list[pytest.ParameterSet]:
    return [pytest.param(column, values, id=column) for column, values in columns.items()]


async def drain_with_odd_rows(
    url: str,
    column: str,
    values: list[tuple[str, Outcome]],
    write_ini: WriteIni,
    smtp_server: TestSMTPServer,
) -> None:
    good = []
    for recipient in GOOD:
        host_sql(url, f"INSERT INTO outbox (recipient, body_text) VALUES ('{recipient}', 'x')")
        good.append(int(host_sql(url, "SELECT max(id) FROM outbox")[0][0]))
    odd = {insert_odd_row(url, column, literal): (literal, want) for literal, want in values}
    code, events = await drain(write_ini(url, smtp_server.port), timeout=60)
    assert code == 0
    assert not [e for e in events if e["event"] == "robot.crashed"]
    found = {
        int(i): (str(s), e)
        for i, s, e in host_sql(url, "SELECT id, status, last_error FROM outbox")
    }
    assert [found[row_id][0] for row_id in good] == ["sent", "sent"]
    name = column.rpartition(".")[2]
    wrong = {}
    for row_id, (literal, want) in odd.items():
        status, error = found[row_id]
        if status != want or (want == FAILED and name not in (error or "")):
            wrong[literal] = (status, error)
    assert wrong == {}, f"{column}: odd values that ended otherwise than expected"
    sent_odd = [row_id for row_id, (_, want) in odd.items() if want == SENT]
    assert len(smtp_server.received) == len(GOOD) + len(sent_odd)
    operator_reads(url, list(odd))


def operator_reads(url: str, ids: list[int]) -> None:
    """`status`, `list` and `show` read every row, odd values and all (the command line's
    engine reads text that is not UTF-8 leniently)."""
    engine = make_engine(url, lenient_text=True)
    try:
        operations = Operations(engine, grace_seconds=0)
        assert sum(operations.status().counts.values()) >= len(ids)
        _, listed = operations.rows(limit=100)
        assert {row.id for row, _ in listed} >= set(ids)
        assert all(operations.get(row_id) is not None for row_id in ids)
    finally:
        engine.dispose()


@pytest.mark.parametrize(("column", "values"), cases(SQLITE_COLUMNS))
async def test_odd_values_on_sqlite(
    column: str,
    values: list[tuple[str, Outcome]],
    tmp_path: Path,
    write_ini: WriteIni,
    smtp_server: TestSMTPServer,
) -> None:
    url = f"sqlite:///{tmp_path}/odd.db"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    await drain_with_odd_rows(url, column, values, write_ini, smtp_server)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_times_python_cannot_hold_do_not_break_the_operators_reads(db_url: str) -> None:
    """'infinity' (never due) and '-infinity' (always) in every time column, and a year
    before Christ: `status`, `list` and `show` still answer, the times shown as unknown."""
    ids = []
    for created, after, retry in (
        ("'infinity'", "NULL", "NULL"),
        ("now()", "'infinity'", "NULL"),
        ("now()", "NULL", "'infinity'"),
        ("'-infinity'", "'0044-03-15 BC'", "'-infinity'"),
    ):
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, body_text, created_at, send_after, next_attempt_at) "
            f"VALUES ('a@example.org', 'x', {created}, {after}, {retry})",
        )
        ids.append(int(host_sql(db_url, "SELECT max(id) FROM outbox")[0][0]))
    operator_reads(db_url, ids)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("column", "values"), cases(POSTGRES_COLUMNS))
async def test_odd_values_on_postgresql(
    column: str,
    values: list[tuple[str, Outcome]],
    db_url: str,
    write_ini: WriteIni,
    smtp_server: TestSMTPServer,
) -> None:
    await drain_with_odd_rows(db_url, column, values, write_ini, smtp_server)
