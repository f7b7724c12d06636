"""The fast writer and the email package write the same message: every header decodes to
the same value and every body part to the same text, for a corpus of awkward rows."""

from __future__ import annotations

import email
import email.policy
import itertools
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any

import pytest

from robot.compose import message as composer
from tests.unit.test_compose import NOW, make_row

SUBJECTS = [
    "Hello",
    "",
    "Grüße aus Zürich \u2013 ballot notice \u21165",
    "A fairly long ASCII subject line that will certainly need folding somewhere past the "
    "seventy-eighth column, twice over if we keep going like this for a while",
    "x" * 950,
    "emoji 🎉 party",
    "  leading and  double  spaces ",
    "=?utf-8?q?looks_encoded?=",
]
NAMES = ["", "Ann", "Doe, John", 'The "Boss"', "Zoë Ångström", "Ünïcödé, Ms"]
BODIES = [
    "Hello Ann.\n",
    "no newline at the end",
    ".leading dot\n..two dots\n",
    "trailing spaces   \nand tabs\t\n",
    "é" * 300 + "\n" + "long " * 400,
    "windows\r\nline\r\nends\r\n",
    "=3D looks like qp = sign\n",
]


def both(row: Any) -> tuple[EmailMessage, EmailMessage]:
    captured: dict[str, Any] = {}
    real_fast = composer._write_fast

    def spy(headers: list[tuple[str, Any]], text_part: str, html_part: str | None) -> bytes:
        captured["args"] = (headers, text_part, html_part)
        return real_fast(headers, text_part, html_part)

    composer._write_fast = spy
    try:
        composed = composer.compose(row, ACCOUNT, now=NOW)
    finally:
        composer._write_fast = real_fast
    headers, text_part, html_part = captured["args"]
    slow = composer._write_email_message(headers, text_part, html_part, row)
    return parse(composed.data), parse(slow)


def parse(data: bytes) -> EmailMessage:
    for line in data.split(b"\r\n"):
        assert len(line) <= 998, line[:80]
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


ACCOUNT: Any = None


@pytest.fixture(autouse=True)
def account(tmp_path: Any) -> None:
    from tests.unit.test_compose import SENDER, make_account

    global ACCOUNT
    ACCOUNT = make_account(tmp_path, SENDER + "footer_text = Example School\n")


CASES = list(
    itertools.islice(
        itertools.product(SUBJECTS, NAMES, BODIES, [None, "<p>Hi <b>there</b> é</p>"]), 0, None
    )
)


@pytest.mark.parametrize(("subject", "name", "body", "html"), CASES[::3])
def test_fast_and_email_package_agree(subject: str, name: str, body: str, html: str | None) -> None:
    recipient = formataddr((name, "ann@example.com"))
    row = make_row(
        subject=subject,
        recipient=recipient,
        sender_name=name or None,
        cc="Bob <bob@example.net>, carol@example.org",
        body_text=body,
        body_html=html,
        headers='{"X-Campaign": "june", "X-Long": "' + "word " * 30 + '"}',
    )
    fast, slow = both(row)
    for field in ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "X-Campaign"):
        assert str(fast[field]) == str(slow[field]), field
    assert " ".join(str(fast["X-Long"]).split()) == " ".join(str(slow["X-Long"]).split())
    assert fast.get_content_type() == slow.get_content_type()
    plain_fast, plain_slow = fast.get_body(("plain",)), slow.get_body(("plain",))
    assert plain_fast is not None and plain_slow is not None
    assert plain_fast.get_content() == plain_slow.get_content()
    if html:
        html_fast, html_slow = fast.get_body(("html",)), slow.get_body(("html",))
        assert html_fast is not None and html_slow is not None
        assert html_fast.get_content() == html_slow.get_content()
    assert not fast.defects and not slow.defects


MAILBOXES = [
    "ann@example.org",
    "  ann@example.org ",
    "Ann <ann@example.org>",
    "  Ann   Lee  <ann@example.org>  ",
    "Zoë Ångström <zoe@example.org>",
    "<ann@example.org>",
    "J. O'Neil <jo@example.org>",
    '"Doe, John" <john@example.org>',
    "Ann (work) <ann@example.org>",
    "ann@example.org (Ann)",
    "Ann <ann@example.org> trailing",
    "Ann <ann @example.org>",
    "Ann <<ann@example.org>>",
    'Ann <"a b"@example.org>',
    "Ann\t<ann@example.org>",
    "Ann <ann@[127.0.0.1]>",
    "not an address",
    "",
]


# The reference is parseaddr as the robot calls it: lenient on every Python (see
# lenient_parseaddr), so that a row is read alike by a robot on any Python version.
@pytest.mark.parametrize("value", MAILBOXES)
def test_split_mailbox_agrees_with_parseaddr(value: str) -> None:
    assert composer.split_mailbox(value) == composer.lenient_parseaddr(value)


def test_split_mailbox_agrees_with_parseaddr_on_generated_values() -> None:
    import random

    pieces = ["Ann", " ", "  ", "Zoë", ".", ",", '"', "<", ">", "@", "a@b.org", "(c)", "\t", "x"]
    rng = random.Random(5)
    for _ in range(3000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 7)))
        assert composer.split_mailbox(value) == composer.lenient_parseaddr(value), value


def test_addresses_in_lower_cases_and_reads_lists() -> None:
    found = composer.addresses_in(["Ann <Ann@Example.org>", "b@x.org, C <c@x.org>", ""])
    assert found == {"ann@example.org", "b@x.org", "c@x.org"}
