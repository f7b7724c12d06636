"""Apply a message from the bounce mailbox: parse it as a delivery status notification and
record its permanent failures against the row it is about."""

from __future__ import annotations

from typing import Any

from robot.bounces.dsn import parse as parse_report
from robot.outbox.operations import Operations


def apply_report(raw: bytes, outbox: Operations, log: Any) -> bool:
    """Record the failures `raw` reports; True when it was about one of our rows (the
    mailbox then moves it away). Raises SQLAlchemyError when the database is down."""
    try:
        report = parse_report(raw)
    except Exception:  # parse is meant never to raise: one odd message must not jam
        log.exception("bounce.unreadable")
        return False
    if not report.failures:
        log.debug("bounce.ignored", kind=report.kind, delayed=len(report.delayed))
        return False
    found = outbox.record_dsn(
        report.failures,
        row_id=report.verp_id,
        message_id=report.original_message_id,
        reporter=report.reporter,
    )
    recipients = [f"{f.address} {f.status}" for f in report.failures]
    if found is None:
        log.info(
            "bounce.unmatched",
            message_id=report.original_message_id,
            verp_id=report.verp_id,
            recipients=recipients,
        )
        return False
    event = "message.bounced_after_delivery" if found[1] else "bounce.recorded"
    log.warning(event, id=found[0], recipients=recipients, reporter=report.reporter)
    return True
