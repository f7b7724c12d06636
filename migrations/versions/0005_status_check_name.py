"""The status check constraint gets the models' name, ck_outbox_status: revision 0001 ran its
name through the naming convention a second time (ck_outbox_ck_outbox_status).

PostgreSQL renames it in place. SQLite cannot rename a constraint, and a batch-mode copy of
the table would drop `outbox` with foreign keys on, deleting every attachment and history line
(ON DELETE CASCADE): the name is changed in the table's stored CREATE statement instead, as
SQLite documents for changes that leave the stored rows as they are (lang_altertable.html,
"Making Other Kinds Of Table Schema Changes"). A SQLite built to refuse schema edits
(SQLITE_DBCONFIG_DEFENSIVE) keeps the old name, which only appears in its error messages.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DOUBLED = "ck_outbox_ck_outbox_status"
MODELS = "ck_outbox_status"


def upgrade() -> None:
    _rename(op.get_bind(), DOUBLED, MODELS)


def downgrade() -> None:
    _rename(op.get_bind(), MODELS, DOUBLED)


def _rename(connection: Connection, old: str, new: str) -> None:
    """Rename the check constraint of outbox.status from `old` to `new`, if it has `old`."""
    if connection.dialect.name == "postgresql":
        found = connection.execute(
            text(
                "SELECT 1 FROM pg_constraint "
                "WHERE conrelid = 'outbox'::regclass AND conname = :name"
            ),
            {"name": old},
        ).first()
        if found is not None:
            op.execute(f"ALTER TABLE outbox RENAME CONSTRAINT {old} TO {new}")
        return
    if connection.dialect.name != "sqlite":
        return
    created = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
    ).scalar_one()
    written = f"CONSTRAINT {old} CHECK"
    if created.count(written) != 1:
        return
    version = connection.exec_driver_sql("PRAGMA schema_version").scalar_one()
    connection.exec_driver_sql("PRAGMA writable_schema=ON")
    try:
        connection.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'outbox'",
            (created.replace(written, f"CONSTRAINT {new} CHECK"),),
        )
        # Other connections see the new schema version and read the table's definition again.
        connection.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    except OperationalError:  # schema edits refused (defensive mode): keep the old name
        pass
    finally:
        connection.exec_driver_sql("PRAGMA writable_schema=OFF")
