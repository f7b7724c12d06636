"""The public tables (outbox, outbox_attachment, outbox_event, suppression, account_state) and
the console's (web_user, web_audit, web_setting) as SQLAlchemy Core.

Times are UTC from the database clock: `timestamptz` on PostgreSQL, text
`YYYY-MM-DD HH:MM:SS.fff` on SQLite (what `datetime('now')` writes, plus milliseconds),
`DATETIME(6)` holding UTC on MariaDB/MySQL (their default is UTC_TIMESTAMP(6)).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import expression
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator, TypeEngine


class Status(enum.StrEnum):
    """The states of an outbox row (docs/contract.md, "Statuses")."""

    HELD = "held"
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    FAILED = "failed"
    RETRACTED = "retracted"
    SUPPRESSED = "suppressed"


WAITING = (Status.PENDING.value, Status.DEFERRED.value)  # rows that become due
FINISHED = (
    Status.SENT.value,
    Status.BOUNCED.value,
    Status.FAILED.value,
    Status.RETRACTED.value,
    Status.SUPPRESSED.value,
)


MYSQL = ("mysql", "mariadb")  # SQLAlchemy's names for MariaDB and MySQL


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: timestamptz on PostgreSQL, sortable UTC text on SQLite,
    DATETIME(6) holding UTC on MariaDB/MySQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        if dialect.name in MYSQL:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return format_sqlite_time(value)
        if dialect.name in MYSQL:  # DATETIME has no zone: the drivers would drop it silently
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:  # SQLite keeps whatever text a host wrote; it is never due
                return None
        elif isinstance(value, datetime):
            parsed = value
        else:  # SQLite: bytes or a number a host wrote
            return None
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)


def format_sqlite_time(value: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.fff`, the text SQLite's own strftime('%f') writes."""
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


