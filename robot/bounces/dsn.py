"""Delivery status notifications: a message's bytes become what happened to which recipient.

Pure: no database, socket or clock. RFC 3464 reports are read field by field; the common
non-standard bounces (old Postfix, Exim, qmail, Exchange...) are recognised by flufl.bounce.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, message_from_string
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses
from typing import NamedTuple

from flufl.bounce import all_failures

from robot.outcome.replies import RECIPIENT_ADDRESS_CODES

VERP = re.compile(r"\bbounces\+(\d{1,18})@([A-Za-z0-9.-]+)", re.IGNORECASE)
ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
SMTP_CODE = re.compile(r"^\s*(?:[A-Za-z][\w-]*\s*;)?\s*([245]\d\d)(?:[\s-]|$)")
CODE_BEFORE_STATUS = re.compile(r"\b([245]\d\d)[\s:-]+[245]\.\d{1,3}\.\d{1,3}\b")
MESSAGE_ID = re.compile(r"<[^<>\s]+@[^<>\s]+>")
MESSAGE_ID_LINE = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
# Where the returned copy starts in a plain-text bounce: what follows is not the report.
COPY_MARKER = re.compile(
    r"^\s*-{2,}.*\b(copy|original|returned|undelivered|below this line)\b",
    re.IGNORECASE | re.MULTILINE,
)
STATUS_PARTS = ("message/delivery-status", "message/global-delivery-status")
RETURNED_PARTS = (
    "message/rfc822",
    "message/global",
    "text/rfc822-headers",
    "message/rfc822-headers",  # a common misspelling
    "message/global-headers",
)
# Outer headers a DSN carries its envelope recipient in (our VERP address), best first.
ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
MAX_DIAGNOSTIC = 500


class Action(enum.StrEnum):
    """What a report says happened to one recipient."""

    FAILED = "failed"  # given up: the message will not arrive
    DELAYED = "delayed"  # still being tried
    OTHER = "other"  # delivered, relayed, expanded: nothing to do


class Kind(enum.StrEnum):
    """How the message was recognised."""

    DSN = "dsn"  # RFC 3464 multipart/report
    NON_STANDARD = "non-standard"  # a bounce flufl.bounce recognised
    NONE = "none"  # not a delivery report: a person, an auto-reply, anything else


class Failure(NamedTuple):
    """One recipient the report says will never get the message (the shape `record_dsn` takes)."""

    address: str
    status: str  # RFC 3463 enhanced status, "5.1.1"
    diagnostic: str | None  # the remote server's words, "smtp; 550 5.1.1 <a@b>: no such user"
    smtp_code: int | None  # the basic reply code from the diagnostic, 550
    suppresses: bool  # the address itself is bad for good (5.1.1, 5.1.2, ...): suppress it


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient block of a report."""

    address: str
    action: Action
    status: str
    diagnostic: str | None

    @property
    def smtp_code(self) -> int | None:
        """The basic SMTP reply code the diagnostic starts with, if any."""
        match = SMTP_CODE.match(self.diagnostic or "") or CODE_BEFORE_STATUS.search(
            self.diagnostic or ""
        )
        return int(match.group(1)) if match else None

    @property
    def suppresses(self) -> bool:
        """True for a permanent 5.1.x status about the recipient's address (not 5.1.7/5.1.8,
        which blame our sender address): the same rule as a 5xx at RCPT."""
        parts = self.status.split(".")
        return parts[0] == "5" and parts[1] == "1" and parts[2] in RECIPIENT_ADDRESS_CODES


@dataclass(frozen=True)
class Report:
    """What a message in the bounce mailbox says, and which sent message it is about."""

    kind: Kind
    recipients: tuple[RecipientStatus, ...] = ()
    original_message_id: str | None = None  # with its angle brackets, as outbox stores it
    verp_id: int | None = None  # the row id of a bounces+ID@domain envelope sender
    reporter: str | None = None  # the Reporting-MTA, or the report's From

    @property
    def failures(self) -> tuple[Failure, ...]:
        """The recipients the message will never reach."""
        return tuple(
            Failure(r.address, r.status, r.diagnostic, r.smtp_code, r.suppresses)
            for r in self.recipients
            if r.action is Action.FAILED
        )

    @property
    def delayed(self) -> tuple[RecipientStatus, ...]:
        """The recipients still being tried."""
        return tuple(r for r in self.recipients if r.action is Action.DELAYED)


