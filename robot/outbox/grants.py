"""The least rights a separate database role needs to use the outbox (PostgreSQL,
MariaDB/MySQL).

A host application's role writes rows and files and reads them back (`INSERT ... RETURNING
id` needs SELECT on the column it returns); a reporting role only reads. Neither may change
or delete what the robot writes. The robot's own role owns the tables (`db upgrade`).
On MariaDB/MySQL the role is an account, `NAME` (any host, or a role of that name) or
`NAME@HOST`, and the rights are on the tables of the URL's database.
"""

from __future__ import annotations

from sqlalchemy import Engine

from robot.outbox.schema import MYSQL

TABLES = ("outbox", "outbox_attachment", "outbox_event", "suppression")
WRITTEN_BY_HOSTS = ("outbox", "outbox_attachment")


def grant_statements(engine: Engine, role: str, *, writer: bool) -> list[str]:
    """The GRANTs for `role`: a host application's writer, or a read-only reporter."""
    quote = engine.dialect.identifier_preparer.quote
    if engine.dialect.name in MYSQL:
        who = _mysql_account(role)
        database = quote(engine.url.database or "")
        tables = [f"{database}.{quote(table)}" for table in TABLES]
        statements = [f"GRANT SELECT ON {table} TO {who}" for table in tables]
        if writer:
            statements += [
                f"GRANT INSERT ON {database}.{quote(table)} TO {who}" for table in WRITTEN_BY_HOSTS
            ]
        return statements
    who = quote(role)
    statements = [f"GRANT USAGE ON SCHEMA public TO {who}"]
    statements += [f"GRANT SELECT ON {quote(table)} TO {who}" for table in TABLES]
    if writer:
        statements += [f"GRANT INSERT ON {quote(table)} TO {who}" for table in WRITTEN_BY_HOSTS]
    return statements


def _mysql_account(role: str) -> str:
    """`NAME` or `NAME@HOST` as MariaDB/MySQL write an account: 'NAME' or 'NAME'@'HOST'."""
    name, at, host = role.rpartition("@") if "@" in role else (role, "", "")

    def literal(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

    return f"{literal(name)}@{literal(host)}" if at else literal(name)


def apply_grants(engine: Engine, statements: list[str]) -> None:
    """Run the statements in one transaction (MariaDB/MySQL commit each GRANT)."""
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