class utcnow(expression.FunctionElement[datetime]):
    """The database clock, in UTC, with milliseconds."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


@compiles(utcnow, "mysql")
@compiles(utcnow, "mariadb")
def _utcnow_mysql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    # UTC whatever the session's time zone (a host's connection may have its own); in
    # parentheses, as MySQL wants an expression used as a column's default.
    return "(utc_timestamp(6))"


@compiles(utcnow)
def _utcnow_default(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY = rowid
# MariaDB/MySQL: TEXT is at most 64 KiB and cannot be a key or be indexed whole. Columns that
# are keys or indexed are VARCHARs there; bodies and the like are LONGTEXT (4 GiB: a row may
# hold up to max_body_mb = 100 MB), other texts that a server's reply fills MEDIUMTEXT.
Key: TypeEngine[str] = Text().with_variant(String(255), *MYSQL)
MessageIdText: TypeEngine[str] = Text().with_variant(
    String(700), *MYSQL
)  # indexed whole: 2,800 bytes
StatusText: TypeEngine[str] = Text().with_variant(String(16), *MYSQL)
Address: TypeEngine[str] = Text().with_variant(
    String(320), *MYSQL
)  # 64 + @ + 255: the longest address
Long: TypeEngine[str] = Text().with_variant(mysql.LONGTEXT(), *MYSQL)
Medium: TypeEngine[str] = Text().with_variant(mysql.MEDIUMTEXT(), *MYSQL)
Bytes: TypeEngine[bytes] = LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL)
# Every table of MariaDB/MySQL in utf8mb4 (an emoji in a subject), compared byte by byte as
# PostgreSQL and SQLite compare text (the default collations ignore case: 'A' = 'a').
MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
# MariaDB/MySQL have no partial index: migration 0001 gives outbox a generated column,
# queue_waiting (1 for a pending or deferred row, else 0), in front of ix_outbox_queue there.
# It is not in these models (no other database has it); Statements.lock_for_claim names it.
MYSQL_QUEUE_COLUMN = "queue_waiting"
STATUS_VALUES = ", ".join(f"'{s.value}'" for s in Status)
WAITING_SQL = "status IN ('pending', 'deferred')"

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("send_after", UTCDateTime()),
    Column("status", StatusText, nullable=False, server_default=text("'pending'")),
    Column("priority", Integer(), nullable=False, server_default=text("0")),
    Column("account", Text()),
    Column("sender", Text()),
    Column("sender_name", Text()),
    Column("reply_to", Text()),
    Column("recipient", Text(), nullable=False),
    Column("cc", Text()),
    Column("bcc", Text()),
    Column("subject", Text(), nullable=False, server_default=text("''")),
    Column("body_text", Long),
    Column("body_html", Long),
    Column("headers", Medium),
    Column("context", Long),
    Column("batch", Key),
    Column("transactional", Boolean(), nullable=False, server_default=false()),
    Column("attempts", Integer(), nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime()),
    Column("claimed_by", Text()),
    Column("claimed_until", UTCDateTime()),
    Column("message_id", MessageIdText),
    Column("smtp_code", Integer()),
    Column("smtp_reply", Medium),
    Column("last_error", Medium),
    Column("sent_at", UTCDateTime()),
    Column("updated_at", UTCDateTime()),
    CheckConstraint(f"status IN ({STATUS_VALUES})", name="status"),
    sqlite_autoincrement=True,  # never reuse an id: Message-IDs and history are keyed on it
    **MYSQL_TABLE,
)

# The claim query walks this small partial index in claim order and stops after batch_size
# rows, so its cost does not grow with the number of finished rows in the table. The
# account at its end lets a claim that leaves accounts out step over their rows in the
# index, without reading them (migration 0008; not on MariaDB/MySQL).
Index(
    "ix_outbox_queue",
    outbox.c.priority.desc(),
    outbox.c.created_at,
    outbox.c.id,
    outbox.c.account,
    postgresql_where=text(WAITING_SQL),
    sqlite_where=text(WAITING_SQL),
)
Index(
    "ix_outbox_lease",
    outbox.c.claimed_until,
    postgresql_where=text("status = 'sending'"),
    sqlite_where=text("status = 'sending'"),
)
Index(  # (batch, id): the console's page of a batch, newest first, straight from the index
    "ix_outbox_batch",
    outbox.c.batch,
    outbox.c.id,
    postgresql_where=text("batch IS NOT NULL"),
    sqlite_where=text("batch IS NOT NULL"),
)
Index("ix_outbox_status_updated", outbox.c.status, outbox.c.updated_at)
Index(
    "ix_outbox_message_id",  # bounce reports name the message by its Message-ID
    outbox.c.message_id,
    postgresql_where=text("message_id IS NOT NULL"),
    sqlite_where=text("message_id IS NOT NULL"),
)

outbox_attachment = Table(
    "outbox_attachment",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column(
        "outbox_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("outbox.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("filename", Text(), nullable=False),
    Column(
        "content_type",
        Text(),
        nullable=False,
        server_default=text("'application/octet-stream'"),
    ),
    Column("content", Bytes, nullable=False),
    **MYSQL_TABLE,
)

outbox_event = Table(
    "outbox_event",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column(
        "outbox_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("outbox.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("kind", Text(), nullable=False),
    Column("smtp_code", Integer()),
    Column("detail", Medium),
    **MYSQL_TABLE,
)

suppression = Table(
    "suppression",
    metadata,
    Column("address", Address, primary_key=True),
    Column("reason", Medium),
    Column("created_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("outbox_id", BigInteger().with_variant(Integer(), "sqlite")),
    **MYSQL_TABLE,
)

# -- the sender accounts' state, shared by robots, the command line and the console -----------


class PauseKind(enum.StrEnum):
    """Why an account is paused (account_state.kind)."""

    FAULT = "fault"  # a robot met a transport fault: it tries again at paused_until
    OPERATOR = "operator"  # an operator paused it: until paused_until, or until resumed


ACCOUNT_NAME_LENGTH = 200
PAUSE_REASON_LENGTH = 1000

# One row per account that is or was paused; no row: the account sends. Plain types and
# lengths, no partial index: the same table suits MySQL/MariaDB.
account_state = Table(
    "account_state",
    metadata,
    Column("account", String(ACCOUNT_NAME_LENGTH), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("paused_until", UTCDateTime()),  # NULL: until an operator resumes it
    Column("reason", String(PAUSE_REASON_LENGTH)),
    Column("paused_by", String(ACCOUNT_NAME_LENGTH)),  # the robot, or the operator's name
    Column("updated_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    **MYSQL_TABLE,
)

# -- the operators' console (robot/web): its users, its audit log, its settings --------------

WEB_ROLES = ("viewer", "operator", "admin")

web_user = Table(
    "web_user",
    metadata,
    Column("name", Key, primary_key=True),
    Column("role", Text(), nullable=False),
    Column("password_hash", Text(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    # Sessions signed in before this time are over (sign-out, a new password).
    Column("sessions_end_at", UTCDateTime()),
    CheckConstraint("role IN ('viewer', 'operator', 'admin')", name="role"),
    **MYSQL_TABLE,
)

web_audit = Table(
    "web_audit",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("who", Text(), nullable=False),
    Column("client", Text()),
    Column("action", Text(), nullable=False),
    Column("rows", Integer(), nullable=False, server_default=text("0")),
    Column("result", Medium),
    sqlite_autoincrement=True,
    **MYSQL_TABLE,
)

# Values the console keeps for itself, such as the secret that signs its session cookies
# when no [web] session_secret_file is given.
web_setting = Table(
    "web_setting",
    metadata,
    Column("name", Key, primary_key=True),
    Column("value", Text(), nullable=False),
    **MYSQL_TABLE,
)
