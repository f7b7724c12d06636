"""Crashes and outages against real processes: SIGKILLed robots, a PostgreSQL or MariaDB
server that goes away, an SQLite file locked by someone else. Nothing may be lost or left
`sending`; a repeat is allowed only for a message not yet recorded when the robot died (on a
connection, the one on the wire and the one whose outcome was being committed), with the
row's Message-ID.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pymysql
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import WriteIni
from tests.integration.host import host_sql, series_sql
from tests.support.mariadb import MariaDbServer
from tests.support.outage import RestartableDatabase
from tests.support.pg import PgCluster
from tests.support.pg_outage import pg_down, pg_up
from tests.support.robot_proc import RobotProcess, wait_until
from tests.support.smtpd import TestSMTPServer

CONNECTIONS = 3
UNRECORDED = 2 * CONNECTIONS  # sent, not yet recorded: on the wire, or being committed
BATCH = 20


def robot_ini(extra: str = "") -> str:
    """Three connections, small claims, an INFO-level JSON log."""
    return (
        f"[robot]\nconnections = {CONNECTIONS}\nbatch_size = {BATCH}\npoll_seconds = 0.2\n"
        f"{extra}\n[log]\nformat = json\nlevel = info\n"
    )


def insert_rows(url: str, n: int) -> None:
    """n rows r1@example.org .. rN@example.org, with plain SQL as a host application would."""
    source = (
        f"SELECT 'r' || i || '@example.org', 'crash ' || i, 'body ' || i FROM {series_sql(url, n)}"
    )
    host_sql(url, f"INSERT INTO outbox (recipient, subject, body_text) {source}")


def status_counts(url: str) -> dict[str, int]:
    return {
        str(s): int(c)
        for s, c in host_sql(url, "SELECT status, count(*) FROM outbox GROUP BY status")
    }


def all_sent(url: str, n: int) -> bool:
    return status_counts(url).get("sent", 0) == n


async def until_received(server: TestSMTPServer, n: int, robot: RobotProcess) -> None:
    """Wait (closely: the moment matters) until the server holds n messages or the robot died."""
    await wait_until(
        lambda: len(server.received) >= n or not robot.alive,
        60,
        f"{n} messages received",
        interval=0.005,
        describe=lambda: f"{len(server.received)} received; {robot.tail(10)}",
    )
    assert robot.alive, f"the robot exited early ({robot.returncode}):\n{robot.tail()}"


@dataclass
class Tally:
    """What the database says against what the SMTP server received, per recipient."""

    rows: dict[str, tuple[int, str, int, str | None]]  # recipient: (id, status, attempts, mid)
    received: dict[str, list[str]] = field(default_factory=dict)  # recipient: Message-IDs

    @property
    def duplicates(self) -> dict[str, int]:
        """Recipients received more than once: how many extra copies."""
        return {r: len(ids) - 1 for r, ids in self.received.items() if len(ids) > 1}


def tally(url: str, server: TestSMTPServer) -> Tally:
    found = host_sql(url, "SELECT recipient, id, status, attempts, message_id FROM outbox")
    result = Tally({r[0]: (int(r[1]), str(r[2]), int(r[3]), r[4]) for r in found})
    for message in server.received:
        assert len(message.rcpt_tos) == 1, message.rcpt_tos
        result.received.setdefault(message.rcpt_tos[0], []).append(
            str(message.message()["Message-ID"])
        )
    return result


def check_delivery(t: Tally, max_duplicates: int, label: str) -> int:
    """Every row sent, received, with its own Message-ID; returns the number of repeats."""
    statuses = Counter(status for _, status, _, _ in t.rows.values())
    assert statuses == {"sent": len(t.rows)}, f"{label}: statuses {dict(statuses)}"
    strangers = set(t.received) - set(t.rows)
    assert not strangers, f"{label}: received for no row: {sorted(strangers)[:5]}"
    lost = [r for r in t.rows if r not in t.received]
    assert not lost, f"{label}: {len(lost)} rows marked sent but never received: {lost[:5]}"
    for recipient, (row_id, _, _, message_id) in t.rows.items():
        assert message_id, f"{label}: row {row_id} has no message_id"
        got = t.received[recipient]
        assert set(got) == {message_id}, (
            f"{label}: row {row_id} ({recipient}) is {message_id} but the server got {got}"
        )
    repeats = sum(t.duplicates.values())
    assert repeats <= max_duplicates, (
        f"{label}: {repeats} repeated messages (at most {max_duplicates} allowed): "
        f"{dict(sorted(t.duplicates.items())[:10])}"
    )
    return repeats


# -- 1. SIGKILL, three times, then restart -------------------------------------------------


async def test_sigkill_three_times_loses_nothing_and_repeats_only_the_wire(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    total, kill_at = 300, (40, 120, 200)
    lease = 10  # the smallest the config accepts; the reaper then runs every 5 s
    insert_rows(db_url, total)
    smtp_server.data_delay = 0.01
    ini = write_ini(db_url, smtp_server.port, robot_ini(f"lease_seconds = {lease}"))
    robots: list[RobotProcess] = []
    try:
        for target in kill_at:
            robot = await RobotProcess(ini, "run").start()
            robots.append(robot)
            await until_received(smtp_server, target, robot)
            assert await robot.kill() == -9
            assert not robot.named("robot.crashed"), robot.tail()

        # A row claimed by a dead robot stays `sending` until its lease expires (within
        # `lease` seconds of the kill) and the new robot's reaper (at start, then every 5 s)
        # gives it back: the last rows go out some 10-12 s after the last kill.
        last = await RobotProcess(ini, "run").start()
        robots.append(last)
        await wait_until(
            lambda: all_sent(db_url, total) or not last.alive,
            90,
            "every row sent",
            interval=0.25,
            describe=lambda: f"{status_counts(db_url)}; {last.tail(10)}",
        )
        assert last.alive, f"the robot exited ({last.returncode}):\n{last.tail()}"
        assert await last.terminate() == 0, last.tail()
    finally:
        for robot in robots:
            await robot.close()

    kills = len(kill_at)
    t = tally(db_url, smtp_server)
    repeats = check_delivery(t, kills * UNRECORDED, f"{kills} kills x {CONNECTIONS} connections")
    backend = make_url(db_url).get_backend_name()
    print(
        f"\n[{backend}] SIGKILL x{kills}: {len(smtp_server.received)} received "
        f"for {total} rows, {repeats} repeated"
    )

    reaped = Counter(
        {
            int(row_id): int(n)
            for row_id, n in host_sql(
                db_url,
                "SELECT outbox_id, count(*) FROM outbox_event "
                "WHERE kind = 'lease-expired' GROUP BY outbox_id",
            )
        }
    )
    assert reaped, "the kills left no claimed row behind: the test tested nothing"
    # Each kill strands at most what one robot holds: its queue (<= batch) and, for each
    # connection, the two rows being committed, the one whose envelope is on the wire and
    # the next one taken.
    assert sum(reaped.values()) <= kills * (BATCH + 4 * CONNECTIONS), reaped
    by_id = {
        row_id: (recipient, attempts) for recipient, (row_id, _, attempts, _) in t.rows.items()
    }
    for row_id, (recipient, attempts) in by_id.items():
        # attempts counts every claim: the one that sent it plus one per lost lease.
        assert attempts == 1 + reaped[row_id], (row_id, attempts, reaped[row_id])
        assert attempts <= 1 + kills, (row_id, attempts)
        if recipient in t.duplicates:
            assert reaped[row_id] >= 1, f"row {row_id} repeated without a lost lease"
    unavailable = [e for r in robots for e in r.named("database.unavailable")]
    assert unavailable == []


# -- 2. PostgreSQL or MariaDB goes away while the robot sends ------------------------------


@pytest.mark.parametrize("outage", [2.0, 0.0], ids=["2s", "restart"])
async def test_database_outage_while_sending(
    restartable_db: RestartableDatabase,
    outage: float,
    write_ini: WriteIni,
    smtp_server: TestSMTPServer,
) -> None:
    """The server goes down for `outage` seconds (0: a restart) in the middle of a drain:
    nothing is lost, at most a message per connection is repeated, the robot goes on."""
    db_url, total = restartable_db.url, 200
    insert_rows(db_url, total)
    smtp_server.data_delay = 0.01
    ini = write_ini(db_url, smtp_server.port, robot_ini())
    robot = await RobotProcess(ini, "run").start()
    try:
        await wait_until(
            lambda: len(smtp_server.received) >= 40 or not robot.alive,
            60,
            "40 messages received",
            interval=0.01,
            describe=robot.tail,
        )
        assert robot.alive, robot.tail()
        down = False
        try:
            await asyncio.to_thread(restartable_db.down)
            down = True
            before = len(smtp_server.received)
            await asyncio.sleep(outage)
            during = len(smtp_server.received) - before
        finally:
            if down or not database_answers(db_url):
                await asyncio.to_thread(restartable_db.up)
        # Each connection may finish the message on its wire and send one more while the
        # first commits, then waits to record it.
        assert during <= UNRECORDED, f"{during} messages sent while the database was down"
        assert robot.alive, f"the robot exited ({robot.returncode}):\n{robot.tail()}"

        await wait_until(
            lambda: all_sent(db_url, total) or not robot.alive,
            60,
            "every row sent after the outage",
            interval=0.25,
            describe=lambda: f"{status_counts(db_url)}; {robot.tail(10)}",
        )
        assert robot.alive, f"the robot exited ({robot.returncode}):\n{robot.tail()}"
        errors = [e for e in robot.named("database.unavailable") if e.get("level") == "error"]
        if outage:
            assert errors, f"no database error logged:\n{robot.tail()}"
        assert not robot.named("robot.crashed"), robot.tail()
        assert await robot.terminate() == 0, robot.tail()
    finally:
        await robot.close()
    what = f"{restartable_db.kind} {'outage' if outage else 'restart'}"
    repeats = check_delivery(tally(db_url, smtp_server), UNRECORDED, what)
    doing = Counter(str(e.get("doing")) for e in errors)
    print(
        f"\n[{restartable_db.kind}] {outage}s outage: {during} sent while down, "
        f"{repeats} repeated, errors logged {dict(doing)}"
    )


def database_answers(url: str) -> bool:
    """Whether the server of `url` takes a query now."""
    try:
        host_sql(url, "SELECT 1")
    except (psycopg.Error, pymysql.Error):
        return False
    return True


# -- 3. Someone holds the SQLite write lock -------------------------------------------------


SHORT_BUSY = "import robot.outbox.engine\nrobot.outbox.engine.SQLITE_BUSY_MS = 1000\n"


@pytest.mark.parametrize(
    ("busy_prelude", "hold"),
    [
        pytest.param("", 5.0, id="busy-30s-hold-5s"),
        pytest.param(SHORT_BUSY, 3.0, id="busy-1s-hold-3s"),
    ],
)
async def test_sqlite_locked_for_a_while(
    busy_prelude: str,
    hold: float,
    tmp_path: Path,
    write_ini: WriteIni,
    smtp_server: TestSMTPServer,
) -> None:
    url = f"sqlite:///{tmp_path}/robot.db"
    total = 100
    smtp_server.data_delay = 0.01
    ini = write_ini(url, smtp_server.port, robot_ini())
    path = make_url(url).database
    assert path
    robot = RobotProcess(ini, "run", prelude=busy_prelude)
    await robot.start()
    try:
        await robot.wait_for_event("robot.started", 60)
        insert_rows(url, total)
        await wait_until(
            lambda: len(smtp_server.received) >= 20 or not robot.alive,
            60,
            "20 messages received",
            interval=0.01,
            describe=robot.tail,
        )
        locker = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
            before = len(smtp_server.received)
            await asyncio.sleep(hold)
            during = len(smtp_server.received) - before
            assert robot.alive, f"the robot exited ({robot.returncode}):\n{robot.tail()}"
        finally:
            if locker.in_transaction:
                locker.execute("ROLLBACK")
            locker.close()
        # A connection may finish the message on its wire and send one more while the first
        # commits, then waits to record it.
        assert during <= UNRECORDED, f"{during} messages sent while the database was locked"
        await wait_until(
            lambda: all_sent(url, total) or not robot.alive,
            60,
            "every row sent after the lock",
            interval=0.25,
            describe=lambda: f"{status_counts(url)}; {robot.tail(10)}",
        )
        assert robot.alive, f"the robot exited ({robot.returncode}):\n{robot.tail()}"
        assert await robot.terminate() == 0, robot.tail()
    finally:
        await robot.close()
    assert not robot.named("robot.crashed"), robot.tail()
    errors = robot.named("database.unavailable")
    if busy_prelude:
        assert errors, f"a lock held past the busy timeout logged nothing:\n{robot.tail()}"
    else:
        assert not errors, "a lock shorter than the busy timeout should only make it wait"
    check_delivery(tally(url, smtp_server), 0, "SQLite lock")
    doing = Counter(str(e.get("doing")) for e in errors)
    print(f"\n[sqlite] lock held {hold}s: {during} sent meanwhile, errors logged {dict(doing)}")


async def test_sqlite_locked_longer_than_the_lease_sends_each_row_once(
    tmp_path: Path,
    write_ini: WriteIni,
    smtp_server: TestSMTPServer,
) -> None:
    """A host holds SQLite's lock longer than the lease while the robot has rows in hand:
    their leases run out in the database, yet the robot's own reaper must not take back the
    rows it is still sending, and nothing is sent twice."""
    url = f"sqlite:///{tmp_path}/robot.db"
    # Renewal and reap both every 5 s, at the same moments (the reap first); every write
    # fails after a second of waiting while the lock is held.
    lease, busy_prelude = 15, SHORT_BUSY
    total, hold = 60, lease + 4.0
    smtp_server.data_delay = 0.2  # slow: a claim stays in hand for seconds
    ini = write_ini(url, smtp_server.port, robot_ini(f"lease_seconds = {lease}"))
    path = make_url(url).database
    assert path
    robot = RobotProcess(ini, "run", prelude=busy_prelude)
    await robot.start()
    try:
        await robot.wait_for_event("robot.started", 60)
        insert_rows(url, total)
        await wait_until(
            lambda: len(smtp_server.received) >= 5 or not robot.alive,
            60,
            "5 messages received",
            interval=0.01,
            describe=robot.tail,
        )
        locker = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
            await asyncio.sleep(hold)
            # WAL: a reader sees the rows the robot holds, their leases run out.
            (expired,) = locker.execute(
                "SELECT count(*) FROM outbox WHERE status = 'sending' "
                "AND claimed_until < strftime('%Y-%m-%d %H:%M:%f', 'now')"
            ).fetchone()
            assert robot.alive, f"the robot exited ({robot.returncode}):\n{robot.tail()}"
        finally:
            if locker.in_transaction:
                locker.execute("ROLLBACK")
            locker.close()
        assert expired > 0, "no lease ran out while the lock was held: the test tested nothing"
        await wait_until(
            lambda: all_sent(url, total) or not robot.alive,
            90,
            "every row sent after the lock",
            interval=0.25,
            describe=lambda: f"{status_counts(url)}; {robot.tail(10)}",
        )
        assert robot.alive, f"the robot exited ({robot.returncode}):\n{robot.tail()}"
        assert await robot.terminate() == 0, robot.tail()
    finally:
        await robot.close()
    assert not robot.named("robot.crashed"), robot.tail()
    check_delivery(tally(url, smtp_server), 0, f"SQLite locked {hold}s, lease {lease}s")
    assert not robot.named("lease.expired"), "the robot took back rows it had in hand"


# -- 4. PostgreSQL restarts while the robot waits --------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_postgresql_restart_reconnects_without_an_error(
    db_url: str, pg_cluster: PgCluster, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """Between two bursts of rows the server restarts. Its pooled connections and the group
    commit's are dead, and without pre-ping only their next statement finds out: that work
    is done again at once on a new connection, logged at info level, never as an error."""
    # No timed job touches the database during the short outage: no polling (LISTEN wakes
    # the robot), the reaper and renewal every 100 s.
    quiet = "[robot]\npoll_seconds = 60\nlease_seconds = 300\n[log]\nformat = json\nlevel = info\n"
    ini = write_ini(db_url, smtp_server.port, quiet)
    robot = await RobotProcess(ini, "run").start()
    try:
        await robot.wait_for_event("robot.started", 60)
        insert_rows(db_url, 10)
        await wait_until(
            lambda: all_sent(db_url, 10) or not robot.alive,
            60,
            "the first 10 rows sent",
            interval=0.1,
            describe=lambda: f"{status_counts(db_url)}; {robot.tail(10)}",
        )
        await asyncio.to_thread(pg_down, pg_cluster)
        await asyncio.to_thread(pg_up, pg_cluster)
        # The LISTEN connection comes back within seconds and wakes the robot.
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, subject, body_text) "
            f"SELECT 'after' || i || '@example.org', 'after', 'x' FROM {series_sql(db_url, 10)}",
        )
        await wait_until(
            lambda: all_sent(db_url, 20) or not robot.alive,
            60,
            "the 10 rows of after the restart sent",
            interval=0.1,
            describe=lambda: f"{status_counts(db_url)}; {robot.tail(10)}",
        )
        assert await robot.terminate() == 0, robot.tail()
    finally:
        await robot.close()
    errors = [e for e in robot.events if e.get("level") == "error"]
    assert errors == [], robot.tail()
    reconnected = robot.named("database.reconnected")
    assert {e["doing"] for e in reconnected} >= {"record"}, robot.tail()
    assert all(e["level"] == "info" for e in reconnected)
    check_delivery(tally(db_url, smtp_server), 0, "PostgreSQL restart")


@pytest.mark.mariadb
@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
async def test_mariadb_restart_reconnects_without_an_error(
    db_url: str,
    mariadb_server: MariaDbServer,
    write_ini: WriteIni,
    smtp_server: TestSMTPServer,
) -> None:
    """As on PostgreSQL: the server restarts between two bursts of rows, its pooled
    connections die with it, and the next statement on one is done again at once on a new
    connection, logged at info level, never as an error. MariaDB has no NOTIFY: with polling
    every 60 s (so that nothing touches the database during the restart), a SIGHUP wakes the
    robot for the second burst."""
    quiet = "[robot]\npoll_seconds = 60\nlease_seconds = 300\n[log]\nformat = json\nlevel = info\n"
    ini = write_ini(db_url, smtp_server.port, quiet)
    robot = await RobotProcess(ini, "run").start()
    try:
        await robot.wait_for_event("robot.started", 60)
        insert_rows(db_url, 10)
        robot.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await wait_until(
            lambda: all_sent(db_url, 10) or not robot.alive,
            60,
            "the first 10 rows sent",
            interval=0.1,
            describe=lambda: f"{status_counts(db_url)}; {robot.tail(10)}",
        )
        await asyncio.to_thread(mariadb_server.down)
        await asyncio.to_thread(mariadb_server.up)
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, subject, body_text) "
            f"SELECT 'after' || i || '@example.org', 'after', 'x' FROM {series_sql(db_url, 10)}",
        )
        robot.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await wait_until(
            lambda: all_sent(db_url, 20) or not robot.alive,
            60,
            "the 10 rows of after the restart sent",
            interval=0.1,
            describe=lambda: f"{status_counts(db_url)}; {robot.tail(10)}",
        )
        assert await robot.terminate() == 0, robot.tail()
    finally:
        await robot.close()
    errors = [e for e in robot.events if e.get("level") == "error"]
    assert errors == [], robot.tail()
    reconnected = robot.named("database.reconnected")
    assert reconnected, robot.tail()
    assert all(e["level"] == "info" for e in reconnected)
    check_delivery(tally(db_url, smtp_server), 0, "MariaDB restart")
