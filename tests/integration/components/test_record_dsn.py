"""A delivery status notification recorded twice (two robots reading one bounce mailbox, or
one robot reading a report again) leaves one set of history lines and suppresses once."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from robot.outbox.both_sides import Outbox
from tests.integration.host import host_sql

MESSAGE_ID = "<7.0123456789abcdef@example.org>"
FAILURES = [
    ("gone@example.org", "5.1.1", "smtp; 550 5.1.1 no such user", 550, True),
    ("copy@example.org", "5.2.2", "smtp; 552 mailbox full", 552, False),
]
WAIT = 10.0  # seconds for what takes milliseconds


def sent_row(url: str) -> int:
    host_sql(
        url,
        "INSERT INTO outbox (recipient, cc, body_text, status, message_id) "
        "VALUES ('gone@example.org', 'copy@example.org', 'x', 'sent', ?)",
        [MESSAGE_ID],
    )
    return int(host_sql(url, "SELECT max(id) FROM outbox")[0][0])


def dsn_lines(url: str, row_id: int) -> list[tuple[str, str]]:
    return [
        (str(kind), str(detail))
        for kind, detail in host_sql(
            url,
            "SELECT kind, detail FROM outbox_event WHERE outbox_id = ? ORDER BY id",
            [row_id],
        )
    ]


def test_the_same_report_twice_adds_nothing_the_second_time(db_url: str, engine: Engine) -> None:
    row_id = sent_row(db_url)
    box = Outbox(engine, grace_seconds=0, lease_seconds=60)
    first = box.record_dsn(FAILURES, message_id=MESSAGE_ID, reporter="mx.example.org")
    assert first == (row_id, True)
    lines = dsn_lines(db_url, row_id)
    assert [kind for kind, _ in lines] == ["bounced", "bounced"]
    assert box.unsuppress("gone@example.org")  # the operator takes the address back

    again = box.record_dsn(FAILURES, row_id=row_id, reporter="mx.example.org")
    assert again == (row_id, False)
    assert dsn_lines(db_url, row_id) == lines
    assert box.is_suppressed({"gone@example.org"}) == []  # not suppressed a second time
    # A report with one new failure adds that one only.
    fuller = [*FAILURES, ("other@example.org", "5.1.1", None, 550, False)]
    assert box.record_dsn(fuller, row_id=row_id, reporter="mx.example.org") == (row_id, False)
    assert dsn_lines(db_url, row_id) == [
        *lines,
        ("dsn", "other@example.org: 5.1.1 (delivery status notification from mx.example.org)"),
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_robots_recording_the_same_report_at_once_write_it_once(
    db_url: str, engine: Engine
) -> None:
    row_id = sent_row(db_url)
    robots = [Outbox(engine, grace_seconds=0, lease_seconds=60) for _ in range(2)]
    results: list[tuple[int, bool] | None] = []
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as host:
        # A host transaction holds the row, so that both robots reach it before either ends.
        host.execute("SELECT id FROM outbox WHERE id = %s FOR UPDATE", [row_id])
        threads = [
            threading.Thread(
                target=lambda box=box: results.append(
                    box.record_dsn(FAILURES, message_id=MESSAGE_ID, reporter="mx.example.org")
                )
            )
            for box in robots
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WAIT
        while waiting_on_locks(host) < 2:
            assert time.monotonic() < deadline, "the two robots never waited for the row"
            time.sleep(0.01)
        host.commit()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(results, key=str) == [(row_id, False), (row_id, True)]
    assert [kind for kind, _ in dsn_lines(db_url, row_id)] == ["bounced", "bounced"]


def waiting_on_locks(host: psycopg.Connection[tuple[object, ...]]) -> int:
    """Sessions of this database waiting for a lock (seen from the host's transaction)."""
    with psycopg.connect(host.info.dsn, autocommit=True) as probe:
        found = probe.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return int(found[0]) if found else 0
