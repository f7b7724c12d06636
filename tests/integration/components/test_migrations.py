"""The schema: `db upgrade` on empty SQLite and PostgreSQL, plain INSERTs, models == migrations."""

from __future__ import annotations

import ast
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import IntegrityError

from robot.cli.main import main
from robot.outbox.engine import make_engine, migrations_dir, schema_is_current, upgrade
from robot.outbox.schema import MYSQL_QUEUE_COLUMN, metadata
from tests.conftest import WriteIni
from tests.integration.host import host_sql, is_mysql

SQLITE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


def test_plain_insert_gets_every_default(db_url: str) -> None:
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, subject, body_text) VALUES (?, ?, ?)",
        ["alice@example.org", "Hello", "Hi"],
    )
    rows = host_sql(
        db_url,
        "SELECT id, status, priority, attempts, transactional, created_at, message_id, "
        "account, send_after FROM outbox",
    )
    assert len(rows) == 1
    row_id, status, priority, attempts, transactional, created_at, message_id, account, later = (
        rows[0]
    )
    assert row_id == 1
    assert (status, priority, attempts, message_id, account, later) == (
        "pending",
        0,
        0,
        None,
        None,
        None,
    )
    assert transactional in (False, 0)
    if db_url.startswith("sqlite"):
        assert SQLITE_TIME.match(created_at), created_at  # UTC text with milliseconds
    elif is_mysql(db_url):  # DATETIME(6): no zone, UTC from UTC_TIMESTAMP(6)
        assert abs(created_at - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=1)
    else:
        assert created_at.tzinfo is not None


def test_subject_defaults_to_empty_and_status_is_checked(db_url: str) -> None:
    host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@example.org', 'x')")
    assert host_sql(db_url, "SELECT subject FROM outbox") == [("",)]
    try:
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, body_text, status) VALUES ('a@b.org', 'x', 'bogus')",
        )
    except Exception as exc:  # each driver raises its own IntegrityError
        assert "ck_outbox_status" in str(exc) or "CHECK" in str(exc)
    else:
        raise AssertionError("a bad status was accepted")


def test_migrated_schema_equals_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        opts = {"include_object": _not_mysql_queue_key} if is_mysql(str(engine.url)) else {}
        context = MigrationContext.configure(conn, opts=opts)
        diff = compare_metadata(context, metadata)
    assert diff == []
    assert schema_is_current(engine)


def _not_mysql_queue_key(
    thing: object, name: str | None, kind: str, reflected: bool, _compare_to: object
) -> bool:
    """MariaDB/MySQL's stand-in for the partial queue index (a generated column in front of
    it) is in the migration only: test_the_mysql_queue_index checks it."""
    return name not in (MYSQL_QUEUE_COLUMN, "ix_outbox_queue")


def test_revisions_import_nothing_from_robot() -> None:
    """A revision is frozen: were it to import the models, it would change when they do."""
    scripts = sorted((migrations_dir() / "versions").glob("*.py"))
    assert scripts
    for script in scripts:
        tree = ast.parse(script.read_text(), str(script))
        modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert [m for m in modules if m.split(".")[0] == "robot"] == [], script.name


def test_upgrade_twice_is_harmless_and_creates_the_queue_index(engine: Engine) -> None:
    upgrade(engine)
    names = {ix["name"] for ix in inspect(engine).get_indexes("outbox")}
    assert {"ix_outbox_queue", "ix_outbox_lease", "ix_outbox_batch"} <= names


def test_the_batch_index_holds_the_id_too(engine: Engine) -> None:
    """The console's page of a batch, newest first, reads it from the index (PostgreSQL
    otherwise walks the primary key over every newer row of other batches)."""
    found = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("outbox")}
    assert found["ix_outbox_batch"] == ["batch", "id"]


def test_the_queue_index_ends_with_the_account(engine: Engine) -> None:
    """A claim that leaves accounts out (paused, or waiting for their rate) steps over their
    rows in the index instead of reading each one (MariaDB/MySQL: a TEXT account is not
    indexed whole, their queue index is their own)."""
    if engine.dialect.name in ("mysql", "mariadb"):
        found = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("outbox")}
        assert found["ix_outbox_queue"][0] == MYSQL_QUEUE_COLUMN
        return
    found = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("outbox")}
    assert found["ix_outbox_queue"][-2:] == ["id", "account"]


def test_db_upgrade_command_creates_an_empty_sqlite_database(
    tmp_path: Path, write_ini: WriteIni
) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    ini = write_ini(url)
    assert main(["-c", str(ini), "db", "upgrade"]) == 0
    engine = make_engine(url)
    assert schema_is_current(engine)
    assert set(inspect(engine).get_table_names()) >= {
        "outbox",
        "outbox_attachment",
        "outbox_event",
        "suppression",
    }
    engine.dispose()


