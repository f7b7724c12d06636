"""Turn an outbox row into a standards-conforming message and its SMTP envelope.

Pure: no database, socket or clock (the caller passes `now`). Raises BadRowError with a
reason a person can act on when the row cannot become a message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, parseaddr
from urllib.parse import quote

import email_validator
from email_validator import EmailNotValidError, validate_email
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from robot.config import Account, AttachmentSettings, BounceSettings
from robot.errors import BadRowError
from robot.htmltext import html_to_text
from robot.queue import OutboxRow

HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
RESERVED_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "sender",
    "reply-to",
    "return-path",
    "dkim-signature",
}

# A self-hosted robot serves intranets too: mail to user@host.local or @localhost is legitimate.
# email-validator documents this list as the one to edit for that.
for _internal in ("local", "localhost", "test", "internal", "lan", "home.arpa"):
    if _internal in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(_internal)


@dataclass(frozen=True)
class Composed:
    """A message ready for the wire."""

    envelope_from: str
    recipients: tuple[str, ...]  # To, Cc and Bcc addresses, each once
    data: bytes
    message_id: str


def compose(
    row: OutboxRow,
    account: Account,
    *,
    now: datetime,
    attachments: AttachmentSettings | None = None,
    max_body_mb: float = 10.0,
    bounces: BounceSettings | None = None,
) -> Composed:
    """Build the message of `row` sent from `account`. Raises BadRowError."""
    _check_body_size(row, max_body_mb)
    _check_text_fields(row)
    subject, body_text, body_html = _render(row)
    if not (body_text or body_html):
        raise BadRowError("the row has neither body_text nor body_html")
    sender = account.sender
    if row.sender and not sender.allow_row_sender:
        raise BadRowError(
            f"the row sets its own sender {row.sender!r}, and [sender] allow_row_sender = false"
        )
    from_address = _address(row.sender or sender.address, "sender")
    display = (
        row.sender_name if row.sender_name is not None else (None if row.sender else sender.name)
    )
    to = _mailbox(row.recipient, "recipient")
    cc = _mailbox_list(row.cc, "cc")
    bcc = _mailbox_list(row.bcc, "bcc")
    if not row.message_id:
        raise BadRowError("the row has no Message-ID (it was not claimed)")

    try:
        msg = EmailMessage(policy=policy.SMTP)
        msg["From"] = Address(display_name=_clean(display or ""), addr_spec=from_address)
        reply_to = row.reply_to or sender.reply_to
        if reply_to:
            msg["Reply-To"] = _mailbox_list(reply_to, "reply_to")
        msg["To"] = to
        if cc:
            msg["Cc"] = cc
        msg["Subject"] = _clean(subject)
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = row.message_id
        extra = _extra_headers(row.headers)
        for name, value in extra:
            msg[name] = value
        own = any(name.lower() == "list-unsubscribe" for name, _ in extra)  # the row's wins
        if sender.list_unsubscribe and not row.transactional and not own:
            for name, value in list_unsubscribe(sender.list_unsubscribe, to.addr_spec, row.id):
                msg[name] = value

        text_part = _with_text_footer(
            body_text if body_text else html_to_text(body_html or ""), sender.footer_text
        )
        msg.set_content(text_part, cte=_cte(text_part))
        if body_html:
            html_part = _with_html_footer(body_html, sender.footer_html)
            msg.add_alternative(html_part, subtype="html", cte=_cte(html_part))
        _attach(msg, row, attachments or AttachmentSettings())
        data = msg.as_bytes()
    except ValueError as exc:  # the email package refuses what it cannot encode safely
        raise BadRowError(f"cannot build the message: {exc}") from None

    recipients: list[str] = []
    for mailbox in (to, *cc, *bcc):
        address = mailbox.addr_spec
        if address.lower() not in (r.lower() for r in recipients):
            recipients.append(address)
    envelope_from = from_address
    if bounces is not None and bounces.verp:
        domain = bounces.verp_domain or from_address.rpartition("@")[2]
        envelope_from = f"bounces+{row.id}@{domain}"
    return Composed(envelope_from, tuple(recipients), data, row.message_id)


def list_unsubscribe(template: str, recipient: str, row_id: int) -> list[tuple[str, str]]:
    """List-Unsubscribe (and, with an https target, RFC 8058's one-click List-Unsubscribe-Post)
    for `recipient`: `{recipient}` (URL-encoded) and `{id}` are replaced in each target."""
    targets = []
    for target in (t.strip() for t in template.split(",") if t.strip()):
        url = target.replace("{recipient}", quote(recipient, safe="")).replace("{id}", str(row_id))
        targets.append(f"<{_clean(url)}>")
    headers = [("List-Unsubscribe", ", ".join(targets))]
    if any(t.startswith("<https://") for t in targets):
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return headers


def _check_body_size(row: OutboxRow, max_body_mb: float) -> None:
    """Reject bodies over the limit (the claim measured them and left them out)."""
    size = row.body_bytes
    if size is None:
        size = sum(len((body or "").encode("utf-8", "surrogateescape"))
                   for body in (row.body_text, row.body_html))  # fmt: skip
    if size > max_body_mb * 1048576:
        raise BadRowError(
            f"body_text and body_html total {size / 1048576:.1f} MiB, over the limit of "
            f"{max_body_mb:g} MiB ([robot] max_body_mb)"
        )


def _check_text_fields(row: OutboxRow) -> None:
    """Reject values that cannot be sent: non-text, undecodable bytes and NUL characters."""
    for name in (
        "sender", "sender_name", "reply_to", "recipient", "cc", "bcc", "subject",
        "body_text", "body_html", "headers", "context",
    ):  # fmt: skip
        value = getattr(row, name)
        if value is None:
            continue
        if not isinstance(value, str):  # SQLite stores whatever a host gives it
            raise BadRowError(f"{name} is not text but {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRowError(f"{name} is not valid UTF-8 text") from None
        if "\x00" in value:
            raise BadRowError(f"{name} contains a NUL character")


def _render(row: OutboxRow) -> tuple[str, str | None, str | None]:
    """Subject and bodies, rendered as sandboxed Jinja2 templates when the row has context."""
    if row.context is None:
        return row.subject, row.body_text, row.body_html
    try:
        context = json.loads(row.context)
    except ValueError as exc:
        raise BadRowError(f"context is not valid JSON: {exc}") from None
    if not isinstance(context, dict):
        raise BadRowError("context must be a JSON object")
    plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
    try:
        subject = plain.from_string(row.subject).render(context)
        body_text = plain.from_string(row.body_text).render(context) if row.body_text else None
        body_html = html.from_string(row.body_html).render(context) if row.body_html else None
    except TemplateError as exc:
        raise BadRowError(f"template error: {exc}") from None
    return subject, body_text, body_html


def _clean(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise BadRowError(f"header value contains a line break: {value[:60]!r}")
    return value


def _address(value: str, field: str) -> str:
    """A bare address, validated (syntax only: no DNS)."""
    _clean(value)
    try:
        valid = validate_email(
            value.strip(), check_deliverability=False, globally_deliverable=False
        )
    except EmailNotValidError as exc:
        raise BadRowError(f"{field}: invalid address {value!r}: {exc}") from None
    return valid.ascii_email or valid.normalized  # IDN domains in their ASCII form


def _mailbox(value: str, field: str) -> Address:
    """`addr` or `Name <addr>` as an Address."""
    _clean(value)
    name, addr = parseaddr(value)
    if not addr:
        raise BadRowError(f"{field}: invalid address {value!r}")
    return Address(display_name=name, addr_spec=_address(addr, field))


def _mailbox_list(value: str | None, field: str) -> list[Address]:
    if not value or not value.strip():
        return []
    _clean(value)
    found = [(name, addr) for name, addr in getaddresses([value]) if name or addr]
    if not found or any(not addr for _, addr in found):
        raise BadRowError(f"{field}: invalid address list {value!r}")
    return [Address(display_name=name, addr_spec=_address(addr, field)) for name, addr in found]


def _extra_headers(raw: str | None) -> list[tuple[str, str]]:
    if raw is None or not raw.strip():
        return []
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise BadRowError(f"headers is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRowError("headers must be a JSON object of name: value")
    found = []
    for name, value in parsed.items():
        if not isinstance(value, str | int):
            raise BadRowError(f"header {name!r}: the value must be a string")
        if not HEADER_NAME.match(name):
            raise BadRowError(f"header name {name!r} is not a valid header field name")
        if name.lower() in RESERVED_HEADERS:
            raise BadRowError(f"header {name!r} is set by the robot; use the row's columns")
        found.append((name, _clean(str(value))))
    return found


def _with_text_footer(body: str, footer: str | None) -> str:
    if not footer:
        return body
    return body.rstrip("\n") + "\n\n-- \n" + footer.replace("\\n", "\n") + "\n"


def _with_html_footer(body: str, footer: str | None) -> str:
    if not footer:
        return body
    closing = body.lower().rfind("</body>")
    if closing == -1:
        return body + footer
    return body[:closing] + footer + body[closing:]


def _cte(body: str) -> str:
    """8bit would need the server's 8BITMIME; quoted-printable is always safe."""
    return (
        "7bit"
        if body.isascii() and max(map(len, body.splitlines() or [""])) <= 900
        else ("quoted-printable")
    )


def _attach(msg: EmailMessage, row: OutboxRow, settings: AttachmentSettings) -> None:
    total = sum(len(a.content) for a in row.attachments)
    if row.attachment_bytes is not None:  # measured by the database; big files not read
        total = max(total, row.attachment_bytes)
    if not row.attachments and not total:
        return
    if not settings.allowed:
        raise BadRowError("the row has attachments and [attachments] allowed = false")
    limit = int(settings.max_mb * 1024 * 1024)
    if total > limit:
        raise BadRowError(
            f"attachments total {total / 1048576:.1f} MiB, over the limit of "
            f"{settings.max_mb:g} MiB ([attachments] max_mb)"
        )
    for attachment in row.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        if not maintype or not subtype or "\n" in attachment.content_type:
            raise BadRowError(
                f"attachment {attachment.filename!r}: bad content type {attachment.content_type!r}"
            )
        _clean(attachment.filename)
        msg.add_attachment(
            attachment.content,
            maintype=maintype,
            subtype=subtype,
            filename=attachment.filename,
        )
