"""Turn an outbox row into a standards-conforming message and its SMTP envelope.

Pure: no database, socket or clock (the caller passes `now`). Raises BadRowError with a
reason a person can act on when the row cannot become a message.
"""

from __future__ import annotations

import binascii
import functools
import inspect
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses, parseaddr
from typing import Any
from urllib.parse import quote

import email_validator
from email_validator import EmailNotValidError, validate_email

from robot.compose.html_text import html_to_text
from robot.compose.templates import Rendered, Templates, render
from robot.config import Account, AttachmentSettings, BounceSettings
from robot.errors import BadRowError
from robot.outbox.rows import OutboxRow

ADDRESS_HEADERS = ("From", "Reply-To", "To", "Cc")
# `Display Name <addr>` with a name of plain words (no dots, quotes, commas, comments) and
# an address without specials: split without the email.utils parser, which gives the same.
_ATOMS = r'[^\x00-\x20"(),:;<>@\[\\\]]+'  # address characters without specials or spaces
NAMED_ADDRESS = re.compile(rf'\s*([^\x00-\x1f"(),.:;<>@\[\\\]]*?)\s*<({_ATOMS}@{_ATOMS})>\s*')
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
    redirected_from: tuple[str, ...] = ()  # the row's recipients, when sent to redirect_to


def compose(
    row: OutboxRow,
    account: Account,
    *,
    now: datetime,
    attachments: AttachmentSettings | None = None,
    max_body_mb: float = 10.0,
    bounces: BounceSettings | None = None,
    rendered: Rendered | None = None,
    redirect_to: str | None = None,
) -> Composed:
    """Build the message of `row` sent from `account`. Raises BadRowError.

    A row with a context is rendered here unless `rendered` brings its templates already
    rendered (by a process that bounds the time they take: robot.daemon.rendering). With
    `redirect_to` (staging), the message goes to that address alone and names the row's
    recipients in X-Redirected-From."""
    if row.problem:  # a value the outbox could not read as its column's type
        raise BadRowError(row.problem)
    check_values(row, max_body_mb)
    if row.context is None:
        subject, body_text, body_html = row.subject, row.body_text, row.body_html
    else:
        if rendered is None:
            rendered = render(templates_of(row), max_body_mb)
        subject, body_text, body_html = rendered.subject, rendered.body_text, rendered.body_html
        _check_body_size(body_text, body_html, None, max_body_mb)  # what goes on the wire
    if not (body_text or body_html):
        raise BadRowError("the row has neither body_text nor body_html")
    sender = account.sender
    if row.sender and not sender.allow_row_sender:
        raise BadRowError(
            f"the row sets its own sender {row.sender!r}, and [sender] allow_row_sender = false"
        )
    from_address = _address(row.sender, "sender") if row.sender else _own_address(sender.address)
    display = (
        row.sender_name if row.sender_name is not None else (None if row.sender else sender.name)
    )
    to = _mailbox(row.recipient, "recipient")
    cc = _mailbox_list(row.cc, "cc")
    bcc = _mailbox_list(row.bcc, "bcc")
    if not row.message_id:
        raise BadRowError("the row has no Message-ID (it was not claimed)")

    extra = _extra_headers(row.headers)
    headers: list[tuple[str, Any]] = [("From", (_clean(display or ""), from_address))]
    reply_to = row.reply_to or sender.reply_to
    if reply_to:
        headers.append(("Reply-To", _mailbox_list(reply_to, "reply_to")))
    headers.append(("To", [to]))
    if cc:
        headers.append(("Cc", cc))
    headers += [
        ("Subject", _clean(subject)),
        ("Date", _date_header(now)),
        ("Message-ID", row.message_id),
        *extra,
    ]
    if redirect_to is not None:
        headers.append(("X-Redirected-From", _redirected_from(to, cc, bcc)))
    own = any(name.lower() == "list-unsubscribe" for name, _ in extra)  # the row's wins
    if sender.list_unsubscribe and not row.transactional and not own:
        headers += list_unsubscribe(sender.list_unsubscribe, to[1], row.id)
    text_part = _with_text_footer(
        body_text if body_text else html_to_text(body_html or ""), sender.footer_text
    )
    html_part = _with_html_footer(body_html, sender.footer_html) if body_html else None
    settings = attachments or AttachmentSettings()
    _check_attachments(row, settings)
    try:
        if row.attachments:
            data = _write_email_message(headers, text_part, html_part, row)
        else:
            data = _write_fast(headers, text_part, html_part)
    except ValueError as exc:  # the email package refuses what it cannot encode safely
        raise BadRowError(f"cannot build the message: {exc}") from None

    recipients: list[str] = []
    seen: set[str] = set()
    for _, address in (to, *cc, *bcc):
        if address.lower() not in seen:
            seen.add(address.lower())
            recipients.append(address)
    envelope_from = from_address
    if bounces is not None and bounces.verp:
        domain = bounces.verp_domain or from_address.rpartition("@")[2]
        envelope_from = f"bounces+{row.id}@{domain}"
    if redirect_to is not None:
        return Composed(
            envelope_from, (redirect_to,), data, row.message_id, redirected_from=tuple(recipients)
        )
    return Composed(envelope_from, tuple(recipients), data, row.message_id)


