"""The least rights a separate database role needs to use the outbox (PostgreSQL).

A host application's role writes rows and files and reads them back (`INSERT ... RETURNING
id` needs SELECT on the column it returns); a reporting role only reads. Neither may change
or delete what the robot writes. The robot's own role owns the tables (`db upgrade`).
"""

from __future__ import annotations

from sqlalchemy import Engine

TABLES = ("outbox", "outbox_attachment", "outbox_event", "suppression")
WRITTEN_BY_HOSTS = ("outbox", "outbox_attachment")


def grant_statements(engine: Engine, role: str, *, writer: bool) -> list[str]:
    """The GRANTs for `role`: a host application's writer, or a read-only reporter."""
    quote = engine.dialect.identifier_preparer.quote
    who = quote(role)
    statements = [f"GRANT USAGE ON SCHEMA public TO {who}"]
    statements += [f"GRANT SELECT ON {quote(table)} TO {who}" for table in TABLES]
    if writer:
        statements += [f"GRANT INSERT ON {quote(table)} TO {who}" for table in WRITTEN_BY_HOSTS]
    return statements


def apply_grants(engine: Engine, statements: list[str]) -> None:
    """Run the statements in one transaction."""
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
