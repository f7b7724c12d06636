"""account_state: an account's pause, shared by robots, the command line and the console. A
robot writes the pause it makes after a transport fault (and clears it once the account sends
again); an operator pauses and resumes an account. Plain types with lengths and no partial
index, so that the same table suits MySQL/MariaDB.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen as written: nothing is imported from robot (see 0001).

MYSQL = ("mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


class UTCDateTime(TypeDecorator[datetime]):
    """UTC times: timestamptz on PostgreSQL, `YYYY-MM-DD HH:MM:SS.fff` text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        if dialect.name in MYSQL:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))


class utcnow(FunctionElement[datetime]):
    """The database clock in UTC with milliseconds, as a server default."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


@compiles(utcnow, "mysql")
@compiles(utcnow, "mariadb")
def _utcnow_mysql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "(utc_timestamp(6))"  # UTC whatever the session's zone; () for MySQL's defaults


@compiles(utcnow)
def _utcnow_default(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


def upgrade() -> None:
    op.create_table(
        "account_state",
        sa.Column("account", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("paused_until", UTCDateTime()),
        sa.Column("reason", sa.String(1000)),
        sa.Column("paused_by", sa.String(200)),
        sa.Column("updated_at", UTCDateTime(), nullable=False, server_default=utcnow()),
        sa.PrimaryKeyConstraint("account", name="pk_account_state"),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    op.drop_table("account_state")