def _date_header(now: datetime) -> str:
    """The Date header's value of `now` (RFC 5322, whole seconds); in UTC, made once a
    second for all the messages of that second."""
    if now.tzinfo is not UTC:
        return format_datetime(now)
    return _utc_second(now.replace(microsecond=0))


@functools.lru_cache(maxsize=4)
def _utc_second(second: datetime) -> str:
    return format_datetime(second)


def _redirected_from(to: Mailbox, cc: list[Mailbox], bcc: list[Mailbox]) -> str:
    """`to a; cc b, c; bcc d`: the recipients a redirected message would have gone to.

    Bcc is listed too: a redirected message goes to the one QA address and to none of the
    row's recipients, so no To or Cc recipient can see it, and QA needs it to check the row."""
    parts = [f"to {to[1]}"]
    for name, boxes in (("cc", cc), ("bcc", bcc)):
        if boxes:
            parts.append(f"{name} {', '.join(address for _, address in boxes)}")
    return "; ".join(parts)


Mailbox = tuple[str, str]  # (display name, address)


def _write_email_message(
    headers: list[tuple[str, Any]], text_part: str, html_part: str | None, row: OutboxRow
) -> bytes:
    """The message through the stdlib email package (attachments): thorough and slow."""
    msg = EmailMessage(policy=policy.SMTP)
    for name, value in headers:
        if name == "From":
            msg[name] = Address(display_name=value[0], addr_spec=value[1])
        elif name in ADDRESS_HEADERS:
            msg[name] = [Address(display_name=n, addr_spec=a) for n, a in value]
        else:
            msg[name] = value
    msg.set_content(text_part, cte=_cte(text_part))
    if html_part is not None:
        msg.add_alternative(html_part, subtype="html", cte=_cte(html_part))
    _attach(msg, row)
    return msg.as_bytes()


def _write_fast(headers: list[tuple[str, Any]], text_part: str, html_part: str | None) -> bytes:
    """The same message written directly: ASCII headers as they are (folded), others as
    RFC 2047 encoded words, bodies 7bit or quoted-printable, CRLF line ends."""
    out = [_header_line(name, value) for name, value in headers]
    out.append("MIME-Version: 1.0")
    text_cte = _cte(text_part)
    if html_part is None:
        out.append(_part_headers("plain", text_cte))
        return ("\r\n".join(out) + "\r\n\r\n").encode("ascii") + _encode_body(text_part, text_cte)
    html_cte = _cte(html_part)
    boundary = f"==============={secrets.randbelow(10**19):019d}=="
    out.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = ("\r\n".join(out) + "\r\n\r\n").encode("ascii")
    parts = [
        f"--{boundary}\r\n{_part_headers('plain', text_cte)}\r\n\r\n".encode("ascii")
        + _encode_body(text_part, text_cte),
        f"--{boundary}\r\n{_part_headers('html', html_cte)}\r\n\r\n".encode("ascii")
        + _encode_body(html_part, html_cte),
    ]
    return head + b"\r\n".join(parts) + f"\r\n--{boundary}--\r\n".encode("ascii")


def _part_headers(subtype: str, cte: str) -> str:
    charset = "us-ascii" if cte == "7bit" else "utf-8"
    return f'Content-Type: text/{subtype}; charset="{charset}"\r\nContent-Transfer-Encoding: {cte}'


