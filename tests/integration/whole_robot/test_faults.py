"""Every failure-handling rule of the contract, end to end: plain SQL rows, `run --drain`, and a
fault-injecting SMTP server (tests/support/smtpd.py) on a real socket.

2xx sent; 4xx, timeouts and dropped connections deferred, retried after retry_minutes and
failed after max_errors attempts; 5xx for the recipient bounced (5.1.x also suppresses the
address, lower-cased); other 5xx failed; a 421 closes the connection: that row is deferred,
the others go on a new connection; a row goes out if any recipient was accepted; suppressed
addresses are skipped unless the row is transactional; a failing login or a server that
closes at EHLO is a transport fault that burns no attempt.

Each test that talks to the SMTP server runs twice: the server offering PIPELINING (the robot
sends the envelope in one write) and not (one command at a time).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WriteIni
from tests.integration.host import host_sql, now_plus_sql
from tests.integration.robot_run import drain
from tests.support.smtpd import NO_REPLY, TestSMTPServer

RETRY = "[robot]\nretry_minutes = 0.005\nmax_errors = 3\n"  # retried 0.3 s later, thrice at most


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    """Whether the SMTP server offers PIPELINING: every rule must hold both ways."""
    return bool(request.param)


@pytest.fixture
async def smtp_server(pipelining: bool) -> AsyncIterator[TestSMTPServer]:
    """The conftest's SMTP server, run once offering PIPELINING and once not."""
    server = TestSMTPServer(pipelining=pipelining)
    await server.start()
    yield server
    await server.stop()


@dataclass(frozen=True)
class Row:
    id: int
    status: str
    attempts: int
    smtp_code: int | None
    smtp_reply: str | None
    message_id: str | None
    last_error: str | None
    next_attempt_at: Any


def insert(url: str, recipient: str, **columns: Any) -> int:
    """INSERT one row the way a host application does; returns its id."""
    values = {"recipient": recipient, "subject": "fault test", "body_text": "hello", **columns}
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    ((row_id,),) = host_sql(
        url, f"INSERT INTO outbox ({names}) VALUES ({marks}) RETURNING id", list(values.values())
    )
    return int(row_id)


def row(url: str, row_id: int) -> Row:
    ((*values,),) = host_sql(
        url,
        "SELECT id, status, attempts, smtp_code, smtp_reply, message_id, last_error, "
        "next_attempt_at FROM outbox WHERE id = ?",
        [row_id],
    )
    return Row(*values)


def history(url: str, row_id: int) -> list[tuple[str, int | None, str | None]]:
    """(kind, smtp_code, detail) of the row's outbox_event lines, oldest first."""
    return [
        (kind, code, detail)
        for kind, code, detail in host_sql(
            url,
            "SELECT kind, smtp_code, detail FROM outbox_event WHERE outbox_id = ? ORDER BY id",
            [row_id],
        )
    ]


def kinds(url: str, row_id: int) -> list[str]:
    return [kind for kind, _, _ in history(url, row_id) if kind != "claimed"]


def suppressed(url: str) -> list[str]:
    return [address for (address,) in host_sql(url, "SELECT address FROM suppression ORDER BY 1")]


def message_ids(messages: list[Any]) -> list[str]:
    return [m.message()["Message-ID"] for m in messages]


async def drain_ok(ini: Path) -> list[dict[str, Any]]:
    code, events = await drain(ini)
    assert code == 0, [e for e in events if e.get("level") in ("warning", "error")]
    return events


async def drain_until_settled(url: str, ini: Path, runs: int = 8) -> None:
    """`run --drain` exits once nothing is due, so a deferred row needs another run after its
    next_attempt_at: wait for that on the database clock, then drain again."""
    for _ in range(runs):
        await drain_ok(ini)
        if not host_sql(url, "SELECT id FROM outbox WHERE status = 'deferred'"):
            return
        not_yet = (
            "SELECT id FROM outbox WHERE status = 'deferred' "
            f"AND next_attempt_at > {now_plus_sql(url, 0)}"
        )
        async with asyncio.timeout(20):
            while host_sql(url, not_yet):
                await asyncio.sleep(0.05)
    raise AssertionError(f"rows still deferred after {runs} drains")


# -- one reply, one row: the whole table in one run ---------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    command: str  # where the fault is: MAIL, RCPT or DATA
    reply: str | None  # None: the connection is dropped instead
    status: str
    code: int | None  # the row's smtp_code afterwards
    suppress: bool = False
    recipient: str | None = None  # default: case<n>@example.org
    unknown: bool = False  # the whole message went out unanswered: 'unknown' in the history


