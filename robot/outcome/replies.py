"""What an SMTP reply means for a message: sent, deferred, bounced or failed; and whether
it says the recipient's address is bad for good. Pure."""

from __future__ import annotations

import enum

from robot.send.attempt import Reply, Stage


class Outcome(enum.StrEnum):
    """What a reply means for the message."""

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    FAILED = "failed"


# RFC 3463 X.1.Y codes about the recipient's address; 5.1.7 and 5.1.8 are about ours.
RECIPIENT_ADDRESS_CODES = {"1", "2", "3", "6", "10"}
SENDER_ADDRESS_CODES = {"7", "8"}


def classify(reply: Reply) -> Outcome:
    """Map a reply to an outcome: 2xx sent; 4xx, timeout, disconnect deferred; 5xx by stage.

    5xx at RCPT bounces, unless its enhanced code blames our sender address (5.1.7, 5.1.8);
    a recipient-address code (5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10) at DATA bounces too; any
    other 5xx, and every 5xx at MAIL, fails. An enhanced code of class 4 defers even under a
    5xx basic code.
    """
    if reply.code is None:
        return Outcome.DEFERRED
    enhanced = reply.enhanced
    if 200 <= reply.code < 300:
        return Outcome.SENT
    if 400 <= reply.code < 500 or (enhanced is not None and enhanced.startswith("4.")):
        return Outcome.DEFERRED
    if 500 <= reply.code < 600:
        if reply.stage is Stage.MAIL or _address_detail(enhanced) in SENDER_ADDRESS_CODES:
            return Outcome.FAILED
        if reply.stage is Stage.RCPT or _address_detail(enhanced) in RECIPIENT_ADDRESS_CODES:
            return Outcome.BOUNCED
        return Outcome.FAILED
    return Outcome.DEFERRED  # a code outside 2xx-5xx is a broken server: try again later


def suppresses(reply: Reply) -> bool:
    """True when the reply says the recipient's address is bad for good: suppress it."""
    return (
        classify(reply) is Outcome.BOUNCED
        and (reply.enhanced or "").startswith("5.")
        and _address_detail(reply.enhanced) in RECIPIENT_ADDRESS_CODES
    )


def _address_detail(enhanced: str | None) -> str | None:
    """The Y of an X.1.Y (addressing) enhanced code, else None."""
    if enhanced is None:
        return None
    _, subject, detail = enhanced.split(".")
    return detail if subject == "1" else None
