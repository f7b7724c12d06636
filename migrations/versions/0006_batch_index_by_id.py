"""ix_outbox_batch on (batch, id): the console's page of one batch, newest first, reads the
batch's newest rows from the index. On (batch) alone PostgreSQL walked the primary key down
and stepped over every newer row of other batches (600,000 of them for an old batch of a
1,000,000-row outbox: half a second). SQLite's index entries carry the rowid already.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _batch_index(columns: list[str]) -> None:
    op.drop_index("ix_outbox_batch", table_name="outbox")
    op.create_index(
        "ix_outbox_batch",
        "outbox",
        columns,
        postgresql_where=sa.text("batch IS NOT NULL"),
        sqlite_where=sa.text("batch IS NOT NULL"),
    )


def upgrade() -> None:
    _batch_index(["batch", "id"])


def downgrade() -> None:
    _batch_index(["batch"])