def _encode_body(body: str, cte: str) -> bytes:
    """7bit or quoted-printable (`cte`, _cte of `body`), always ending with CRLF."""
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if cte == "7bit":
        return text.replace("\n", "\r\n").encode("ascii")
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n")


def _header_line(name: str, value: Any) -> str:
    """One header field, folded to 78 columns where it can be."""
    if name == "From":
        return f"{name}: {_format_mailbox(value)}"
    if name in ADDRESS_HEADERS:
        return _fold(name, [_format_mailbox(box) for box in value], ", ")
    if value.isascii():
        return _fold(name, value.split(" "), " ")
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}"


def _format_mailbox(box: Mailbox) -> str:
    name, address = box
    if not name:
        return address
    if name.isascii():
        return formataddr((name, address))
    return f"{Header(name, 'utf-8').encode()} <{address}>"


def _fold(name: str, words: list[str], separator: str) -> str:
    """`name: ` and `words` joined by `separator`, a line break before any word that would
    pass column 78 (unfolding restores the value). Very long words: RFC 2047 instead."""
    joined = separator.join(words)
    if words and len(name) + 2 + len(joined) <= 78:  # the usual short field: one line
        return f"{name}: {joined}"
    if any(len(word) > 900 for word in words):
        encoded = Header(separator.join(words), "utf-8", header_name=name)
        return f"{name}: {encoded.encode(linesep=chr(13) + chr(10))}"
    lines: list[str] = []
    line = f"{name}: {words[0]}" if words else f"{name}:"
    for word in words[1:]:
        if len(line) + len(separator) + len(word) > 78:
            lines.append(line + separator.rstrip())
            line = " " + word
        else:
            line += separator + word
    lines.append(line)
    return "\r\n".join(lines)


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


def check_values(row: OutboxRow, max_body_mb: float) -> None:
    """Refuse a row whose bodies are over the limit or whose values cannot be sent (checked
    before its templates are rendered). Raises BadRowError."""
    _check_body_size(row.body_text, row.body_html, row.body_bytes, max_body_mb)
    _check_text_fields(row)


def templates_of(row: OutboxRow) -> Templates:
    """The templates of a row that has a context."""
    if row.context is None:
        raise ValueError(f"row {row.id} has no context: nothing to render")
    return Templates(row.subject, row.body_text, row.body_html, row.context)


def _check_body_size(
    body_text: str | None, body_html: str | None, measured: int | None, max_body_mb: float
) -> None:
    """Reject bodies over the limit (`measured`: the size the claim measured, when it left
    big bodies out)."""
    size = measured
    if size is None:
        size = sum(len((body or "").encode("utf-8", "surrogatepass"))
                   for body in (body_text, body_html))  # fmt: skip
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
        if not value.isascii():  # ASCII (a flag of the string: no scan) is UTF-8
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRowError(f"{name} is not valid UTF-8 text") from None
        if "\x00" in value:
            raise BadRowError(f"{name} contains a NUL character")


