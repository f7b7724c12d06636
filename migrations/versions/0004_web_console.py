"""The operators' console: its users (web_user), its audit log (web_audit), its settings
(web_setting, e.g. the secret that signs session cookies).

MariaDB/MySQL came later: their types (VARCHAR keys, utf8mb4, DATETIME(6) in UTC) change
nothing for SQLite and PostgreSQL.

Revision ID: 0004
Revises: 0003
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

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen as written: nothing is imported from robot (see 0001).

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL = ("mysql", "mariadb")
Key = sa.Text().with_variant(sa.String(255), *MYSQL)
Medium = sa.Text().with_variant(mysql.MEDIUMTEXT(), *MYSQL)
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
    return "(utc_timestamp(6))"


@compiles(utcnow)
def _utcnow_default(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


def upgrade() -> None:
    op.create_table(
        "web_user",
        sa.Column("name", Key, primary_key=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False, server_default=utcnow()),
        sa.Column("sessions_end_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("name", name="pk_web_user"),
        sa.CheckConstraint(
            "role IN ('viewer', 'operator', 'admin')", name=op.f("ck_web_user_role")
        ),
        **MYSQL_TABLE,
    )
    op.create_table(
        "web_audit",
        sa.Column("id", BigId, sa.Identity(), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False, server_default=utcnow()),
        sa.Column("who", sa.Text(), nullable=False),
        sa.Column("client", sa.Text()),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("result", Medium),
        sa.PrimaryKeyConstraint("id", name="pk_web_audit"),
        sqlite_autoincrement=True,
        **MYSQL_TABLE,
    )
    op.create_table(
        "web_setting",
        sa.Column("name", Key, primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_web_setting"),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    op.drop_table("web_setting")
    op.drop_table("web_audit")
    op.drop_table("web_user")