def test_db_upgrade_command_on_an_empty_postgresql_database(
    pg_cluster: object, write_ini: WriteIni
) -> None:
    from tests.support.pg import PgCluster

    assert isinstance(pg_cluster, PgCluster)
    url = pg_cluster.create_database("fresh_upgrade")
    ini = write_ini(url.replace("postgresql+psycopg://", "postgresql://"))
    assert main(["db", "upgrade", "-c", str(ini)]) == 0
    engine = make_engine(url)
    assert schema_is_current(engine)
    engine.dispose()
    host_sql(url, "INSERT INTO outbox (recipient, subject, body_text) VALUES ('a@b.org', 's', 't')")
    assert host_sql(url, "SELECT status FROM outbox") == [("pending",)]
    pg_cluster.drop_database("fresh_upgrade")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, without a schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    from tests.support.pg import PgCluster

    cluster = request.getfixturevalue("pg_cluster")
    assert isinstance(cluster, PgCluster)
    name = f"e_{uuid.uuid4().hex[:12]}"
    yield cluster.create_database(name)
    cluster.drop_database(name)


def test_db_upgrade_gives_the_status_check_the_models_name_and_keeps_the_rows(
    empty_db_url: str, write_ini: WriteIni
) -> None:
    """0001 named it ck_outbox_ck_outbox_status (the naming convention applied twice)."""
    engine = make_engine(empty_db_url)
    upgrade(engine, "0004")
    assert status_check_names(engine) == ["ck_outbox_ck_outbox_status"]
    schema_before = sqlite_schema(engine)
    host_sql(empty_db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@b.org', 'x')")
    host_sql(
        empty_db_url,
        "INSERT INTO outbox_attachment (outbox_id, filename, content) VALUES (1, 'a.txt', ?)",
        [b"abc"],
    )
    host_sql(empty_db_url, "INSERT INTO outbox_event (outbox_id, kind) VALUES (1, 'held')")
    ini = write_ini(empty_db_url.replace("postgresql+psycopg://", "postgresql://"))

    assert main(["-c", str(ini), "db", "upgrade"]) == 0

    assert schema_is_current(engine)
    assert status_check_names(engine) == ["ck_outbox_status"]
    assert host_sql(empty_db_url, "SELECT count(*) FROM outbox_attachment") == [(1,)]
    assert host_sql(empty_db_url, "SELECT count(*) FROM outbox_event") == [(1,)]
    if engine.dialect.name == "sqlite":  # the same schema but for the name, and sound
        after = [sql for sql in sqlite_schema(engine) if "account_state" not in sql]  # 0007
        assert after == [  # 0006 makes the batch index (batch, id), 0008 ends the queue's
            sql.replace("ck_outbox_ck_outbox_status", "ck_outbox_status")
            .replace("ix_outbox_batch ON outbox (batch)", "ix_outbox_batch ON outbox (batch, id)")
            .replace("created_at, id) WHERE", "created_at, id, account) WHERE")
            for sql in schema_before
        ]
        assert host_sql(empty_db_url, "PRAGMA integrity_check") == [("ok",)]
    with pytest.raises(IntegrityError, match="ck_outbox_status"):
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO outbox (recipient, body_text, status) VALUES ('a@b.org', 'x', 'bogus')"
            )
    engine.dispose()


def status_check_names(engine: Engine) -> list[str | None]:
    return [check["name"] for check in inspect(engine).get_check_constraints("outbox")]


def sqlite_schema(engine: Engine) -> list[str]:
    """The CREATE statements of a SQLite database but the version table's (empty elsewhere)."""
    if engine.dialect.name != "sqlite":
        return []
    with engine.connect() as connection:
        return list(
            connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
                "AND name != 'alembic_version' ORDER BY name"
            ).scalars()
        )


def test_the_account_state_table_uses_plain_types_with_lengths(engine: Engine) -> None:
    """Written to suit MySQL/MariaDB too: lengths on its strings, no partial index."""
    columns = {c["name"]: c for c in inspect(engine).get_columns("account_state")}
    assert set(columns) == {"account", "kind", "paused_until", "reason", "paused_by", "updated_at"}
    for name in ("account", "kind", "reason", "paused_by"):
        assert getattr(columns[name]["type"], "length", None), name
    assert inspect(engine).get_pk_constraint("account_state")["constrained_columns"] == ["account"]
    assert inspect(engine).get_indexes("account_state") == []