CASES = [
    Case("250 at RCPT", "RCPT", "250 2.1.5 Ok", "sent", 250),
    Case("251 at RCPT", "RCPT", "251 2.1.5 User not local; will forward", "sent", 250),
    Case("450 at RCPT", "RCPT", "450 4.2.0 Mailbox busy", "deferred", 450),
    Case("451 4.7.1 at RCPT", "RCPT", "451 4.7.1 Greylisted, come back later", "deferred", 451),
    Case("452 at RCPT", "RCPT", "452 4.5.3 Too many recipients", "deferred", 452),
    Case("550 4.2.2 at RCPT", "RCPT", "550 4.2.2 Mailbox full, try later", "deferred", 550),
    Case(
        "550 5.1.1 at RCPT",
        "RCPT",
        "550 5.1.1 No such user",
        "bounced",
        550,
        suppress=True,
        recipient="Ghost.User@Example.ORG",
    ),
    Case("550 5.7.1 at RCPT", "RCPT", "550 5.7.1 Relaying denied", "bounced", 550),
    Case("551 at RCPT", "RCPT", "551 User not local", "bounced", 551),
    Case("553 5.1.3 at RCPT", "RCPT", "553 5.1.3 Bad address syntax", "bounced", 553, True),
    Case("553 5.1.8 at RCPT", "RCPT", "553 5.1.8 Sender domain not found", "failed", 553),
    Case("drop at RCPT", "RCPT", None, "deferred", None),
    Case("451 at MAIL", "MAIL", "451 4.3.0 Local problem", "deferred", 451),
    Case("500 at MAIL", "MAIL", "500 5.5.2 Syntax error", "failed", 500),
    Case("550 5.7.1 at MAIL", "MAIL", "550 5.7.1 Sender blocked", "failed", 550),
    Case("553 5.1.7 at MAIL", "MAIL", "553 5.1.7 Bad sender address", "failed", 553),
    Case("451 at DATA", "DATA", "451 4.3.0 Try again later", "deferred", 451),
    Case("554 4.4.7 at DATA", "DATA", "554 4.4.7 Message delayed", "deferred", 554),
    Case("552 at DATA", "DATA", "552 5.3.4 Message too big", "failed", 552),
    Case("554 5.7.1 at DATA", "DATA", "554 5.7.1 Rejected as spam", "failed", 554),
    Case("554 at DATA", "DATA", "554 Transaction failed", "failed", 554),
    Case(
        "550 5.1.1 at DATA",
        "DATA",
        "550 5.1.1 Mailbox unknown",
        "bounced",
        550,
        suppress=True,
        recipient="Some One <Some.One@Example.ORG>",
    ),
    Case("600 at DATA", "DATA", "600 not an SMTP code", "deferred", 600),
    Case("drop at DATA", "DATA", None, "deferred", None, unknown=True),
]


