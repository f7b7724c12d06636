"""Direct delivery end to end: `[smtp] direct = true`, a DNS server run by the test
(tests/support/dns.py) that the robot's resolver asks, and the recipients' mail hosts as
test SMTP servers on 127.0.0.2, 127.0.0.3, ... (all of 127/8 is loopback), all on one port
(`direct_port`). An address with nothing listening on that port refuses the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.robot_run import drain
from tests.support.dns import TestDNSServer
from tests.support.smtpd import TestSMTPServer

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
NOBODY = "127.0.0.99"  # nothing listens there: connection refused


@dataclass
class Net:
    """The DNS server and the mail hosts of one test."""

    dns: TestDNSServer
    port: int = 0  # the SMTP port every mail host listens on
    servers: list[TestSMTPServer] = field(default_factory=list)

    async def mail_host(self, address: str, **kwargs: Any) -> TestSMTPServer:
        """Start a test SMTP server on `address`, port `port` (the first one picks it)."""
        server = TestSMTPServer(host=address, port=self.port, **kwargs)
        await server.start()
        self.port = server.port
        self.servers.append(server)
        return server

    def ini(self, write_ini: WriteIni, db_url: str, extra: str = "") -> Path:
        """robot.ini for direct delivery through this net."""
        assert self.port, "start a mail host first: it picks the port"
        return write_ini(
            db_url,
            self.port,
            "[smtp]\ndirect = true\ndns_servers = 127.0.0.1\n"
            f"dns_port = {self.dns.port}\ndirect_port = {self.port}\n{extra}",
        )


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    dns = TestDNSServer()
    await dns.start()
    net = Net(dns)
    try:
        yield net
    finally:
        for server in net.servers:
            await server.stop()
        await dns.stop()


def insert(url: str, recipient: str, **columns: Any) -> int:
    values = {"recipient": recipient, "subject": "direct", "body_text": "hello", **columns}
    names, marks = ", ".join(values), ", ".join("?" for _ in values)
    ((row_id,),) = host_sql(
        url, f"INSERT INTO outbox ({names}) VALUES ({marks}) RETURNING id", list(values.values())
    )
    return int(row_id)


def row(url: str, row_id: int) -> dict[str, Any]:
    columns = "status, attempts, smtp_code, smtp_reply, last_error, next_attempt_at, message_id"
    ((*values,),) = host_sql(url, f"SELECT {columns} FROM outbox WHERE id = ?", [row_id])
    return dict(zip(columns.split(", "), values, strict=True))


def refused_events(url: str, row_id: int) -> list[tuple[int | None, str]]:
    return [
        (code, detail)
        for code, detail in host_sql(
            url,
            "SELECT smtp_code, detail FROM outbox_event WHERE outbox_id = ? AND kind = 'refused' "
            "ORDER BY id",
            [row_id],
        )
    ]


def suppressed(url: str) -> list[str]:
    return [a for (a,) in host_sql(url, "SELECT address FROM suppression ORDER BY 1")]


def domain_events(events: list[dict[str, Any]], domain: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "direct.domain" and e["domain"] == domain]


async def drain_ok(ini: Path) -> list[dict[str, Any]]:
    """Drain; direct delivery never makes a fault of the account, so the exit code is 0."""
    code, events = await drain(ini)
    assert code == 0, [e for e in events if e.get("level") in ("warning", "error")]
    assert not [e for e in events if e["event"] == "account.fault"]
    return events


async def test_two_domains_of_one_row_each_reach_their_own_mx(
    db_url: str, write_ini: WriteIni, net: Net
) -> None:
    alpha = await net.mail_host("127.0.0.2")
    beta = await net.mail_host("127.0.0.3")
    net.dns.add("alpha.test", "MX", "10 mx.alpha.test.")
    net.dns.add("mx.alpha.test", "A", "127.0.0.2")
    net.dns.add("beta.test", "MX", "10 mx.beta.test.")
    net.dns.add("mx.beta.test", "A", "127.0.0.3")
    row_id = insert(
        db_url, "Ann <ann@alpha.test>", cc="bob@Beta.test", bcc="carl@ALPHA.test, dora@beta.test"
    )
    await drain_ok(net.ini(write_ini, db_url))

    assert len(alpha.received) == len(beta.received) == 1  # one transaction per domain
    assert alpha.received[0].rcpt_tos == ["ann@alpha.test", "carl@ALPHA.test"]
    assert beta.received[0].rcpt_tos == ["bob@Beta.test", "dora@beta.test"]
    assert alpha.helos == beta.helos == ["robot.test.example"]
    assert not alpha.auth_attempts and not beta.auth_attempts
    stored = row(db_url, row_id)
    assert (stored["status"], stored["attempts"], stored["smtp_code"]) == ("sent", 1, 250)
    for server in (alpha, beta):
        message = server.received[0].message()
        assert message["Message-ID"] == stored["message_id"]
        assert "Bcc" not in message
    assert ("alpha.test.", "MX") in net.dns.queries and ("beta.test.", "MX") in net.dns.queries


@SQLITE_ONLY
async def test_mx_preference_order_skips_a_refused_connection_and_a_4xx_ehlo(
    db_url: str, write_ini: WriteIni, net: Net
) -> None:
    second = await net.mail_host("127.0.0.3")
    second.fault("EHLO", "421 4.3.2 Too busy, try another MX")
    third = await net.mail_host("127.0.0.4")
    last = await net.mail_host("127.0.0.5")
    # listed out of order on purpose; the robot sorts by preference
    net.dns.add("alpha.test", "MX", "40 mx4.alpha.test.", "20 mx2.alpha.test.")
    net.dns.add("alpha.test", "MX", "10 mx1.alpha.test.", "30 mx3.alpha.test.")
    net.dns.add("mx1.alpha.test", "A", NOBODY)
    net.dns.add("mx2.alpha.test", "A", "127.0.0.3")
    net.dns.add("mx3.alpha.test", "A", "127.0.0.4")
    net.dns.add("mx4.alpha.test", "A", "127.0.0.5")
    row_id = insert(db_url, "ann@alpha.test")
    events = await drain_ok(net.ini(write_ini, db_url))

    assert row(db_url, row_id)["status"] == "sent"
    assert second.connections == 1 and second.received == []
    assert [r.rcpt_tos for r in third.received] == [["ann@alpha.test"]]
    assert last.connections == 0  # never needed
    (event,) = domain_events(events, "alpha.test")
    assert event["host"] == f"mx3.alpha.test[127.0.0.4]:{net.port}"
    first_skip, second_skip = event["skipped"]
    assert "mx1.alpha.test" in first_skip and "connection refused" in first_skip
    assert "mx2.alpha.test" in second_skip and "421" in second_skip


@SQLITE_ONLY
async def test_a_421_before_data_moves_on_to_the_next_mx(
    db_url: str, write_ini: WriteIni, net: Net
) -> None:
    first = await net.mail_host("127.0.0.2")
    first.fault("MAIL", "421 4.7.0 Closing, too many connections")
    second = await net.mail_host("127.0.0.3")
    net.dns.add("alpha.test", "MX", "10 mx1.alpha.test.", "20 mx2.alpha.test.")
    net.dns.add("mx1.alpha.test", "A", "127.0.0.2")
    net.dns.add("mx2.alpha.test", "A", "127.0.0.3")
    row_id = insert(db_url, "ann@alpha.test")
    await drain_ok(net.ini(write_ini, db_url))
    assert row(db_url, row_id)["status"] == "sent"
    assert first.received == [] and len(second.received) == 1


@SQLITE_ONLY
async def test_a_domain_without_mx_gets_mail_at_its_address_record(
    db_url: str, write_ini: WriteIni, net: Net
) -> None:
    server = await net.mail_host("127.0.0.2")
    net.dns.add("gamma.test", "A", "127.0.0.2")  # no MX: the domain is its own mail host
    row_id = insert(db_url, "gil@gamma.test")
    events = await drain_ok(net.ini(write_ini, db_url))
    assert row(db_url, row_id)["status"] == "sent"
    assert [r.rcpt_tos for r in server.received] == [["gil@gamma.test"]]
    assert ("gamma.test.", "MX") in net.dns.queries
    assert domain_events(events, "gamma.test")[0]["host"] == f"gamma.test[127.0.0.2]:{net.port}"


async def test_null_mx_and_a_domain_that_does_not_exist_bounce(
    db_url: str, write_ini: WriteIni, net: Net
) -> None:
    server = await net.mail_host("127.0.0.2")
    net.dns.add("nomail.test", "MX", "0 .")  # RFC 7505: this domain takes no mail
    net.dns.add("nomail.test", "A", "127.0.0.2")  # ... whatever its A record says
    null_mx = insert(db_url, "Nina@nomail.test")
    missing = insert(db_url, "nick@gone.test")  # gone.test is not in the zone: NXDOMAIN
    await drain_ok(net.ini(write_ini, db_url))

    bounced = row(db_url, null_mx)
    assert (bounced["status"], bounced["attempts"]) == ("bounced", 1)
    assert "null MX" in bounced["last_error"] and "Nina@nomail.test" in bounced["last_error"]
    gone = row(db_url, missing)
    assert gone["status"] == "bounced"
    assert "gone.test does not exist" in gone["last_error"]
    assert server.connections == 0
    # The null MX is the domain's own word: suppressed. NXDOMAIN may be a DNS mishap: not.
    assert suppressed(db_url) == ["nina@nomail.test"]


async def test_unreachable_or_unresolvable_domains_are_deferred_and_the_account_goes_on(
    db_url: str, write_ini: WriteIni, net: Net
) -> None:
    healthy = await net.mail_host("127.0.0.2")
    net.dns.add("alpha.test", "MX", "10 mx.alpha.test.")
    net.dns.add("mx.alpha.test", "A", "127.0.0.2")
    net.dns.add("down.test", "MX", "10 mx1.down.test.", "20 mx2.down.test.")
    net.dns.add("mx1.down.test", "A", NOBODY)
    net.dns.add("mx2.down.test", "A", "127.0.0.98")
    net.dns.fail("broken.test")  # SERVFAIL
    net.dns.ignore("slow.test")  # no answer: the resolver times out
    down = insert(db_url, "dan@down.test", priority=10)
    broken = insert(db_url, "bea@broken.test", priority=10)
    slow = insert(db_url, "sam@slow.test", priority=10)
    fine = insert(db_url, "ann@alpha.test")  # claimed after the others
    await drain_ok(net.ini(write_ini, db_url, "timeout_seconds = 2\n"))

    for row_id, why in (
        (down, "no mail host of down.test took the message"),
        (broken, "SERVFAIL"),
        (slow, "DNS timed out"),
    ):
        stored = row(db_url, row_id)
        assert (stored["status"], stored["attempts"]) == ("deferred", 1), stored
        assert stored["next_attempt_at"] is not None
        assert why in stored["last_error"], stored["last_error"]
    assert "connection refused" in row(db_url, down)["last_error"]
    assert row(db_url, fine)["status"] == "sent"  # the account was not paused
    assert len(healthy.received) == 1
    assert suppressed(db_url) == []


async def test_an_unknown_user_bounces_and_is_suppressed(
    db_url: str, write_ini: WriteIni, net: Net
) -> None:
    alpha = await net.mail_host("127.0.0.2")
    alpha.rcpt_replies["nobody@alpha.test"] = "550 5.1.1 No such user"
    beta = await net.mail_host("127.0.0.3")
    beta.rcpt_replies["ghost@beta.test"] = "550 5.1.1 Unknown here"
    net.dns.add("alpha.test", "MX", "10 mx.alpha.test.")
    net.dns.add("mx.alpha.test", "A", "127.0.0.2")
    net.dns.add("beta.test", "MX", "10 mx.beta.test.")
    net.dns.add("mx.beta.test", "A", "127.0.0.3")
    net.dns.add("down.test", "MX", "10 mx.down.test.")
    net.dns.add("mx.down.test", "A", NOBODY)
    alone = insert(db_url, "Nobody@alpha.test")
    partly = insert(db_url, "ann@alpha.test", cc="ghost@beta.test")
    nowhere = insert(db_url, "nobody@alpha.test", cc="dan@down.test", transactional=True)
    await drain_ok(net.ini(write_ini, db_url))

    bounced = row(db_url, alone)
    assert (bounced["status"], bounced["smtp_code"]) == ("bounced", 550)
    assert bounced["smtp_reply"] == "5.1.1 No such user"
    assert bounced["last_error"] == "Nobody@alpha.test: 550 5.1.1 No such user (at RCPT)"
    # sent, because ann@alpha.test took it; the other domain's refusal is in the history
    sent = row(db_url, partly)
    assert (sent["status"], sent["smtp_code"]) == ("sent", 250)
    assert refused_events(db_url, partly) == [(550, "ghost@beta.test: 550 5.1.1 Unknown here")]
    assert [r.rcpt_tos for r in beta.received] == []
    # nothing accepted, one domain may still take it: deferred, both refusals recorded
    deferred = row(db_url, nowhere)
    assert deferred["status"] == "deferred"
    assert "no mail host of down.test" in deferred["last_error"]
    details = [detail for _, detail in refused_events(db_url, nowhere)]
    assert details[0] == "nobody@alpha.test: 550 5.1.1 No such user"
    assert details[1].startswith("dan@down.test: 4.4.1 no mail host of down.test took the message")
    assert suppressed(db_url) == ["ghost@beta.test", "nobody@alpha.test"]


@SQLITE_ONLY
async def test_starttls_is_used_when_offered_and_the_certificate_checked(
    db_url: str, write_ini: WriteIni, net: Net, tls_ca: trustme.CA, ca_file: Path
) -> None:
    server = await net.mail_host("127.0.0.2", tls_cert=tls_ca.issue_cert("mx.alpha.test"))
    net.dns.add("alpha.test", "MX", "10 mx.alpha.test.")
    net.dns.add("mx.alpha.test", "A", "127.0.0.2")
    row_id = insert(db_url, "ann@alpha.test")
    events = await drain_ok(net.ini(write_ini, db_url, f"ca_file = {ca_file}\n"))
    assert row(db_url, row_id)["status"] == "sent"
    assert [r.tls for r in server.received] == [True]
    assert server.connections == 1
    assert domain_events(events, "alpha.test")[0]["tls"] == "verified"


@SQLITE_ONLY
async def test_an_untrusted_certificate_still_gets_the_mail_over_tls(
    db_url: str, write_ini: WriteIni, net: Net, ca_file: Path
) -> None:
    stranger = trustme.CA()  # not the CA of ca_file: the certificate fails verification
    server = await net.mail_host("127.0.0.2", tls_cert=stranger.issue_cert("mx.alpha.test"))
    net.dns.add("alpha.test", "MX", "10 mx.alpha.test.")
    net.dns.add("mx.alpha.test", "A", "127.0.0.2")
    row_id = insert(db_url, "ann@alpha.test")
    events = await drain_ok(net.ini(write_ini, db_url, f"ca_file = {ca_file}\n"))
    assert row(db_url, row_id)["status"] == "sent"
    assert [r.tls for r in server.received] == [True]  # encrypted all the same
    assert server.connections == 2  # the verified try, then the one without verification
    assert domain_events(events, "alpha.test")[0]["tls"] == "unverified"


@SQLITE_ONLY
async def test_plain_text_when_starttls_is_not_offered(
    db_url: str, write_ini: WriteIni, net: Net
) -> None:
    server = await net.mail_host("127.0.0.2")
    net.dns.add("alpha.test", "MX", "10 mx.alpha.test.")
    net.dns.add("mx.alpha.test", "A", "127.0.0.2")
    insert(db_url, "ann@alpha.test")
    events = await drain_ok(net.ini(write_ini, db_url))
    assert [r.tls for r in server.received] == [False]
    assert domain_events(events, "alpha.test")[0]["tls"] == "none"


@SQLITE_ONLY
async def test_the_test_command_sends_directly_too(
    db_url: str, write_ini: WriteIni, net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    """`email-robot test --to` on a direct account asks DNS and the MX, not a relay."""
    import asyncio

    from robot.cli.main import main

    mx = await net.mail_host("127.0.0.2")
    net.dns.add("school.test", "MX", "10 mx.school.test.")
    net.dns.add("mx.school.test", "A", "127.0.0.2")
    ini = net.ini(write_ini, db_url)
    code = await asyncio.to_thread(main, ["-c", str(ini), "test", "--to", "head@school.test"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.startswith("250 ") and "mx.school.test[127.0.0.2]" in out.out
    assert [r.rcpt_tos for r in mx.received] == [["head@school.test"]]
    net.dns.add("gone.test", "MX", "0 .")
    code = await asyncio.to_thread(main, ["-c", str(ini), "test", "--to", "x@gone.test"])
    assert code == 1
    assert "x@gone.test" in capsys.readouterr().err
