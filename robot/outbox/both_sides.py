"""The outbox with both sides on one engine, as the daemon uses it: it claims rows and records
outcomes (claims.py), and also reads the suppression list, records bounce reports, keeps the
retention and counts the queue for the metrics (operations.py)."""

from __future__ import annotations

from sqlalchemy import Engine

from robot.config import Settings
from robot.outbox.claims import Claims
from robot.outbox.operations import Operations
from robot.outbox.shared import MIB


class Outbox(Claims, Operations):
    """The robot's side and the host's and operator's side, sharing one engine, one
    statements object and one set of limits (a reload changes both). Constructed as Claims."""


def outbox_for(settings: Settings, engine: Engine) -> Outbox:
    """Both sides with the grace, lease and size limits of `settings`."""
    return Outbox(
        engine,
        grace_seconds=settings.robot.grace_minutes * 60,
        lease_seconds=settings.robot.lease_seconds,
        max_body_bytes=int(settings.robot.max_body_mb * MIB),
        max_attachment_bytes=int(settings.attachments.max_mb * MIB),
    )