async def test_each_reply_decides_its_row(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    ids = {}
    for n, case in enumerate(CASES):
        recipient = case.recipient or f"case{n}@example.org"
        sender = f"case{n}@sender.example"
        ids[case] = insert(db_url, recipient, sender=sender)
        address = sender if case.command == "MAIL" else recipient.rpartition("<")[2].rstrip(">")
        smtp_server.fault(case.command, case.reply, address=address, drop=case.reply is None)
    await drain_ok(write_ini(db_url, smtp_server.port))  # retry_minutes 10: one try each

    wrong = []
    for case, row_id in ids.items():
        got = row(db_url, row_id)
        if (got.status, got.smtp_code, got.attempts) != (case.status, case.code, 1):
            wrong.append(f"{case.name}: {got.status} {got.smtp_code} attempts={got.attempts}")
            continue
        if case.status == "sent":
            if got.last_error is not None or kinds(db_url, row_id) != ["sent"]:
                wrong.append(f"{case.name}: {got.last_error!r} {kinds(db_url, row_id)}")
            continue
        expected = case.reply.split(" ", 1)[1] if case.reply else "connection dropped"
        if (
            got.last_error is None
            or expected not in got.last_error
            or f"at {case.command}" not in got.last_error
        ):
            wrong.append(f"{case.name}: last_error {got.last_error!r}")
        if (got.next_attempt_at is not None) != (case.status == "deferred"):
            wrong.append(f"{case.name}: next_attempt_at {got.next_attempt_at}")
        if kinds(db_url, row_id) != ["unknown"] * case.unknown + [case.status]:
            wrong.append(f"{case.name}: history {kinds(db_url, row_id)}")
    assert not wrong, "\n".join(wrong)
    # 5.1.x for the recipient suppresses its bare address, lower-cased; nothing else does
    assert suppressed(db_url) == [
        "case9@example.org",
        "ghost.user@example.org",
        "some.one@example.org",
    ]
    accepted = {tuple(r.rcpt_tos) for r in smtp_server.received}
    assert accepted == {("case0@example.org",), ("case1@example.org",)}


# -- 421 -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA"])
async def test_421_defers_that_row_and_the_others_go_on_a_new_connection(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer, command: str
) -> None:
    first = insert(db_url, "first@example.org", sender="robot@example.org")
    closing = insert(db_url, "closing@example.org", sender="closing@example.org")
    after = [insert(db_url, f"after{n}@example.org") for n in range(3)]
    address = "closing@example.org"
    rule = smtp_server.fault(command, "421 4.7.0 Too many errors, closing", address=address)
    ini = write_ini(db_url, smtp_server.port, "[robot]\nconnections = 1\n")  # one wire, in order
    await drain_ok(ini)

    assert rule.fired == 1
    got = row(db_url, closing)
    assert (got.status, got.smtp_code, got.attempts) == ("deferred", 421, 1)
    assert got.last_error is not None and "421" in got.last_error and "closing" in got.last_error
    assert got.next_attempt_at is not None
    assert [row(db_url, i).status for i in (first, *after)] == ["sent"] * 4
    sessions = {tuple(r.rcpt_tos): r.session_id for r in smtp_server.received}
    assert len(sessions) == 4
    new = {sessions[(f"after{n}@example.org",)] for n in range(3)}
    assert sessions[("first@example.org",)] not in new  # the closed connection was not reused
    assert smtp_server.connections == 2


# -- several recipients (cc/bcc) ------------------------------------------------------------


async def test_row_is_sent_if_any_recipient_was_accepted(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    smtp_server.fault("RCPT", "550 5.1.1 No such user", address="gone@example.org")
    smtp_server.fault("RCPT", "452 4.2.2 Mailbox full", address="full@example.org")
    row_id = insert(
        db_url,
        "to@example.org",
        cc="Gone Person <Gone@Example.org>, kept@example.org",
        bcc="full@example.org",
    )
    await drain_ok(write_ini(db_url, smtp_server.port))

    got = row(db_url, row_id)
    assert (got.status, got.smtp_code, got.last_error) == ("sent", 250, None)
    (received,) = smtp_server.received
    assert received.rcpt_tos == ["to@example.org", "kept@example.org"]
    refused = sorted(
        (code, detail) for kind, code, detail in history(db_url, row_id) if kind == "refused"
    )
    assert [code for code, _ in refused] == [452, 550]
    assert refused[0][1] is not None and refused[0][1].startswith("full@example.org: 452")
    assert refused[1][1] is not None and refused[1][1].lower().startswith("gone@example.org: 550")
    assert "No such user" in refused[1][1]
    assert kinds(db_url, row_id)[-1] == "sent"
    # the unknown user is suppressed for later mail, the full mailbox is not
    assert suppressed(db_url) == ["gone@example.org"]


async def test_row_bounces_when_every_recipient_is_refused(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    smtp_server.fault("RCPT", "550 5.1.1 No such user", address="to@example.org")
    smtp_server.fault("RCPT", "550 5.1.1 Unknown", address="cc@example.org")
    smtp_server.fault("RCPT", "550 5.7.1 Not allowed", address="bcc@example.org")
    bounced = insert(db_url, "To@Example.org", cc="cc@example.org", bcc="bcc@example.org")
    # one refusal that may change: the row waits for it instead of bouncing
    smtp_server.fault("RCPT", "451 4.3.0 Try later", address="later@example.org")
    waiting = insert(db_url, "to@example.org", cc="later@example.org")
    ini = write_ini(db_url, smtp_server.port, "[robot]\nconnections = 1\n")
    await drain_ok(ini)

    got = row(db_url, bounced)
    assert (got.status, got.smtp_code) == ("bounced", 550)
    assert got.last_error is not None and "No such user" in got.last_error
    refused = [detail for kind, _, detail in history(db_url, bounced) if kind == "refused"]
    assert len(refused) == 3, history(db_url, bounced)
    assert suppressed(db_url) == ["cc@example.org", "to@example.org"]
    got = row(db_url, waiting)
    assert (got.status, got.smtp_code) == ("deferred", 451)
    assert got.last_error is not None and "later@example.org" in got.last_error
    assert smtp_server.received == []


async def test_a_relay_s_recipient_limit_sends_the_rest_in_further_transactions(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    # 452 at RCPT: "try these in another transaction" (RFC 5321 §4.5.3.1.10); taken for a
    # refusal, 150 of the 250 were recorded as refused and never tried again
    smtp_server.max_recipients = 100
    recipients = [f"r{n:03}@example.org" for n in range(250)]
    row_id = insert(db_url, recipients[0], cc=", ".join(recipients[1:]))
    other = insert(db_url, "other@example.org")
    await drain_ok(write_ini(db_url, smtp_server.port, "[robot]\nconnections = 1\n"))

    got = row(db_url, row_id)
    assert (got.status, got.attempts, got.smtp_code, got.last_error) == ("sent", 1, 250, None)
    assert kinds(db_url, row_id) == ["sent"]  # no 'refused' line
    copies = [t for t in smtp_server.received if t.rcpt_tos != ["other@example.org"]]
    assert [len(t.rcpt_tos) for t in copies] == [100, 100, 50]  # three transactions
    delivered = [address for t in copies for address in t.rcpt_tos]
    assert sorted(delivered) == recipients  # each recipient once
    assert message_ids(copies) == [got.message_id] * 3
    assert len({t.session_id for t in copies}) == 1  # on one connection
    assert row(db_url, other).status == "sent"


# -- retries ------------------------------------------------------------------------------


async def test_deferred_rows_are_retried_then_fail_after_max_errors(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    rule = smtp_server.fault("RCPT", "451 4.7.1 Greylisted", address="grey@example.org")
    row_id = insert(db_url, "grey@example.org")
    await drain_until_settled(db_url, write_ini(db_url, smtp_server.port, RETRY))

    got = row(db_url, row_id)
    assert (got.status, got.attempts, got.smtp_code) == ("failed", 3, 451)
    assert got.last_error is not None
    assert got.last_error.startswith("gave up after 3 attempts: ")
    assert "451 4.7.1 Greylisted (at RCPT)" in got.last_error
    assert kinds(db_url, row_id) == ["deferred", "deferred", "failed"]
    assert rule.fired == 3


async def test_a_retry_is_sent_with_the_same_message_id(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    # first try: the body reaches the server, which drops the line without answering;
    # second try: 451; third: accepted.
    smtp_server.fault("DATA", address="again@example.org", drop=True, times=1)
    smtp_server.fault("DATA", "451 4.3.0 Try again", address="again@example.org", times=1)
    row_id = insert(db_url, "again@example.org")
    await drain_until_settled(db_url, write_ini(db_url, smtp_server.port, RETRY))

    got = row(db_url, row_id)
    assert (got.status, got.attempts, got.smtp_code, got.last_error) == ("sent", 3, 250, None)
    assert [t.reply for t in smtp_server.transactions] == [
        NO_REPLY,
        "451 4.3.0 Try again",
        "250 OK",
    ]
    assert message_ids(smtp_server.transactions) == [got.message_id] * 3
    # dropped after the whole message: it may have been delivered, the history says so
    assert kinds(db_url, row_id) == ["unknown", "deferred", "deferred", "sent"]


@pytest.mark.parametrize("command", ["RCPT", "DATA"])
async def test_a_reply_slower_than_timeout_seconds_defers(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer, command: str
) -> None:
    slow = smtp_server.fault(command, delay=60, address="slow@example.org", times=1)
    slow_id = insert(db_url, "slow@example.org")
    other = insert(db_url, "other@example.org")
    # the reply to the message (DATA's fault: after the final ".") has data_timeout_seconds
    timeouts = "[smtp]\ntimeout_seconds = 1\ndata_timeout_seconds = 1\n"
    ini = write_ini(db_url, smtp_server.port, RETRY + "connections = 1\n" + timeouts)
    await drain_until_settled(db_url, ini)  # the second time, the server answers in time

    assert slow.fired == 1
    assert row(db_url, other).status == "sent"
    got = row(db_url, slow_id)
    assert (got.status, got.attempts, got.smtp_code) == ("sent", 2, 250)
    (deferred,) = [(c, d) for kind, c, d in history(db_url, slow_id) if kind == "deferred"]
    assert deferred[0] is None and deferred[1] is not None
    assert "timed out" in deferred[1] and f"(at {command})" in deferred[1]
    unknown = ["unknown"] if command == "DATA" else []  # the message went out unanswered
    assert kinds(db_url, slow_id) == [*unknown, "deferred", "sent"]
    if command == "DATA":  # the unanswered copy and the delivered one: the same Message-ID
        copies = [t for t in smtp_server.transactions if t.rcpt_tos == ["slow@example.org"]]
        assert [t.reply for t in copies] == [NO_REPLY, "250 OK"]
        assert message_ids(copies) == [got.message_id] * 2


UNKNOWN = "the server did not answer after the message; it may have been delivered"


async def test_a_slow_reply_to_the_message_is_waited_for_and_the_message_sent_once(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    # past timeout_seconds, within data_timeout_seconds (600 by default): given up on after
    # timeout_seconds, the server still accepted each copy and the retries delivered it again
    smtp_server.fault("DATA", delay=1.5, address="slow@example.org")
    slow_id = insert(db_url, "slow@example.org")
    other = insert(db_url, "other@example.org")
    ini = write_ini(db_url, smtp_server.port, RETRY + "[smtp]\ntimeout_seconds = 0.5\n")
    await drain_until_settled(db_url, ini)

    got = row(db_url, slow_id)
    assert (got.status, got.attempts, got.smtp_code, got.last_error) == ("sent", 1, 250, None)
    assert kinds(db_url, slow_id) == ["sent"]
    copies = [t for t in smtp_server.transactions if t.rcpt_tos == ["slow@example.org"]]
    assert [t.reply for t in copies] == ["250 OK"]  # delivered once
    assert row(db_url, other).status == "sent"


@pytest.mark.parametrize("how", ["silent", "dropped"])
async def test_a_message_left_unanswered_is_deferred_with_its_outcome_unknown(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer, how: str
) -> None:
    smtp_server.fault(
        "DATA", delay=60 if how == "silent" else 0, drop=how == "dropped", address="u@example.org"
    )
    row_id = insert(db_url, "u@example.org")
    others = [insert(db_url, f"other{n}@example.org") for n in range(3)]
    extra = "[robot]\nconnections = 1\n[smtp]\ndata_timeout_seconds = 0.5\n"
    await drain_ok(write_ini(db_url, smtp_server.port, extra))

    got = row(db_url, row_id)
    assert (got.status, got.attempts, got.smtp_code) == ("deferred", 1, None)
    assert got.next_attempt_at is not None  # retried as any deferral (same Message-ID)
    why = "timed out after 0.5 s waiting for a reply" if how == "silent" else "connection dropped"
    assert got.last_error is not None
    assert got.last_error.startswith(f"outcome unknown: {UNKNOWN}: u@example.org: ")
    assert why in got.last_error and got.last_error.endswith("(at DATA)")
    (unknown, deferred) = [line for line in history(db_url, row_id) if line[0] != "claimed"]
    assert unknown[:2] == ("unknown", None)
    assert unknown[2] is not None and unknown[2].startswith(f"u@example.org: {UNKNOWN} (")
    assert why in unknown[2]
    assert deferred == ("deferred", None, got.last_error)
    assert [row(db_url, i).status for i in others] == ["sent"] * 3
    (copy,) = [t for t in smtp_server.transactions if t.rcpt_tos == ["u@example.org"]]
    assert copy.reply == NO_REPLY


# -- suppression --------------------------------------------------------------------------


async def test_suppressed_addresses_are_skipped_unless_transactional(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    host_sql(
        db_url, "INSERT INTO suppression (address, reason) VALUES ('gone@example.org', 'test')"
    )
    skipped = insert(db_url, "Gone <GONE@example.org>")
    vital = insert(db_url, "gone@example.org", transactional=True)
    cc_only = insert(db_url, "to@example.org", cc="Gone@Example.org", bcc="b@example.org")
    await drain_ok(write_ini(db_url, smtp_server.port))

    got = row(db_url, skipped)
    assert got.status == "suppressed"
    assert got.last_error is not None and "gone@example.org" in got.last_error
    assert row(db_url, vital).status == "sent"
    assert row(db_url, cc_only).status == "sent"
    assert ("suppressed", None, "not sent to gone@example.org") in history(db_url, cc_only)
    envelopes = sorted(r.rcpt_tos for r in smtp_server.received)
    assert envelopes == [["gone@example.org"], ["to@example.org", "b@example.org"]]


async def test_a_bounce_suppresses_the_address_for_the_next_rows(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    smtp_server.fault("RCPT", "550 5.1.1 User unknown", address="nobody@example.org")
    first = insert(db_url, "NoBody@Example.org")
    ini = write_ini(db_url, smtp_server.port)
    await drain_ok(ini)
    assert row(db_url, first).status == "bounced"
    assert suppressed(db_url) == ["nobody@example.org"]

    later = insert(db_url, "nobody@EXAMPLE.org")
    vital = insert(db_url, "nobody@example.org", transactional=True)
    await drain_ok(ini)
    assert row(db_url, later).status == "suppressed"
    assert row(db_url, vital).status == "bounced"  # tried, since transactional: refused again
    assert len(smtp_server.transactions) == 0


# -- transport faults: the account stops, rows stay pending, no attempt burnt --------------


@pytest.mark.parametrize(
    ("command", "reply"),
    [("EHLO", "421 4.3.2 System not accepting network messages"), ("AUTH", "454 4.7.0 Try later")],
)
async def test_server_refusing_the_session_is_a_transport_fault(
    db_url: str, write_ini: WriteIni, tmp_path: Path, command: str, reply: str
) -> None:
    server = TestSMTPServer(auth={"robot": "pw-123-secret"})
    await server.start()
    try:
        rule = server.fault(command, reply)
        secret = tmp_path / "pw"
        secret.write_text("pw-123-secret\n")
        ini = write_ini(
            db_url, server.port, f"[smtp]\nusername = robot\npassword_file = {secret}\n"
        )
        row_id = insert(db_url, "a@example.org")
        code, events = await drain(ini)
    finally:
        await server.stop()
    assert code == 1
    assert rule.fired >= 1
    got = row(db_url, row_id)
    assert (got.status, got.attempts, got.next_attempt_at) == ("pending", 0, None)
    faults = [e for e in events if e["event"] == "account.fault"]
    assert faults and reply.split(" ", 1)[0] in faults[0]["reason"]
    assert "pw-123-secret" not in str(events)
    assert server.received == []


async def test_auth_required_at_mail_is_a_transport_fault(
    db_url: str, write_ini: WriteIni, pipelining: bool
) -> None:
    # the robot has no username configured; pipelined, RCPT and DATA get a 530 too
    server = TestSMTPServer(auth={"robot": "pw"}, pipelining=pipelining)
    await server.start()
    try:
        row_id = insert(db_url, "a@example.org")
        code, events = await drain(write_ini(db_url, server.port))
    finally:
        await server.stop()
    assert code == 1
    got = row(db_url, row_id)
    assert (got.status, got.attempts) == ("pending", 0)
    assert any(e["event"] == "account.fault" and "530" in e["reason"] for e in events)


# -- what a server says is stored safely ----------------------------------------------------


async def test_control_characters_in_replies_are_stored_escaped_and_sending_goes_on(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    # PostgreSQL text cannot hold a NUL: stored as it came, it failed every group commit
    smtp_server.fault("RCPT", "451 4.3.0 temporary \x00 failure", address="nul-rcpt@example.org")
    smtp_server.fault("DATA", "250 2.0.0 queued as \x00ABC", address="nul-data@example.org")
    deferred = insert(db_url, "nul-rcpt@example.org")
    queued = insert(db_url, "nul-data@example.org")
    others = [insert(db_url, f"other{n}@example.org") for n in range(3)]
    await drain_ok(write_ini(db_url, smtp_server.port, "[robot]\nconnections = 1\n"))

    got = row(db_url, deferred)
    assert (got.status, got.attempts, got.smtp_code) == ("deferred", 1, 451)
    assert got.smtp_reply == "4.3.0 temporary \\x00 failure"
    assert got.last_error == "nul-rcpt@example.org: 451 4.3.0 temporary \\x00 failure (at RCPT)"
    got = row(db_url, queued)
    assert (got.status, got.attempts, got.smtp_code) == ("sent", 1, 250)
    assert got.smtp_reply == "2.0.0 queued as \\x00ABC"
    assert [row(db_url, i).status for i in others] == ["sent"] * 3
    assert kinds(db_url, deferred) == ["deferred"] and kinds(db_url, queued) == ["sent"]
    stored = [d or "" for i in (deferred, queued) for _, _, d in history(db_url, i)]
    assert not [text for text in stored if "\x00" in text]
