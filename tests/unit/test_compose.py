"""robot.compose.message: an outbox row becomes MIME bytes and an envelope, or a BadRowError."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from robot.compose.message import Composed, compose
from robot.config import Account, AttachmentSettings, load_settings
from robot.errors import BadRowError
from robot.outbox.rows import Attachment, OutboxRow

NOW = datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC)

SENDER = """
[sender]
address = robot@example.org
name = Email Robot
reply_to = office@example.org
"""


def make_account(tmp_path: Path, sender: str = SENDER) -> Account:
    path = tmp_path / "robot.ini"
    path.write_text(sender, encoding="utf-8")
    return load_settings(path, environ={}).default_account


@pytest.fixture
def account(tmp_path: Path) -> Account:
    return make_account(tmp_path)


def make_row(**changes: Any) -> OutboxRow:
    values: dict[str, Any] = {
        "id": 42,
        "created_at": NOW,
        "send_after": None,
        "status": "sending",
        "priority": 0,
        "account": None,
        "sender": None,
        "sender_name": None,
        "reply_to": None,
        "recipient": "ann@example.com",
        "cc": None,
        "bcc": None,
        "subject": "Hello",
        "body_text": "Hello Ann.\n",
        "body_html": None,
        "headers": None,
        "context": None,
        "batch": None,
        "transactional": False,
        "attempts": 1,
        "next_attempt_at": None,
        "claimed_by": "robot-1",
        "claimed_until": None,
        "message_id": "<42.abc@example.org>",
        "smtp_code": None,
        "smtp_reply": None,
        "last_error": None,
        "sent_at": None,
        "updated_at": None,
    }
    values.update(changes)
    return OutboxRow(**values)


def parse(composed: Composed) -> EmailMessage:
    message = email.message_from_bytes(composed.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def build(account: Account, **changes: Any) -> tuple[Composed, EmailMessage]:
    composed = compose(make_row(**changes), account, now=NOW)
    return composed, parse(composed)


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    assert part.get_content_type() == f"text/{subtype}"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # the parser keeps the wire's line ends


def bad_row(account: Account, **changes: Any) -> str:
    with pytest.raises(BadRowError) as caught:
        compose(make_row(**changes), account, now=NOW)
    return str(caught.value)


# Headers ------------------------------------------------------------------------------------


def test_plain_message_headers(account: Account) -> None:
    composed, message = build(account)

    sender = message["From"].addresses[0]
    assert sender.display_name == "Email Robot"
    assert sender.addr_spec == "robot@example.org"
    assert message["Reply-To"].addresses[0].addr_spec == "office@example.org"
    assert message["To"].addresses[0].addr_spec == "ann@example.com"
    assert message["Subject"] == "Hello"
    assert parsedate_to_datetime(message["Date"]) == NOW
    assert message["Message-ID"] == "<42.abc@example.org>"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "Hello Ann."

    assert composed.message_id == "<42.abc@example.org>"
    assert composed.envelope_from == "robot@example.org"
    assert composed.recipients == ("ann@example.com",)


def test_row_sender_name_keeps_account_address(account: Account) -> None:
    _, message = build(account, sender_name="Ann's Teacher")
    sender = message["From"].addresses[0]
    assert sender.display_name == "Ann's Teacher"
    assert sender.addr_spec == "robot@example.org"


def test_row_sender_alone_is_sent_bare(account: Account) -> None:
    composed, message = build(account, sender="teacher@example.org")
    sender = message["From"].addresses[0]
    assert sender.display_name == ""
    assert sender.addr_spec == "teacher@example.org"
    assert composed.envelope_from == "teacher@example.org"


def test_row_sender_with_name(account: Account) -> None:
    _, message = build(account, sender="teacher@example.org", sender_name="Mrs Brown")
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Mrs Brown", "teacher@example.org")


def test_non_ascii_display_name(account: Account) -> None:
    _, message = build(account, sender_name="Zoë Ærøskøbing")
    assert message["From"].addresses[0].display_name == "Zoë Ærøskøbing"


def test_row_reply_to_overrides_account(account: Account) -> None:
    _, message = build(account, reply_to="Desk <desk@example.org>, other@example.org")
    assert [a.addr_spec for a in message["Reply-To"].addresses] == [
        "desk@example.org",
        "other@example.org",
    ]


def test_no_reply_to_when_none_configured(tmp_path: Path) -> None:
    account = make_account(tmp_path, "[sender]\naddress = robot@example.org\n")
    _, message = build(account)
    assert "Reply-To" not in message
    assert message["From"].addresses[0].display_name == ""


def test_recipients_to_cc_bcc(account: Account) -> None:
    composed, message = build(
        account,
        recipient="Ann Smith <ann@example.com>",
        cc="Bob <bob@example.com>, carol@example.com",
        bcc="Dave Secret <dave@example.net>, ANN@example.com",
    )
    to = message["To"].addresses[0]
    assert (to.display_name, to.addr_spec) == ("Ann Smith", "ann@example.com")
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [
        ("Bob", "bob@example.com"),
        ("", "carol@example.com"),
    ]
    assert "Bcc" not in message
    assert b"dave" not in composed.data.lower()
    assert composed.recipients == (
        "ann@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.net",
    )


@pytest.mark.parametrize(
    "subject",
    [
        "Grüße aus Köln \u2013 日本語のテスト ✓",
        "Réunion des parents d'élèves du jeudi 23 mai: ordre du jour, salle, horaires et "
        "inscription à la garderie — merci de répondre avant vendredi ☺",
        "",
    ],
)
def test_subject_round_trips(account: Account, subject: str) -> None:
    composed, message = build(account, subject=subject)
    assert message["Subject"] == subject
    assert composed.data.isascii()  # encoded words, not raw 8-bit headers


def test_extra_headers(account: Account) -> None:
    headers = {"X-Campaign": "spring-2024", "X-Priority": 1, "X-Note": "café"}
    _, message = build(account, headers=json.dumps(headers))
    assert message["X-Campaign"] == "spring-2024"
    assert message["X-Priority"] == "1"
    assert message["X-Note"] == "café"


@pytest.mark.parametrize("headers", [None, "", "  ", "{}"])
def test_empty_headers_column(account: Account, headers: str | None) -> None:
    _, message = build(account, headers=headers)
    assert message["Subject"] == "Hello"


def test_lines_are_crlf(account: Account) -> None:
    composed, _ = build(
        account,
        body_text="one\ntwo\n\nthree ünïcode\n",
        body_html="<p>one</p>\n<p>two</p>",
        subject="ü " * 60,
        attachments=(Attachment("a.txt", "text/plain", b"x\ny\n"),),
    )
    data = composed.data
    assert data.count(b"\n") == data.count(b"\r\n") > 20
    assert data.count(b"\r") == data.count(b"\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


# Bodies -------------------------------------------------------------------------------------


def test_text_and_html_make_alternative(account: Account) -> None:
    _, message = build(account, body_text="Plain words.", body_html="<p>Rich <b>words</b>.</p>")
    assert message.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert body(message, "plain").strip() == "Plain words."
    assert "<b>words</b>" in body(message, "html")


def test_html_only_gets_a_generated_text_part(account: Account) -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<p>Dear Ann,</p><p>please <a href='https://example.org/form?id=7&amp;x=1'>fill in "
        "the form</a>.</p></body></html>"
    )
    _, message = build(account, body_text=None, body_html=html)
    assert message.get_content_type() == "multipart/alternative"
    text = body(message, "plain")
    assert "Dear Ann," in text
    assert "fill in the form (https://example.org/form?id=7&x=1)" in text
    assert "color" not in text
    assert "<" not in text
    assert body(message, "html").count("fill in") == 1


def test_non_ascii_body_round_trips(account: Account) -> None:
    text = "Grüße, Zoë! 日本語 €100\n" + "long line " * 120 + "\n"
    _, message = build(account, body_text=text, body_html="<p>Grüße, Zoë! 日本語</p>")
    assert body(message, "plain") == text
    assert "Grüße, Zoë! 日本語" in body(message, "html")


FOOTERS = """
[sender]
address = robot@example.org
footer_text = Example School, 1 Main Street
footer_html = <p class="footer">Example School, 1 Main Street</p>
"""


def test_footers_on_both_parts(tmp_path: Path) -> None:
    account = make_account(tmp_path, FOOTERS)
    _, message = build(
        account,
        body_text="Hello Ann.",
        body_html="<html><body><p>Hello Ann.</p></body></html>",
        transactional=True,
    )
    text = body(message, "plain")
    assert text.index("Hello Ann.") < text.index("Example School, 1 Main Street")
    html = body(message, "html")
    footer = html.index('<p class="footer">')
    assert html.index("<p>Hello Ann.</p>") < footer < html.lower().index("</body>")


def test_footer_on_generated_text_part(tmp_path: Path) -> None:
    account = make_account(tmp_path, FOOTERS)
    _, message = build(account, body_text=None, body_html="<p>Hello <i>Ann</i>.</p>")
    text = body(message, "plain")
    assert "Hello Ann." in text
    assert text.index("Hello Ann.") < text.index("Example School, 1 Main Street")
    assert text.count("Example School") == 1
    assert body(message, "html").endswith('<p class="footer">Example School, 1 Main Street</p>\n')


def test_text_only_row_gets_only_the_text_footer(tmp_path: Path) -> None:
    account = make_account(tmp_path, FOOTERS)
    _, message = build(account)
    assert message.get_content_type() == "text/plain"
    assert "Example School, 1 Main Street" in message.get_content()
    assert 'class="footer"' not in message.get_content()


# Templates ----------------------------------------------------------------------------------


def test_context_renders_templates(account: Account) -> None:
    context = {"name": "<Ann & Bob>", "items": ["pen", "book"], "total": 3}
    _, message = build(
        account,
        subject="Order for {{ name }}",
        body_text="Dear {{ name }}: {{ items | join(', ') }} ({{ total }})",
        body_html="<p>Dear {{ name }}</p>{% for i in items %}<li>{{ i }}</li>{% endfor %}",
        context=json.dumps(context),
    )
    assert message["Subject"] == "Order for <Ann & Bob>"
    assert body(message, "plain").strip() == "Dear <Ann & Bob>: pen, book (3)"
    html = body(message, "html")
    assert "<p>Dear &lt;Ann &amp; Bob&gt;</p>" in html
    assert "<li>pen</li><li>book</li>" in html


def test_without_context_braces_are_literal(account: Account) -> None:
    _, message = build(account, subject="{{ not a template }}", body_text="{% nope %}")
    assert message["Subject"] == "{{ not a template }}"
    assert body(message, "plain").strip() == "{% nope %}"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"body_text": "Hi {{ nmae }}", "context": '{"name": "Ann"}'}, ["nmae"]),
        ({"subject": "{{ who }}", "context": "{}"}, ["who"]),
        ({"body_html": "<p>{{ x.y }}</p>", "context": '{"x": {}}'}, ["template"]),
        ({"body_text": "{% if %}", "context": "{}"}, ["template"]),
        ({"body_text": "{{ ''.__class__.__mro__ }}", "context": "{}"}, ["template"]),
        ({"context": "{not json"}, ["context", "JSON"]),
        ({"context": "[1, 2]"}, ["context"]),
    ],
)
def test_template_errors_fail_the_row(
    account: Account, changes: dict[str, str], words: list[str]
) -> None:
    message = bad_row(account, **changes)
    for word in words:
        assert word in message


# Attachments --------------------------------------------------------------------------------


def test_attachment_with_non_ascii_filename(account: Account) -> None:
    content = bytes(range(256)) * 4
    composed, message = build(
        account,
        body_text=None,
        body_html="<p>See attached.</p>",
        attachments=(
            Attachment("Überweisung März ñ.pdf", "application/pdf", content),
            Attachment("notes.txt", "text/plain", b"plain notes\n"),
        ),
    )
    assert message.get_content_type() == "multipart/mixed"
    found = list(message.iter_attachments())
    assert [part.get_filename() for part in found] == ["Überweisung März ñ.pdf", "notes.txt"]
    assert found[0].get_content_type() == "application/pdf"
    assert found[0].get_content() == content
    assert b"filename*=utf-8''%C3%9Cberweisung" in composed.data
    assert composed.data.isascii()
    assert body(message, "plain").strip() == "See attached."


def test_attachments_at_the_limit_are_accepted(account: Account) -> None:
    limit = AttachmentSettings(allowed=True, max_mb=1)
    row = make_row(
        attachments=(
            Attachment("a.bin", "application/octet-stream", b"a" * 524288),
            Attachment("b.bin", "application/octet-stream", b"b" * 524288),
        )
    )
    message = parse(compose(row, account, now=NOW, attachments=limit))
    assert len(list(message.iter_attachments())) == 2


def test_attachments_over_max_mb(account: Account) -> None:
    limit = AttachmentSettings(allowed=True, max_mb=1)
    row = make_row(
        attachments=(
            Attachment("a.bin", "application/octet-stream", b"a" * 524288),
            Attachment("b.bin", "application/octet-stream", b"b" * 524289),
        )
    )
    with pytest.raises(BadRowError, match="max_mb"):
        compose(row, account, now=NOW, attachments=limit)


def test_attachments_not_allowed(account: Account) -> None:
    row = make_row(attachments=(Attachment("a.txt", "text/plain", b"x"),))
    with pytest.raises(BadRowError, match="allowed"):
        compose(row, account, now=NOW, attachments=AttachmentSettings(allowed=False))
    # Without attachments the same settings are no obstacle.
    plain = compose(make_row(), account, now=NOW, attachments=AttachmentSettings(allowed=False))
    assert parse(plain)["Subject"] == "Hello"


@pytest.mark.parametrize("content_type", ["pdf", "", "text/plain\nX-Evil: 1"])
def test_attachment_bad_content_type(account: Account, content_type: str) -> None:
    message = bad_row(account, attachments=(Attachment("a.pdf", content_type, b"x"),))
    assert "content type" in message


def test_attachment_filename_with_line_break(account: Account) -> None:
    message = bad_row(
        account, attachments=(Attachment("a.pdf\r\nX-Evil: 1", "application/pdf", b"x"),)
    )
    assert "line break" in message


# Bad rows -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.net"}, ["line break"]),
        ({"subject": "Hi\nthere"}, ["line break"]),
        ({"recipient": "ann@example.com\r\nBcc: victim@example.net"}, ["line break"]),
        ({"cc": "bob@example.com\nBcc: victim@example.net"}, ["line break"]),
        ({"sender_name": "Robot\r\nBcc: victim@example.net"}, ["line break"]),
        ({"headers": '{"X-Tag": "a\\r\\nBcc: victim@example.net"}'}, ["line break"]),
        ({"headers": '{"X-Tag\\r\\nBcc": "victim@example.net"}'}, ["header name"]),
        ({"headers": '{"X Tag": "x"}'}, ["header name"]),
        ({"headers": '{"X-Tag:": "x"}'}, ["header name"]),
        ({"recipient": "not-an-address"}, ["recipient", "not-an-address"]),
        ({"recipient": "ann@@example.com"}, ["recipient"]),
        ({"recipient": ""}, ["recipient"]),
        ({"recipient": "Ann <ann@>"}, ["recipient"]),
        ({"cc": "bob@example.com, nobody"}, ["cc", "nobody"]),
        ({"bcc": "dave@"}, ["bcc"]),
        ({"sender": "robot at example.org"}, ["sender"]),
        ({"reply_to": "desk@"}, ["reply_to"]),
        ({"body_text": None, "body_html": None}, ["body"]),
        ({"body_text": "", "body_html": ""}, ["body"]),
        ({"headers": "{not json"}, ["headers", "JSON"]),
        ({"headers": '["X-Tag", "x"]'}, ["headers"]),
        ({"headers": '{"X-Tag": ["a", "b"]}'}, ["X-Tag"]),
        ({"headers": '{"X-Tag": null}'}, ["X-Tag"]),
        ({"body_text": "nul \x00 byte"}, ["body_text", "NUL"]),
        ({"message_id": None}, ["Message-ID"]),
    ],
)
def test_bad_rows(account: Account, changes: dict[str, Any], words: list[str]) -> None:
    message = bad_row(account, **changes)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("changes", "quoted"),
    [
        ({"recipient": "not an address"}, "recipient: invalid address 'not an address': "),
        ({"recipient": "Ann <bad@@x>"}, "recipient: invalid address 'Ann <bad@@x>'"),
        ({"cc": "bad@@x"}, "cc: invalid address 'bad@@x': "),
        ({"cc": "ok@example.org, not an address"}, "invalid address 'ok@example.org, not an "),
        ({"bcc": "nobody here"}, "bcc: invalid address 'nobody here': "),
        ({"reply_to": "the desk"}, "reply_to: invalid address 'the desk': "),
    ],
)
def test_address_errors_quote_the_value_as_the_row_holds_it(
    account: Account, changes: dict[str, str], quoted: str
) -> None:
    """The parser keeps a piece of a bad value ('not' of 'not an address', '@x' of
    'bad@@x'): the error quotes the whole value, which is what the host can look for."""
    assert quoted in bad_row(account, **changes)


@pytest.mark.parametrize(
    "name",
    ["From", "to", "CC", "Bcc", "Subject", "Date", "Message-ID", "Content-Type",
     "MIME-Version", "Content-Transfer-Encoding", "Sender", "Reply-To", "Return-Path"],
)  # fmt: skip
def test_reserved_header_names(account: Account, name: str) -> None:
    message = bad_row(account, headers=json.dumps({name: "x@example.org"}))
    assert name in message


def test_row_sender_refused_when_not_allowed(tmp_path: Path) -> None:
    account = make_account(tmp_path, SENDER + "allow_row_sender = false\n")
    message = bad_row(account, sender="teacher@example.org")
    assert "allow_row_sender" in message
    assert "teacher@example.org" in message
    # A display name alone is not a different sender.
    _, allowed = build(account, sender_name="Mrs Brown")
    assert allowed["From"].addresses[0].addr_spec == "robot@example.org"


def test_bad_row_error_is_not_raised_for_the_next_row(account: Account) -> None:
    with pytest.raises(BadRowError):
        compose(make_row(recipient="broken"), account, now=NOW)
    _, message = build(account)  # compose keeps no state between rows
    assert message["To"].addresses[0].addr_spec == "ann@example.com"


def test_compose_is_deterministic_for_the_same_row(account: Account) -> None:
    row = make_row(body_html="<p>x</p>")
    first = parse(compose(row, account, now=NOW))
    second = parse(compose(dataclasses.replace(row), account, now=NOW))
    assert first["Message-ID"] == second["Message-ID"] == row.message_id
    assert first["Date"] == second["Date"]


def test_date_is_each_message_own_second_and_time_zone(account: Account) -> None:
    """The Date header is made once a second: a message of the next second, or of the same
    instant in another time zone, still gets its own."""
    row = make_row()
    dates = [
        parse(compose(row, account, now=now))["Date"]
        for now in (
            NOW.replace(microsecond=100),
            NOW.replace(microsecond=999_999),
            NOW + timedelta(seconds=1),
            NOW.astimezone(timezone(timedelta(hours=2))),
            NOW,
        )
    ]
    assert dates == [
        "Fri, 17 May 2024 09:30:15 +0000",
        "Fri, 17 May 2024 09:30:15 +0000",
        "Fri, 17 May 2024 09:30:16 +0000",
        "Fri, 17 May 2024 11:30:15 +0200",
        "Fri, 17 May 2024 09:30:15 +0000",
    ]


def test_idn_domain_is_sent_in_ascii(account: Account) -> None:
    composed, message = build(account, recipient="Zoë <zoe@bücher.example>")
    assert composed.recipients == ("zoe@xn--bcher-kva.example",)
    to = message["To"].addresses[0]
    assert to.display_name == "Zoë"
    assert to.domain == "xn--bcher-kva.example"
    assert composed.data.isascii()


def test_quoted_display_names_with_commas(account: Account) -> None:
    composed, message = build(
        account, cc='"Smith, John" <john@example.com>, "O\'Brien, Ann" <ann.ob@example.com>'
    )
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [
        ("Smith, John", "john@example.com"),
        ("O'Brien, Ann", "ann.ob@example.com"),
    ]
    assert composed.recipients[1:] == ("john@example.com", "ann.ob@example.com")


@pytest.mark.parametrize(
    ("recipient", "reason"),
    [
        (
            "two@example.org, other@example.org",
            "recipient holds 2 addresses (two@example.org, other@example.org); "
            "put one in recipient and the others in cc or bcc",
        ),
        (
            "Ann <ann@example.org>; bob@example.org",
            "recipient holds 2 addresses (ann@example.org, bob@example.org); "
            "put one in recipient and the others in cc or bcc",
        ),
        (
            "Doe, Jane <jane@example.org>",
            "recipient holds 2 addresses (Doe, jane@example.org); put one in recipient and "
            "the others in cc or bcc (a name with a comma goes in quotes)",
        ),
    ],
)
def test_recipient_with_more_than_one_address_is_refused(
    account: Account, recipient: str, reason: str
) -> None:
    """The column holds one address: a second one was dropped without a word."""
    assert bad_row(account, recipient=recipient) == reason


@pytest.mark.parametrize(
    ("recipient", "name", "address"),
    [
        ('"Doe, Jane" <jane@example.org>', "Doe, Jane", "jane@example.org"),
        ("jane@example.org (Doe, Jane)", "Doe, Jane", "jane@example.org"),
        ("jane@example.org,", "", "jane@example.org"),
    ],
)
def test_recipient_with_a_comma_in_its_name_is_one_address(
    account: Account, recipient: str, name: str, address: str
) -> None:
    composed, message = build(account, recipient=recipient)
    to = message["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in to] == [(name, address)]
    assert composed.recipients == (address,)


# -- List-Unsubscribe, VERP --------------------------------------------------------------------


def test_list_unsubscribe_one_click_for_bulk_mail(tmp_path: Path) -> None:
    account = make_account(
        tmp_path,
        SENDER + "list_unsubscribe = https://example.org/u?r={recipient}&m={id}, "
        "mailto:leave@example.org?subject=leave-{id}\n",
    )
    message = parse(compose(make_row(recipient="Ann <ann+x@example.com>"), account, now=NOW))
    assert message["List-Unsubscribe"] == (
        "<https://example.org/u?r=ann%2Bx%40example.com&m=42>, "
        "<mailto:leave@example.org?subject=leave-42>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    vital = parse(compose(make_row(transactional=True), account, now=NOW))
    assert "List-Unsubscribe" not in vital and "List-Unsubscribe-Post" not in vital


def test_list_unsubscribe_mailto_only_has_no_one_click(tmp_path: Path) -> None:
    account = make_account(tmp_path, SENDER + "list_unsubscribe = mailto:leave@example.org\n")
    message = parse(compose(make_row(), account, now=NOW))
    assert message["List-Unsubscribe"] == "<mailto:leave@example.org>"
    assert "List-Unsubscribe-Post" not in message


def test_a_rows_own_list_unsubscribe_wins(tmp_path: Path) -> None:
    account = make_account(tmp_path, SENDER + "list_unsubscribe = mailto:leave@example.org\n")
    row = make_row(headers=json.dumps({"List-Unsubscribe": "<https://shop.example/u/9>"}))
    message = parse(compose(row, account, now=NOW))
    assert message.get_all("List-Unsubscribe") == ["<https://shop.example/u/9>"]


def test_list_unsubscribe_must_be_https_or_mailto(tmp_path: Path) -> None:
    from robot.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[sender\] list_unsubscribe: give https:// or mailto:"):
        make_account(tmp_path, SENDER + "list_unsubscribe = http://example.org/u\n")


def test_verp_envelope_sender_names_the_row(tmp_path: Path) -> None:
    from robot.config import BounceSettings

    account = make_account(tmp_path)
    plain = compose(make_row(), account, now=NOW)
    assert plain.envelope_from == "robot@example.org"
    verp = compose(make_row(), account, now=NOW, bounces=BounceSettings(verp=True))
    assert verp.envelope_from == "bounces+42@example.org"
    assert parse(verp)["From"] == "Email Robot <robot@example.org>"
    other = BounceSettings(verp=True, verp_domain="bounce.example.net")
    assert compose(make_row(), account, now=NOW, bounces=other).envelope_from == (
        "bounces+42@bounce.example.net"
    )
