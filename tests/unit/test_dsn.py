"""Reading delivery status notifications: real samples in tests/data/dsn (see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robot.bounces.dsn import Action, Failure, Kind, Report, parse

DATA = Path(__file__).parent.parent / "data" / "dsn"


def report_of(name: str) -> Report:
    return parse((DATA / name).read_bytes())


def test_postfix_user_unknown_with_verp() -> None:
    report = report_of("postfix-user-unknown.eml")
    assert report.kind is Kind.DSN
    assert report.verp_id == 42
    assert report.original_message_id == "<42.1f2e3d4c5b6a7980@example.org>"
    assert report.reporter == "mail.example.org"
    assert report.failures == (
        Failure(
            "Nobody@Example.NET",
            "5.1.1",
            "smtp; 550 5.1.1 <Nobody@Example.NET>: Recipient address rejected: User unknown "
            "in virtual mailbox table",
            550,
            True,
        ),
    )


def test_postfix_delay_warning_is_no_failure() -> None:
    report = report_of("postfix-delayed.eml")
    assert report.kind is Kind.DSN
    assert report.failures == ()
    [delayed] = report.delayed
    assert (delayed.address, delayed.action, delayed.status) == (
        "slow@example.com",
        Action.DELAYED,
        "4.4.1",
    )
    # the Message-ID comes from the text/rfc822-headers part
    assert report.original_message_id == "<43.0a1b2c3d4e5f6071@example.org>"
    assert report.verp_id is None


def test_exim_status_5_0_0_takes_the_precise_code_of_its_diagnostic() -> None:
    report = report_of("exim-failed.eml")
    [failure] = report.failures
    assert failure.address == "gone@example.de"
    assert failure.status == "5.1.1"  # Exim writes Status: 5.0.0 for every failure
    assert failure.smtp_code == 550
    assert failure.suppresses
    assert report.original_message_id == "<77.5e6f7a8b9c0d1e2f@example.org>"
    assert report.reporter == "smtp.example.de"


def test_gmail_report_with_folded_multi_line_diagnostic() -> None:
    report = report_of("gmail-failed.eml")
    [failure] = report.failures
    assert failure.address == "no.such.person@example.com"
    assert (failure.status, failure.smtp_code, failure.suppresses) == ("5.1.1", 550, True)
    assert failure.diagnostic is not None
    assert "\n" not in failure.diagnostic
    assert "does not exist" in failure.diagnostic
    assert report.original_message_id == "<88.3c4d5e6f7a8b9c0d@example.org>"
    assert report.reporter == "googlemail.com"


def test_microsoft_recipient_not_found_5_1_10() -> None:
    report = report_of("microsoft-not-found.eml")
    [failure] = report.failures
    assert failure.address == "Pupil.Parent@contoso.com"
    assert (failure.status, failure.smtp_code, failure.suppresses) == ("5.1.10", 550, True)
    assert report.original_message_id == "<91.7d8e9fa0b1c2d3e4@example.org>"


def test_microsoft_policy_refusal_bounces_without_suppressing() -> None:
    report = report_of("microsoft-access-denied.eml")
    [failure] = report.failures
    assert (failure.status, failure.smtp_code, failure.suppresses) == ("5.4.1", 550, False)
    # the returned headers have no Message-ID: only the VERP address names the row
    assert report.original_message_id is None
    assert report.verp_id == 93


@pytest.mark.parametrize("name", ["human-reply.eml", "vacation-autoreply.eml"])
def test_people_and_auto_replies_are_not_reports(name: str) -> None:
    report = report_of(name)
    assert report.kind is Kind.NONE
    assert report.failures == () and report.delayed == ()
    # a reply's In-Reply-To names our message, but it is never taken for a returned one
    assert report.original_message_id is None


def test_an_auto_reply_to_the_verp_address_still_shows_the_row() -> None:
    assert report_of("vacation-autoreply.eml").verp_id == 42


# -- flufl.bounce's own samples: real reports from the field -----------------------------------


@pytest.mark.parametrize(
    ("name", "address", "status", "code", "suppresses"),
    [
        ("flufl-dsn_14.eml", "userx@example.com.dk", "5.1.1", 550, True),
        ("flufl-simple_42.eml", "david...@gmail.com", "5.7.1", 550, False),
        # Action: failed under a 4.x.x status: given up, so bounced, but never suppressed
        ("flufl-dsn_02.eml", "zzzzz@example.uk", "4.4.7", None, False),
    ],
)
def test_rfc3464_reports_from_the_field(
    name: str, address: str, status: str, code: int | None, suppresses: bool
) -> None:
    report = report_of(name)
    assert report.kind is Kind.DSN
    [failure] = report.failures
    assert (failure.address, failure.status, failure.smtp_code, failure.suppresses) == (
        address,
        status,
        code,
        suppresses,
    )


def test_a_delayed_report_from_the_field() -> None:
    report = report_of("flufl-dsn_05.eml")
    assert report.failures == ()
    assert [(d.address, d.status) for d in report.delayed] == [("userx@example.cz", "4.4.1")]


@pytest.mark.parametrize(
    ("name", "address", "status", "code", "message_id"),
    [
        # Exim before RFC 3464: the failure and the returned copy in plain text
        (
            "flufl-exim_01.eml",
            "userx@its.example.nl",
            "5.1.1",
            553,
            "<19990920022322.A19735@stereo.rotzorg.org>",
        ),
        ("flufl-postfix_01.eml", "xxxxx@local.ie", "5.1.1", 550, None),
        ("flufl-qmail_01.eml", "userx@example.de", "5.0.0", None, None),
        ("flufl-yahoo_11.eml", "bad_user@aol.com", "5.1.1", 550, None),
    ],
)
def test_non_standard_bounces_are_recognised(
    name: str, address: str, status: str, code: int | None, message_id: str | None
) -> None:
    report = report_of(name)
    assert report.kind is Kind.NON_STANDARD
    [failure] = report.failures
    assert (failure.address, failure.status, failure.smtp_code) == (address, status, code)
    assert failure.suppresses is status.startswith("5.1.")
    assert failure.diagnostic and address.lower() in failure.diagnostic.lower()
    assert report.original_message_id == message_id


def test_garbage_is_not_a_report() -> None:
    for raw in (b"", b"\xff\xfe\x00garbage", b"Content-Type: multipart/report\n\n--x--\n"):
        assert parse(raw).kind is Kind.NONE


def test_a_delivery_status_part_without_recipients_falls_back_to_the_detectors() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.com\n"
        b"To: bounces+7@example.org\n"
        b"Subject: Undelivered Mail Returned to Sender\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
        b"--B\nContent-Description: Notification\nContent-Type: text/plain\n\n"
        b"This is the Postfix program at host mx.example.com.\n\n"
        b"I'm sorry to have to inform you that your message could not\n"
        b"be delivered to one or more recipients.\n\n"
        b"                   The Postfix program\n\n"
        b"<lost@example.net>: host mx.example.net[192.0.2.1] said: 550 5.1.1 No such user\n\n"
        b"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
        b"--B--\n"
    )
    report = parse(raw)
    assert report.verp_id == 7
    assert [(f.address, f.status, f.smtp_code) for f in report.failures] == [
        ("lost@example.net", "5.1.1", 550)
    ]