def _clean(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise BadRowError(f"header value contains a line break: {value[:60]!r}")
    return value


def _address(value: str, field: str, as_written: str | None = None) -> str:
    """A bare address, validated (syntax only: no DNS). An internationalised domain comes
    back in its ASCII form; a non-ASCII local part is refused: it needs SMTPUTF8, which the
    robot does not use. Errors quote `as_written`, the field as the row holds it (the parser
    may have kept only a piece of it: 'not' of 'not an address')."""
    _clean(value)
    value = value.strip()
    if _plainly_valid(value):
        return value
    shown = value if as_written is None else as_written
    try:
        valid = validate_email(value, check_deliverability=False, globally_deliverable=False)
    except EmailNotValidError as exc:
        raise BadRowError(f"{field}: invalid address {shown!r}: {exc}") from None
    if not valid.local_part.isascii():
        raise BadRowError(
            f"{field}: {shown!r} has a non-ASCII local part, which needs SMTPUTF8 "
            "(not supported: write the address in ASCII)"
        )
    return valid.ascii_email or valid.normalized  # IDN domains in their ASCII form


@functools.lru_cache(maxsize=64)
def _own_address(address: str) -> str:
    """An account's own sender address, validated as a row's (_address), once."""
    return _address(address, "sender")


# The everyday address, which email-validator would accept unchanged: a dot-atom of letters,
# digits and !#$%&'*+/=?^_`{|}~- before the @, LDH labels after it, a last label of letters.
# Anything else (quoted local parts, IDN, odd lengths) goes through email-validator.
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


def _plainly_valid(address: str) -> bool:
    if len(address) > 254 or not PLAIN_ADDRESS.fullmatch(address):
        return False
    local, _, domain = address.rpartition("@")
    top = domain.rpartition(".")[2].lower()
    return len(local) <= 64 and top not in email_validator.SPECIAL_USE_DOMAIN_NAMES


# Pythons with the fix for CVE-2023-27043 (3.11.10, 3.12.6 and later, and patched builds such
# as Debian 12's 3.11.2) parse strictly by default: `bad@@x` or `a <a@x>; b@x` come back as
# ('', '') where older ones split them. The robot checks every address itself and sends to
# exactly the one it parsed, so it asks for the same lenient parse everywhere: a row gets the
# same outcome, and the same words, whichever Python runs the robot.
_LENIENT = "strict" in inspect.signature(getaddresses).parameters


def lenient_getaddresses(value: str) -> list[tuple[str, str]]:
    """email.utils.getaddresses of one header value, parsed as every Python version does."""
    if _LENIENT:
        return getaddresses([value], strict=False)
    return getaddresses([value])


def lenient_parseaddr(value: str) -> tuple[str, str]:
    """email.utils.parseaddr, parsed as every Python version does."""
    if _LENIENT:
        return parseaddr(value, strict=False)
    return parseaddr(value)


def _mailbox(value: str, field: str) -> Mailbox:
    """`addr` or `Name <addr>` as (name, validated address); more than one is refused."""
    _clean(value)
    if "," in value or ";" in value:  # a list, or a quoted name or comment with a comma
        _refuse_a_list(value, field)
    name, addr = split_mailbox(value)
    if not addr:
        raise BadRowError(f"{field}: invalid address {value!r}")
    return name, _address(addr, field, value)


def _refuse_a_list(value: str, field: str) -> None:
    """Raise BadRowError when `value` holds more than one address (the parser would keep
    the first and drop the others without a word)."""
    found = [addr or name for name, addr in lenient_getaddresses(value) if name or addr]
    if len(found) <= 1:
        return
    hint = "" if all("@" in part for part in found) else " (a name with a comma goes in quotes)"
    raise BadRowError(
        f"{field} holds {len(found)} addresses ({', '.join(found)}); put one in {field} "
        f"and the others in cc or bcc{hint}"
    )


def split_mailbox(value: str) -> tuple[str, str]:
    """(display name, address) of `addr` or `Name <addr>`, as email.utils.parseaddr gives
    them; the common plain forms without running its parser."""
    bare = value.strip()
    if PLAIN_ADDRESS.fullmatch(bare):
        return "", bare
    named = NAMED_ADDRESS.fullmatch(value)
    if named is not None:
        return " ".join(named.group(1).split()), named.group(2)
    return lenient_parseaddr(value)


def addresses_in(values: list[str]) -> set[str]:
    """Every address (lower-cased) in these address-list values: To, Cc, Bcc."""
    found = set()
    for value in values:
        if not value or value.isspace():
            continue
        if "," not in value:
            addr = split_mailbox(value)[1]
            if addr:
                found.add(addr.lower())
            continue
        found.update(addr.lower() for _, addr in lenient_getaddresses(value) if addr)
    return found


def _mailbox_list(value: str | None, field: str) -> list[Mailbox]:
    if not value or not value.strip():
        return []
    _clean(value)
    found = [(name, addr) for name, addr in lenient_getaddresses(value) if name or addr]
    if not found or any(not addr for _, addr in found):
        raise BadRowError(f"{field}: invalid address list {value!r}")
    return [(name, _address(addr, field, value)) for name, addr in found]


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


def _check_attachments(row: OutboxRow, settings: AttachmentSettings) -> None:
    """Refuse files when they are not allowed or together over the limit."""
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


def _attach(msg: EmailMessage, row: OutboxRow) -> None:
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
