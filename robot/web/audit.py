"""The console's audit log (table web_audit): who did what, when, from where, to how many
rows, and with what result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select

from robot.outbox.schema import web_audit

RESULT_LENGTH = 2000  # a result is cut here; the rows themselves keep their history


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    id: int
    at: datetime
    who: str
    client: str | None
    action: str
    rows: int
    result: str | None


class Audit:
    """web_audit through one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, who: str, client: str | None, action: str, rows: int, result: str) -> None:
        """Record one action."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(web_audit).values(
                    who=who,
                    client=client,
                    action=action,
                    rows=rows,
                    result=result[:RESULT_LENGTH],
                )
            )

    def entries(self, *, before: int | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest entries with ids below `before`, newest first."""
        query = select(web_audit).order_by(web_audit.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(web_audit.c.id < before)
        with self.engine.connect() as conn:
            return [
                AuditEntry(r.id, r.at, r.who, r.client, r.action, r.rows, r.result)
                for r in conn.execute(query)
            ]
