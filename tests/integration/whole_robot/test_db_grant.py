"""`email-robot db grant ROLE`: a host application's role can do what the contract asks of
it with plain SQL, and nothing more; a reporting role only reads (PostgreSQL, MariaDB)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pymysql
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import WriteIni
from tests.integration.whole_robot.test_cli import cli, one_line_error
from tests.support.mariadb import MariaDbServer


def connect_as(url: str, role: str) -> psycopg.Connection[tuple[object, ...]]:
    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host, port=parsed.port, dbname=parsed.database, user=role, autocommit=True
    )


def make_role(url: str, role: str) -> None:
    with connect_as(url, "postgres") as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')


HOST_INSERT = (
    "INSERT INTO outbox (recipient, subject, body_text) VALUES ('a@x.test', 'Hi', 'B') RETURNING id"
)


def test_insert_alone_is_not_enough_for_what_hosts_write(pg_url: str) -> None:
    """Why the grant exists: with only INSERT, RETURNING id is refused."""
    make_role(pg_url, "bare_app")
    with connect_as(pg_url, "postgres") as admin:
        admin.execute('GRANT INSERT ON outbox TO "bare_app"')
    with (
        connect_as(pg_url, "bare_app") as host,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        host.execute(HOST_INSERT)


def test_a_writer_inserts_rows_and_files_and_reads_them_but_changes_nothing(
    pg_url: str, write_ini: WriteIni
) -> None:
    make_role(pg_url, "school_app")
    ini = str(write_ini(pg_url))
    printed = cli("-c", ini, "db", "grant", "school_app", "--print")
    assert printed.returncode == 0, printed.stderr
    assert "GRANT INSERT ON outbox TO school_app;" in printed.stdout
    with (
        connect_as(pg_url, "school_app") as host,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        host.execute(HOST_INSERT)  # --print changed nothing
    granted = cli("-c", ini, "db", "grant", "school_app")
    assert granted.returncode == 0, granted.stderr
    with connect_as(pg_url, "school_app") as host:
        row = host.execute(HOST_INSERT).fetchone()
        assert row is not None
        host.execute(
            "INSERT INTO outbox_attachment (outbox_id, filename, content) VALUES (%s, 'a.pdf', %s)",
            (row[0], b"%PDF"),
        )
        assert host.execute("SELECT status FROM outbox WHERE id = %s", (row[0],)).fetchone() == (
            "pending",
        )
        for forbidden in (
            "UPDATE outbox SET status = 'sent'",
            "DELETE FROM outbox",
            "INSERT INTO suppression (address) VALUES ('x@x.test')",
            "DELETE FROM outbox_event",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                host.execute(forbidden)


def test_a_reporting_role_only_reads(pg_url: str, write_ini: WriteIni) -> None:
    make_role(pg_url, "reports")
    ini = str(write_ini(pg_url))
    assert cli("-c", ini, "db", "grant", "reports", "--read-only").returncode == 0
    with connect_as(pg_url, "reports") as reader:
        assert reader.execute("SELECT count(*) FROM outbox_event").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(HOST_INSERT)


def test_sqlite_has_no_roles(tmp_path: Path, write_ini: WriteIni) -> None:
    ini = str(write_ini(f"sqlite:///{tmp_path}/r.db"))
    assert cli("-c", ini, "db", "upgrade").returncode == 0
    result = cli("-c", ini, "db", "grant", "someone")
    assert result.returncode == 2
    assert "sqlite has no roles" in one_line_error(result)


# -- MariaDB/MySQL: an account (NAME or NAME@HOST), the rights on the URL's database ----------


def connect_as_account(url: str, user: str) -> pymysql.Connection[pymysql.cursors.Cursor]:
    parsed = make_url(url)
    return pymysql.connect(
        host=parsed.host,
        port=parsed.port or 3306,
        user=user,
        database=parsed.database,
        autocommit=True,
        charset="utf8mb4",
    )


@pytest.mark.mariadb
def test_a_mariadb_writer_inserts_and_reads_but_changes_nothing(
    mariadb_url: str, mariadb_server: MariaDbServer, write_ini: WriteIni
) -> None:
    mariadb_server.execute("CREATE USER IF NOT EXISTS 'school_app'@'127.0.0.1'")
    ini = str(write_ini(mariadb_url))
    database = make_url(mariadb_url).database
    printed = cli("-c", ini, "db", "grant", "school_app@127.0.0.1", "--print")
    assert printed.returncode == 0, printed.stderr
    assert f"GRANT INSERT ON {database}.outbox TO 'school_app'@'127.0.0.1';" in printed.stdout
    granted = cli("-c", ini, "db", "grant", "school_app@127.0.0.1")
    assert granted.returncode == 0, granted.stderr
    try:
        with connect_as_account(mariadb_url, "school_app") as host, host.cursor() as cur:
            cur.execute(
                "INSERT INTO outbox (recipient, subject, body_text) VALUES ('a@x.test', 'Hi', 'B')"
            )
            row_id = cur.lastrowid
            cur.execute(
                "INSERT INTO outbox_attachment (outbox_id, filename, content) "
                "VALUES (%s, 'a.pdf', %s)",
                (row_id, b"%PDF"),
            )
            cur.execute("SELECT status FROM outbox WHERE id = %s", (row_id,))
            assert cur.fetchone() == ("pending",)
            for forbidden in (
                "UPDATE outbox SET status = 'sent'",
                "DELETE FROM outbox",
                "INSERT INTO suppression (address) VALUES ('x@x.test')",
                "DELETE FROM outbox_event",
            ):
                with pytest.raises(pymysql.err.OperationalError, match="denied"):
                    cur.execute(forbidden)
    finally:
        mariadb_server.execute("DROP USER 'school_app'@'127.0.0.1'")


@pytest.mark.mariadb
def test_a_mariadb_reporting_account_only_reads(
    mariadb_url: str, mariadb_server: MariaDbServer, write_ini: WriteIni
) -> None:
    mariadb_server.execute("CREATE USER IF NOT EXISTS 'reports'@'%'")
    ini = str(write_ini(mariadb_url))
    try:
        assert cli("-c", ini, "db", "grant", "reports", "--read-only").returncode == 0
        with connect_as_account(mariadb_url, "reports") as reader, reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM outbox_event")
            assert cur.fetchone() == (0,)
            with pytest.raises(pymysql.err.OperationalError, match="denied"):
                cur.execute("INSERT INTO outbox (recipient, body_text) VALUES ('a@x.test', 'B')")
    finally:
        mariadb_server.execute("DROP USER 'reports'@'%'")