def parse(raw: bytes) -> Report:
    """Read one message of the bounce mailbox. Never raises: what it cannot read as a delivery
    report is reported as Kind.NONE."""
    msg = message_from_bytes(raw, policy=compat32)
    verp_id = _verp_id(msg)
    status_part = next((p for p in msg.walk() if p.get_content_type() in STATUS_PARTS), None)
    if status_part is not None:
        per_message, blocks = _status_blocks(status_part)
        recipients = tuple(r for r in (_recipient(b) for b in blocks) if r is not None)
        if recipients:
            return Report(
                Kind.DSN,
                recipients,
                _original_message_id(msg, per_message),
                verp_id,
                _field_value(per_message.get("Reporting-MTA")) or _sender(msg),
            )
    recipients = _non_standard(msg)
    if recipients:
        return Report(
            Kind.NON_STANDARD,
            recipients,
            _original_message_id(msg, Message()),
            verp_id,
            _sender(msg),
        )
    return Report(Kind.NONE, verp_id=verp_id)


# -- RFC 3464 --------------------------------------------------------------------------------


def _status_blocks(part: Message) -> tuple[Message, list[Message]]:
    """The per-message fields and the per-recipient blocks of a delivery-status part."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package split message/delivery-status itself
        blocks = [b for b in payload if isinstance(b, Message)]
    else:  # message/global-delivery-status, or a part the package left as text
        text = part.get_payload(decode=True)
        body = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(payload)
        blocks = [
            message_from_string(chunk.strip() + "\n", policy=compat32)
            for chunk in re.split(r"\r?\n[ \t]*\r?\n", body)
            if chunk.strip()
        ]
    per_message = next(
        (b for b in blocks if "Final-Recipient" not in b and "Original-Recipient" not in b),
        Message(),
    )
    return per_message, [b for b in blocks if b is not per_message]


def _recipient(block: Message) -> RecipientStatus | None:
    address = _address(_field_value(block.get("Final-Recipient"))) or _address(
        _field_value(block.get("Original-Recipient"))
    )
    if not address:
        return None
    diagnostic = _clean(block.get("Diagnostic-Code"))
    status = _status(_clean(block.get("Status")), diagnostic)
    action_text = (_clean(block.get("Action")) or "").lower()
    if action_text.startswith("fail") or action_text.startswith("error"):
        action = Action.FAILED
    elif action_text.startswith("delay"):
        action = Action.DELAYED
    elif action_text:
        action = Action.OTHER
    else:  # no Action field: go by the status class
        action = {"5": Action.FAILED, "4": Action.DELAYED}.get(status[0], Action.OTHER)
    if action is Action.FAILED and status.startswith("2"):
        status = "5.0.0"  # "failed" with a success code: trust the action
    return RecipientStatus(address, action, status, diagnostic)


def _status(field: str | None, diagnostic: str | None) -> str:
    """The enhanced status of a block. An X.0.0 status (Exim always sends 5.0.0) gives way to
    the more precise code of the same class in the diagnostic."""
    found = ENHANCED.search(field or "")
    status = ".".join(found.groups()) if found else None
    detailed = ENHANCED.search(diagnostic or "")
    detail = ".".join(detailed.groups()) if detailed else None
    if status is None:
        return detail or "5.0.0"
    if status.endswith(".0.0") and detail and detail[0] == status[0]:
        return detail
    return status


# -- everything else -------------------------------------------------------------------------


def _non_standard(msg: Message) -> tuple[RecipientStatus, ...]:
    """A bounce in a format of its own, recognised by flufl.bounce's detectors."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector choking on a strange message: then it is not a bounce
        return ()
    notice = _notice_text(msg)
    found: list[RecipientStatus] = []
    for raw_address, action, default in sorted(
        [(a, Action.FAILED, "5.0.0") for a in permanent]
        + [(a, Action.DELAYED, "4.0.0") for a in temporary if a not in permanent]
    ):
        address = raw_address.decode("utf-8", "replace").strip().strip("<>")
        if "@" not in address:
            continue
        paragraph = _paragraph_about(notice, address)
        status_match = ENHANCED.search(paragraph or notice)
        status = ".".join(status_match.groups()) if status_match else default
        if status[0] != default[0]:  # a detector's verdict wins over a stray code in the text
            status = default
        found.append(RecipientStatus(address, action, status, paragraph))
    return tuple(found)


def _notice_text(msg: Message) -> str:
    """The human-readable notification: text parts outside the returned message, cut at the
    start of an inline copy."""
    texts: list[str] = []
    for part in _outside_returned(msg):
        if part.get_content_type() != "text/plain":
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            charset = part.get_content_charset() or "utf-8"
            try:
                texts.append(payload.decode(charset, "replace"))
            except LookupError:
                texts.append(payload.decode("utf-8", "replace"))
    text = "\n\n".join(texts)
    marker = COPY_MARKER.search(text)
    return text[: marker.start()] if marker else text


