"""Engines for SQLite, PostgreSQL and MariaDB/MySQL, and `db upgrade` through Alembic."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import psycopg
import pymysql
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.pool import StaticPool

from robot.errors import ConfigError
from robot.logs import first_line, get_logger

SQLITE_BUSY_MS = 30_000
SQLITE_MINIMUM = (3, 35, 0)  # RETURNING (3.35), UPDATE ... FROM (3.33)
# PostgreSQL states that say "not now" rather than "never": a standby that refuses writes
# until it is promoted, or the robot reconnects to the primary.
OUTAGE_STATES = frozenset({"25006"})  # read_only_sql_transaction
# MariaDB/MySQL error numbers that say "not now": too many connections (1040), a server
# shutting down (1053, 1317 interrupted, 1927 connection killed), network errors (1152,
# 1158-1161), a lock wait timeout or a deadlock (1205, 1213: the transaction was rolled
# back, the same work again goes through), a server or transaction that is read-only for now
# (1290, 1792, 1836), a connection closed for idleness (4031). Client errors (2000 to 2999)
# are all about the connection; server errors go on past 3000 (MySQL 3xxx, MariaDB 4xxx).
# Every other number refuses the statement: PyMySQL reports many of those (a failed CHECK,
# a bad date) as OperationalError too, so the class alone cannot tell.
MYSQL_OUTAGE_ERRNOS = frozenset(
    {1040, 1053, 1152, 1158, 1159, 1160, 1161, 1205, 1213, 1290, 1317, 1792, 1836, 1927, 4031}
)
MYSQL_CLIENT_ERRNOS = range(2000, 3000)  # CR_*: the client lost or could not reach the server
MYSQL_SESSION = "SET time_zone = '+00:00'"  # NOW() and friends in UTC, as the columns are
# What a statement can fail with: the database's errors through SQLAlchemy or psycopg, and
# the drivers' own refusal to send a string that is not valid Unicode (a lone surrogate).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    psycopg.Error,
    pymysql.MySQLError,
    UnicodeError,
)

P = ParamSpec("P")
T = TypeVar("T")


def make_engine(url: str, *, lenient_text: bool = False) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE transactions,
    so that the robot and host applications can write the same file at once. With
    `lenient_text`, SQLite text that is not UTF-8 is read with surrogate escapes instead of
    failing the query (for the operator's commands)."""
    parsed = make_url(url)
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # READ COMMITTED as on PostgreSQL: InnoDB's default (REPEATABLE READ) also locks the
        # gaps a claim's SELECT ... FOR UPDATE walks, and would hold host INSERTs behind it.
        # The session's time zone is UTC: DATETIME columns hold UTC, and so does NOW().
        # No rollback when a connection goes back to the pool: SQLAlchemy's Connection
        # ends its own transaction first, and PyMySQL's rollback() is a round trip even with
        # nothing to roll back (a fifth of a group commit's).
        return create_engine(
            url,
            pool_pre_ping=False,
            pool_size=4,
            max_overflow=4,
            pool_reset_on_return=None,
            isolation_level="READ COMMITTED",
            connect_args={"connect_timeout": 10, "init_command": MYSQL_SESSION},
        )
    if parsed.get_backend_name() != "sqlite":
        # connect_timeout: an unreachable host that drops packets must not hang a thread.
        # No pre-ping: it costs a round trip on every checkout, a tenth of the robot's speed.
        # A connection that died with a server restart fails its next statement instead;
        # SQLAlchemy then drops every pooled connection of before the restart, and the
        # outbox's calls do that work again at once on a new one (`reconnecting`).
        return create_engine(
            url,
            pool_pre_ping=False,
            pool_size=4,
            max_overflow=4,
            connect_args={"connect_timeout": 10},
        )
    if sqlite3.sqlite_version_info < SQLITE_MINIMUM:
        raise ConfigError(
            f"SQLite {sqlite3.sqlite_version} is too old: email-robot needs "
            f"{'.'.join(map(str, SQLITE_MINIMUM))} or newer (UPDATE ... RETURNING and FROM); "
            "use a Python built with a newer SQLite, or PostgreSQL",
            key="database.url",
        )
    memory = parsed.database in (None, "", ":memory:")
    connect_args = {"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False}
    if memory:
        engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
    else:
        engine = create_engine(url, connect_args=connect_args)
    base_compiler: Any = engine.dialect.statement_compiler

    class _HintedCompiler(base_compiler):  # type: ignore[misc]
        """Renders `with_hint(table, "INDEXED BY ...", "sqlite")` after the table name."""

        def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
            return text

    engine.dialect.statement_compiler = _HintedCompiler

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        if lenient_text:
            dbapi_connection.text_factory = _decode_leniently
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock at the start: a claim is then one short atomic transaction.
        # A transaction that only reads (execution option sqlite_read_only) takes none.
        if connection.get_execution_options().get("sqlite_read_only"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database is away, so that the same work may go through later
    (a lost connection, a server restarting or read-only, SQLite busy or locked), rather
    than that it refused the statement (a NUL in text, a constraint, a string the driver
    cannot encode): the same statement again would be refused again."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, pymysql.MySQLError):
            return _mysql_outage(exc.orig)
        if isinstance(exc, OperationalError | InterfaceError):
            return True
        return getattr(exc.orig, "sqlstate", None) in OUTAGE_STATES
    if isinstance(exc, pymysql.MySQLError):
        return _mysql_outage(exc)
    if isinstance(exc, psycopg.Error):
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return True
        return exc.sqlstate in OUTAGE_STATES
    # SQLAlchemy's own errors: a pool that timed out is an outage; a parameter it could
    # not prepare (StatementError) is refused like a statement.
    return isinstance(exc, SQLAlchemyError) and not isinstance(exc, StatementError)


def _mysql_outage(exc: pymysql.MySQLError) -> bool:
    """Whether a MariaDB/MySQL error says the server is away (MYSQL_OUTAGE_ERRNOS)."""
    if isinstance(exc, pymysql.InterfaceError):  # PyMySQL's "the connection is closed"
        return True
    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    return errno in MYSQL_CLIENT_ERRNOS or errno in MYSQL_OUTAGE_ERRNOS


def reconnecting(method: Callable[P, T]) -> Callable[P, T]:
    """`method`, an outbox call whose work is safe to do twice, done again at once when its
    connection turns out to have died (a server restart, found at the first statement as
    there is no pre-ping): logged `database.reconnected` at info level, not as an outage.
    A second failure is raised as usual."""

    @functools.wraps(method)
    def again(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            get_logger("robot.outbox").info(  # not at import: logging is configured later
                "database.reconnected", doing=method.__name__, error=first_line(exc)
            )
        return method(*args, **kwargs)

    return again


def libpq_dsn(url: URL) -> str:
    """The SQLAlchemy URL as a libpq connection string for psycopg."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _decode_leniently(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@contextmanager
def lenient_text(conn: Connection) -> Iterator[None]:
    """Within the block, SQLite text that is not UTF-8 reads with surrogate escapes (the
    default, fast decoder refuses the whole query)."""
    raw: Any = conn.connection.driver_connection
    if not hasattr(raw, "text_factory"):
        yield
        return
    before = raw.text_factory
    raw.text_factory = _decode_leniently
    try:
        yield
    finally:
        raw.text_factory = before


def missing_sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL when it does not exist yet; None when it exists, or the
    database is in memory or not SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def migrations_dir() -> Path:
    """The Alembic scripts: packaged in the wheel, or the repository's migrations/."""
    package = Path(__file__).resolve().parents[1]  # robot/
    packaged = package / "_migrations"
    return packaged if packaged.is_dir() else package.parent / "migrations"


def alembic_config() -> AlembicConfig:
    """An Alembic configuration that needs no alembic.ini."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to `revision`."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at; None before the first `db upgrade`."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest migration."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        connection.execution_options(sqlite_read_only=True)
        current = MigrationContext.configure(connection).get_current_revision()
    return current == head
