"""Real databases (SQLite files, a throwaway PostgreSQL cluster) and a real SMTP server.

The PostgreSQL cluster is started by the test set-up itself from the installed binaries; if
it cannot start, the tests fail: they are never skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from sqlalchemy import Engine

from robot.outbox.engine import make_engine, upgrade
from tests.support.pg import PgCluster
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


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
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


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A migrated, empty PostgreSQL database only (for PostgreSQL-only behaviour)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield pg_cluster.create_database(name, template=TEMPLATE)
    pg_cluster.drop_database(name)