def _paragraph_about(text: str, address: str) -> str | None:
    """The paragraph of `text` that names `address` and, ideally, gives a reply code."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    naming = [p for p in paragraphs if address.lower() in p.lower()]
    coded = [p for p in naming if ENHANCED.search(p) or re.search(r"\b[45]\d\d\b", p)]
    best = (coded or naming)[0] if naming else None
    if best is not None and len(best) > MAX_DIAGNOSTIC:
        best = best[: MAX_DIAGNOSTIC - 3] + "..."
    return best


def _outside_returned(msg: Message) -> Iterator[Message]:
    """Every part except those inside a returned message."""
    yield msg
    payload = msg.get_payload()
    if msg.is_multipart() and isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message) and part.get_content_type() not in RETURNED_PARTS:
                yield from _outside_returned(part)


# -- which message it is about ---------------------------------------------------------------


def _original_message_id(msg: Message, per_message: Message) -> str | None:
    """The Message-ID of the message the report is about: from the returned message (or its
    headers), from the report's own fields (Gmail's X-Original-Message-ID), or, in a plain-text
    bounce, from the copy quoted after the notice."""
    for part in msg.walk():
        if part.get_content_type() not in RETURNED_PARTS:
            continue
        headers = _returned_headers(part)
        if headers is not None and headers.get("Message-ID"):
            found = _message_id(headers.get("Message-ID"))
            if found:
                return found
    for name in ("Original-Message-ID", "X-Original-Message-ID"):
        found = _message_id(per_message.get(name)) or _message_id(msg.get(name))
        if found:
            return found
    if msg.get_content_type() == "text/plain" or not msg.is_multipart():
        payload = msg.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        marker = COPY_MARKER.search(text)
        quoted = MESSAGE_ID_LINE.search(text, marker.start() if marker else 0)
        if quoted:
            return quoted.group(1)
    return None


def _returned_headers(part: Message) -> Message | None:
    """The headers of a returned message part, whichever way it was attached."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]  # message/rfc822: the email package parsed it
    text = part.get_payload(decode=True)
    if isinstance(text, bytes):
        return message_from_bytes(text.lstrip(), policy=compat32)
    if isinstance(payload, str):
        return message_from_string(payload.lstrip(), policy=compat32)
    return None


def _verp_id(msg: Message) -> int | None:
    """The row id of a `bounces+ID@domain` envelope sender the report was sent back to: in the
    envelope headers of the report, in Postfix's X-Postfix-Sender, or in the Return-Path of the
    returned message."""
    candidates: list[str] = []
    for name in ENVELOPE_HEADERS:
        candidates += [str(v) for v in msg.get_all(name, [])]
    for part in msg.walk():
        content_type = part.get_content_type()
        if content_type in STATUS_PARTS:
            candidates.append(str(_status_blocks(part)[0].get("X-Postfix-Sender", "")))
        elif content_type in RETURNED_PARTS:
            headers = _returned_headers(part)
            if headers is not None:
                candidates += [str(v) for v in headers.get_all("Return-Path", [])]
    for candidate in candidates:
        found = VERP.search(candidate)
        if found:
            return int(found.group(1))
    return None


# -- field helpers ---------------------------------------------------------------------------


def _clean(value: object) -> str | None:
    """A header value on one line, or None."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _field_value(value: object) -> str | None:
    """The value of a typed DSN field, 'rfc822; a@b' -> 'a@b', 'dns; mx.example' -> 'mx...'."""
    text = _clean(value)
    if text is None:
        return None
    kind, sep, rest = text.partition(";")
    return (rest if sep and re.fullmatch(r"[\w.-]+", kind.strip()) else text).strip() or None


def _address(value: str | None) -> str | None:
    if not value:
        return None
    addresses = [addr for _, addr in getaddresses([value]) if "@" in addr]
    return addresses[0] if addresses else None


def _message_id(value: object) -> str | None:
    text = _clean(value)
    if text is None:
        return None
    found = MESSAGE_ID.search(text)
    if found:
        return found.group(0)
    bare = text.strip()
    return f"<{bare}>" if "@" in bare and " " not in bare else None


def _sender(msg: Message) -> str | None:
    found = [addr for _, addr in getaddresses([str(v) for v in msg.get_all("From", [])]) if addr]
    return found[0] if found else None
