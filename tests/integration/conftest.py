"""Real databases (SQLite files, a throwaway PostgreSQL cluster, a throwaway MariaDB server)
and a real SMTP server.

The PostgreSQL cluster and the MariaDB server are started by the test set-up itself from the
installed binaries; if one cannot start, the tests fail: they are never skipped.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from sqlalchemy import Engine

from robot.outbox.engine import make_engine, upgrade
from tests.support.mariadb import MariaDbServer
from tests.support.outage import RestartableDatabase
from tests.support.pg import PgCluster
from tests.support.pg_outage import pg_down, pg_up
from tests.support.smtpd import TestSMTPServer

TEMPLATE = "robot_template"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the run, with a migrated template database."""
    cluster = PgCluster()
    cluster.start()
    engine = make_engine(cluster.create_database(TEMPLATE))
    upgrade(engine)
    engine.dispose()
    yield cluster
    cluster.stop()


class MariaDbDatabases:
    """Migrated databases on the throwaway MariaDB server. MariaDB cannot copy a database:
    a new one is made from the template's CREATE TABLE statements (0.23 s, and 0.11 s to
    drop it), so a database a test is done with is emptied (TRUNCATE, 0.04 s) and handed to
    the next test instead."""

    def __init__(self, server: MariaDbServer) -> None:
        self.server = server
        engine = make_engine(server.create_database(TEMPLATE))
        upgrade(engine)
        engine.dispose()
        self.template = server.template(TEMPLATE)
        self.version = self.template[-1].split("'")[1]
        self.free: list[str] = []

    def take(self) -> tuple[str, str]:
        """A migrated, empty database: (name, URL)."""
        if self.free:
            name = self.free.pop()
            return name, self.server.url(name)
        name = f"t_{uuid.uuid4().hex[:12]}"
        return name, self.server.create_from(name, self.template)

    def give_back(self, name: str) -> None:
        """Empty database `name` for the next test, or drop it when it cannot be reused."""
        if self.server.empty(name, self.version):
            self.free.append(name)
        else:
            self.server.drop_database(name)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDbServer]:
    """One MariaDB server for the run."""
    server = MariaDbServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_databases(mariadb_server: MariaDbServer) -> MariaDbDatabases:
    """The migrated databases the MariaDB tests take and give back."""
    return MariaDbDatabases(mariadb_server)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/robot.db"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    if request.param == "mariadb":
        databases: MariaDbDatabases = request.getfixturevalue("mariadb_databases")
        name, url = databases.take()
        yield url
        databases.give_back(name)
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield cluster.create_database(name, template=TEMPLATE)
    cluster.drop_database(name)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url`, disposed after the test."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
async def smtp_server() -> AsyncIterator[TestSMTPServer]:
    """A plain SMTP server on 127.0.0.1, in the test's event loop."""
    server = TestSMTPServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A private CA the tests trust; the servers get certificates from it."""
    return trustme.CA()


@pytest.fixture
def ca_file(tls_ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA certificate as a PEM file, for [smtp] ca_file."""
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def restartable_db(request: pytest.FixtureRequest) -> Iterator[RestartableDatabase]:
    """A database on the throwaway PostgreSQL cluster or MariaDB server, with the server's
    down and up (blocking: call them in a thread where an event loop must go on)."""
    if request.param == "mariadb":
        server: MariaDbServer = request.getfixturevalue("mariadb_server")
        url = request.getfixturevalue("mariadb_url")
        yield RestartableDatabase("mariadb", url, server.down, server.up)
        server.up()  # a test that failed half way leaves it running again
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    url = request.getfixturevalue("pg_url")
    yield RestartableDatabase(
        "postgresql", url, functools.partial(pg_down, cluster), functools.partial(pg_up, cluster)
    )


@pytest.fixture
def mariadb_url(mariadb_databases: MariaDbDatabases) -> Iterator[str]:
    """A migrated, empty MariaDB database only (for MariaDB-only behaviour)."""
    name, url = mariadb_databases.take()
    yield url
    mariadb_databases.give_back(name)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A migrated, empty PostgreSQL database only (for PostgreSQL-only behaviour)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield pg_cluster.create_database(name, template=TEMPLATE)
    pg_cluster.drop_database(name)
