"""The public tables: outbox, outbox_attachment, outbox_event, suppression.

MariaDB/MySQL came later: what this revision creates there (the types and defaults MySQL
needs, utf8mb4, the queue index over a generated column in place of the partial one, the
status check under its final name) changes nothing for SQLite and PostgreSQL, for which the
revision stays as it was first written.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
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

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Everything below is frozen as it was when this revision was written: it imports nothing
# from robot, so later changes to the models never change what this migration creates.

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STATUSES = (
    "'held', 'pending', 'sending', 'sent', 'deferred', 'bounced', 'failed', 'retracted', "
    "'suppressed'"
)
WAITING = sa.text("status IN ('pending', 'deferred')")
MYSQL = ("mysql", "mariadb")
# MariaDB/MySQL: keys and indexed columns are VARCHARs (TEXT cannot be a key), long texts
# LONGTEXT or MEDIUMTEXT, files LONGBLOB; every table utf8mb4, compared byte by byte.
Key = sa.Text().with_variant(sa.String(255), *MYSQL)
StatusText = sa.Text().with_variant(sa.String(16), *MYSQL)
MessageIdText = sa.Text().with_variant(sa.String(700), *MYSQL)
Address = sa.Text().with_variant(sa.String(320), *MYSQL)
Long = sa.Text().with_variant(mysql.LONGTEXT(), *MYSQL)
Medium = sa.Text().with_variant(mysql.MEDIUMTEXT(), *MYSQL)
Bytes = sa.LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL)
MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
# The name databases got from this revision: Alembic passed "ck_outbox_status" through the
# models' naming convention ("ck_%(table_name)s_%(constraint_name)s"). op.f() keeps it as is,
# whatever naming convention migrations/env.py hands to Alembic now or later.
STATUS_CHECK = "ck_outbox_ck_outbox_status"


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


def _text_default(value: str, on_mysql: bool) -> sa.TextClause:
    """A literal default of a TEXT column: MySQL takes one only as an expression."""
    return sa.text(f"('{value}')" if on_mysql else f"'{value}'")


def upgrade() -> None:
    on_mysql = op.get_bind().dialect.name in MYSQL
    # MariaDB/MySQL have no partial index: a virtual column says whether a row waits, and
    # the queue index starts with it (the claim asks for queue_waiting = 1).
    queue_column: list[sa.Column[Any]] = (
        [sa.Column("queue_waiting", sa.Boolean(), sa.Computed(WAITING.text, persisted=False))]
        if on_mysql
        else []
    )
    op.create_table(
        "outbox",
        sa.Column("id", BigId, sa.Identity(), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False, server_default=utcnow()),
        sa.Column("send_after", UTCDateTime()),
        sa.Column("status", StatusText, nullable=False, server_default=sa.text("'pending'")),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("account", sa.Text()),
        sa.Column("sender", sa.Text()),
        sa.Column("sender_name", sa.Text()),
        sa.Column("reply_to", sa.Text()),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("cc", sa.Text()),
        sa.Column("bcc", sa.Text()),
        sa.Column("subject", sa.Text(), nullable=False, server_default=_text_default("", on_mysql)),
        sa.Column("body_text", Long),
        sa.Column("body_html", Long),
        sa.Column("headers", Medium),
        sa.Column("context", Long),
        sa.Column("batch", Key),
        sa.Column("transactional", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", UTCDateTime()),
        sa.Column("claimed_by", sa.Text()),
        sa.Column("claimed_until", UTCDateTime()),
        sa.Column("message_id", MessageIdText),
        sa.Column("smtp_code", sa.Integer()),
        sa.Column("smtp_reply", Medium),
        sa.Column("last_error", Medium),
        sa.Column("sent_at", UTCDateTime()),
        sa.Column("updated_at", UTCDateTime()),
        *queue_column,
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        # MariaDB/MySQL get the name revision 0005 gives the others.
        sa.CheckConstraint(
            f"status IN ({STATUSES})", name=op.f("ck_outbox_status" if on_mysql else STATUS_CHECK)
        ),
        sqlite_autoincrement=True,
        **MYSQL_TABLE,
    )
    op.create_index(
        "ix_outbox_queue",
        "outbox",
        [*(["queue_waiting"] if on_mysql else []), sa.text("priority DESC"), "created_at", "id"],
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )
    op.create_index(
        "ix_outbox_lease",
        "outbox",
        ["claimed_until"],
        postgresql_where=sa.text("status = 'sending'"),
        sqlite_where=sa.text("status = 'sending'"),
    )
    op.create_index(
        "ix_outbox_batch",
        "outbox",
        ["batch"],
        postgresql_where=sa.text("batch IS NOT NULL"),
        sqlite_where=sa.text("batch IS NOT NULL"),
    )
    op.create_index("ix_outbox_status_updated", "outbox", ["status", "updated_at"])

    op.create_table(
        "outbox_attachment",
        sa.Column("id", BigId, sa.Identity(), primary_key=True),
        sa.Column("outbox_id", BigId, nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column(
            "content_type",
            sa.Text(),
            nullable=False,
            server_default=_text_default("application/octet-stream", on_mysql),
        ),
        sa.Column("content", Bytes, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_attachment"),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
            name="fk_outbox_attachment_outbox_id_outbox",
            ondelete="CASCADE",
        ),
        **MYSQL_TABLE,
    )
    op.create_index("ix_outbox_attachment_outbox_id", "outbox_attachment", ["outbox_id"])

    op.create_table(
        "outbox_event",
        sa.Column("id", BigId, sa.Identity(), primary_key=True),
        sa.Column("outbox_id", BigId, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False, server_default=utcnow()),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("smtp_code", sa.Integer()),
        sa.Column("detail", Medium),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_event"),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
            name="fk_outbox_event_outbox_id_outbox",
            ondelete="CASCADE",
        ),
        **MYSQL_TABLE,
    )
    op.create_index("ix_outbox_event_outbox_id", "outbox_event", ["outbox_id"])

    op.create_table(
        "suppression",
        sa.Column("address", Address, primary_key=True),
        sa.Column("reason", Medium),
        sa.Column("created_at", UTCDateTime(), nullable=False, server_default=utcnow()),
        sa.Column("outbox_id", BigId),
        sa.PrimaryKeyConstraint("address", name="pk_suppression"),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    op.drop_table("suppression")
    op.drop_table("outbox_event")
    op.drop_table("outbox_attachment")
    op.drop_table("outbox")
