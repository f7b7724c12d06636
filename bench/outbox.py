"""Fill and inspect a benchmark outbox with plain SQL (sqlite3 / psycopg / PyMySQL), as a host
would.

Rows are deterministic (fixed seed) and of fixed size: a realistic recipient and subject and
a plain-text body of exactly BODY_CHARS ASCII characters in lines under 76, so that the robot
sends it 7bit and every message is about 2 KB on the wire.
"""

from __future__ import annotations

import math
import random
import shutil
import sqlite3
import statistics
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from psycopg import sql
from sqlalchemy.engine import make_url

SEED = 5
BODY_CHARS = 1700
POOL = 997  # distinct bodies; row i uses body i % POOL (a prime, so it is not aligned)
INSERT = "INSERT INTO outbox (recipient, subject, body_text) VALUES ({0}, {0}, {0})"
CHUNK = 5000

FIRST = (
    "Ada Alan Barbara Camille Dmitri Elena Farid Grace Hugo Ines Jonas Keiko Lars Maria "
    "Nadia Oscar Priya Quentin Rosa Samir Tanja Ugo Vera Wen Ximena Yusuf Zoe"
).split()
LAST = (
    "Lovelace Turing Liskov Martin Petrov Garcia Haddad Hopper Moreau Silva Berg Tanaka "
    "Nilsen Rossi Karimi Wilde Sharma Blanc Ortega Nasser Kovac Conti Novak Li Diaz Aydin Shaw"
).split()
SUBJECTS = (
    "Your order #{n} has shipped",
    "Invoice {n} for your subscription",
    "Reminder: your appointment on day {d}",
    "Welcome to Example Shop, {first}",
    "Password reset requested for account {n}",
    "Weekly digest no. {d}: what is new",
)
WORDS = (
    "the order account delivery parcel invoice payment schedule team support customer "
    "message update service product week month receipt address change request thank you "
    "for your with from about please note that this will be available today tomorrow "
    "reference number tracking warehouse carrier estimated arrival window contact reply "
    "questions details summary subscription renewal plan monthly annual credit balance "
    "statement report newsletter event workshop registration confirmed cancelled"
).split()


@dataclass(frozen=True)
class Row:
    """What a host application inserts: recipient, subject, body_text."""

    recipient: str
    subject: str
    body_text: str


def _paragraphs(rng: random.Random) -> str:
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < BODY_CHARS * 2:
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 18))]
        sentences.append(" ".join(words).capitalize() + ".")
    paragraphs, step = [], 5
    for start in range(0, len(sentences), step):
        paragraphs.append(textwrap.fill(" ".join(sentences[start : start + step]), width=72))
    return "\n\n".join(paragraphs)


class RowMaker:
    """Deterministic rows: the same seed gives the same rows, in the same order."""

    def __init__(self, seed: int = SEED) -> None:
        rng = random.Random(seed)
        self.bodies = [_paragraphs(rng) for _ in range(POOL)]
        self.seed = seed

    def row(self, i: int) -> Row:
        """Row number i (0-based)."""
        first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
        subject = SUBJECTS[i % len(SUBJECTS)].format(n=100000 + i, d=i % 365 + 1, first=first)
        greeting = f"Hello {first} {last},\n\n"
        body = (greeting + self.bodies[i % POOL])[: BODY_CHARS - 1].rstrip() + "\n"
        body = body.ljust(BODY_CHARS - 1, ".")[: BODY_CHARS - 1] + "\n"
        recipient = f"{first} {last} <{first.lower()}.{last.lower()}.{i}@example.org>"
        return Row(recipient, subject, body)

    def rows(self, count: int, start: int = 0) -> Iterator[tuple[str, str, str]]:
        """`count` rows as (recipient, subject, body_text) tuples."""
        for i in range(start, start + count):
            r = self.row(i)
            yield (r.recipient, r.subject, r.body_text)


def _chunks(it: Iterator[tuple[str, str, str]], size: int) -> Iterator[list[tuple[str, str, str]]]:
    chunk: list[tuple[str, str, str]] = []
    for item in it:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- SQLite -----------------------------------------------------------------------------------


def sqlite_path(url: str) -> Path:
    """The file of a sqlite:/// URL."""
    return Path(url.removeprefix("sqlite:///"))


def sqlite_fill(path: Path, count: int, maker: RowMaker, start: int = 0) -> float:
    """INSERT `count` rows; return the seconds it took."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for chunk in _chunks(maker.rows(count, start), CHUNK):
            conn.executemany(INSERT.format("?"), chunk)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - t0


def sqlite_copy(template: Path, dest: Path) -> None:
    """A fresh copy of a filled (checkpointed, closed) database file."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, dest)


def sqlite_insert_one(conn: sqlite3.Connection, row: Row) -> None:
    """One host-style INSERT in its own transaction (autocommit connection)."""
    conn.execute(INSERT.format("?"), (row.recipient, row.subject, row.body_text))


# -- PostgreSQL -------------------------------------------------------------------------------


def pg_dsn(url: str) -> str:
    """A libpq URL from an SQLAlchemy one."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def pg_fill(url: str, count: int, maker: RowMaker, start: int = 0) -> float:
    """INSERT `count` rows (executemany, pipelined by psycopg), then VACUUM ANALYZE."""
    t0 = time.perf_counter()
    with psycopg.connect(pg_dsn(url)) as conn:
        with conn.cursor() as cur:
            for chunk in _chunks(maker.rows(count, start), CHUNK):
                cur.executemany(INSERT.format("%s"), chunk)
        conn.commit()
    with psycopg.connect(pg_dsn(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE outbox")
    return time.perf_counter() - t0


def pg_clone(admin_url: str, template: str, name: str) -> str:
    """CREATE DATABASE name TEMPLATE template (a file copy); return its URL."""
    with psycopg.connect(pg_dsn(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return admin_url.rsplit("/", 1)[0] + "/" + name


def pg_drop(admin_url: str, name: str) -> None:
    """DROP DATABASE name."""
    with psycopg.connect(pg_dsn(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# -- MariaDB/MySQL ----------------------------------------------------------------------------


def is_mysql(url: str) -> bool:
    """Whether `url` is a MariaDB/MySQL database."""
    return make_url(url).get_backend_name() in ("mysql", "mariadb")


def mysql_connect(url: str, database: str | None = None) -> pymysql.Connection[Any]:
    """A PyMySQL connection to the server of `url` (its database, or `database`)."""
    parsed = make_url(url)
    return pymysql.connect(
        host=parsed.host,
        port=parsed.port or 3306,
        user=parsed.username,
        password=parsed.password or "",
        database=database if database is not None else parsed.database,
        charset="utf8mb4",
    )


def mysql_fill(url: str, count: int, maker: RowMaker, start: int = 0) -> float:
    """INSERT `count` rows (executemany: PyMySQL sends multi-row INSERTs), then ANALYZE."""
    t0 = time.perf_counter()
    with mysql_connect(url) as conn, conn.cursor() as cur:
        for chunk in _chunks(maker.rows(count, start), CHUNK // 5):
            cur.executemany(INSERT.format("%s"), chunk)
            conn.commit()
        cur.execute("ANALYZE TABLE outbox")
    return time.perf_counter() - t0


# The columns a copy takes over: all but the generated queue_waiting.
COPIED = (
    "id, created_at, send_after, status, priority, account, sender, sender_name, reply_to, "
    "recipient, cc, bcc, subject, body_text, body_html, headers, context, batch, "
    "transactional, attempts, next_attempt_at, claimed_by, claimed_until, message_id, "
    "smtp_code, smtp_reply, last_error, sent_at, updated_at"
)


def mysql_clone(admin_url: str, template: str, name: str) -> str:
    """A copy of database `template` as `name` (tables by SHOW CREATE TABLE, rows by INSERT
    ... SELECT: MariaDB cannot copy a database); return its URL."""
    with mysql_connect(admin_url, database="") as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        for table in ("alembic_version", "outbox", "outbox_attachment", "outbox_event"):
            cur.execute(f"SHOW CREATE TABLE `{template}`.`{table}`")
            created = cur.fetchone()[1]
            cur.execute(f"USE `{name}`")
            cur.execute(created)
        cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (template,),
        )
        for (table,) in cur.fetchall():  # the rest as they are (account_state, web_*, ...)
            if table not in ("alembic_version", "outbox", "outbox_attachment", "outbox_event"):
                cur.execute(f"CREATE TABLE `{name}`.`{table}` LIKE `{template}`.`{table}`")
        cur.execute(
            f"INSERT INTO `{name}`.alembic_version SELECT * FROM `{template}`.alembic_version"
        )
        cur.execute(
            f"INSERT INTO `{name}`.outbox ({COPIED}) SELECT {COPIED} FROM `{template}`.outbox"
        )
        cur.execute(f"ANALYZE TABLE `{name}`.outbox")
        conn.commit()
    return admin_url.rsplit("/", 1)[0] + "/" + name + "?charset=utf8mb4"


def mysql_drop(admin_url: str, name: str) -> None:
    """DROP DATABASE name."""
    with mysql_connect(admin_url, database="") as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


# -- inspection -------------------------------------------------------------------------------

SENT_WINDOW = "SELECT count(*), min(sent_at), max(sent_at) FROM outbox WHERE status = 'sent'"
BY_STATUS = "SELECT status, count(*) FROM outbox GROUP BY status"


def _parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _query(url: str, query: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url), timeout=30)
        try:
            return list(conn.execute(query).fetchall())
        finally:
            conn.close()
    if is_mysql(url):
        with mysql_connect(url) as my, my.cursor() as cur:
            cur.execute(query)
            return list(cur.fetchall())
    with psycopg.connect(pg_dsn(url)) as pg:
        return list(pg.execute(query).fetchall())


def summary(url: str) -> dict[str, Any]:
    """Counts by status, and the sending window: first and last sent_at (database clock)."""
    sent, first, last = _query(url, SENT_WINDOW)[0]
    counts = {str(status): int(n) for status, n in _query(url, BY_STATUS)}
    first_t, last_t = _parse_time(first), _parse_time(last)
    window = (last_t - first_t).total_seconds() if first_t and last_t else 0.0
    return {"sent": int(sent), "statuses": counts, "window_seconds": round(window, 3)}


def latencies(url: str, after_id: int = 0) -> list[float]:
    """sent_at - created_at of the sent rows with id > after_id, in milliseconds (both from
    the database clock)."""
    rows = _query(
        url,
        f"SELECT created_at, sent_at FROM outbox WHERE status = 'sent' AND id > {int(after_id)}",
    )
    out = []
    for created, sent in rows:
        c, s = _parse_time(created), _parse_time(sent)
        if c is not None and s is not None:
            out.append((s - c).total_seconds() * 1000)
    return out


def sent_message_ids(url: str) -> list[str]:
    """The Message-IDs of the sent rows."""
    return [r[0] for r in _query(url, "SELECT message_id FROM outbox WHERE status = 'sent'")]


def claims_by_robot(url: str) -> dict[str, int]:
    """How many claims each robot made (outbox_event 'claimed' rows carry the worker id)."""
    rows = _query(
        url, "SELECT detail, count(*) FROM outbox_event WHERE kind = 'claimed' GROUP BY detail"
    )
    return {str(worker): int(n) for worker, n in rows}


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100), nearest-rank on sorted values; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    """statistics.median, 0.0 for no values."""
    return statistics.median(values) if values else 0.0


def max_id(url: str) -> int:
    """The highest outbox id, 0 for an empty table."""
    return int(_query(url, "SELECT coalesce(max(id), 0) FROM outbox")[0][0])


def count_sent(url: str, after_id: int = 0) -> int:
    """How many rows with id > after_id are sent."""
    query = f"SELECT count(*) FROM outbox WHERE status = 'sent' AND id > {int(after_id)}"
    return int(_query(url, query)[0][0])


def first_claim(url: str) -> datetime | None:
    """When the first row was claimed (database clock): a robot's sending starts there."""
    return _parse_time(_query(url, "SELECT min(at) FROM outbox_event WHERE kind = 'claimed'")[0][0])


def sent_window_from_claim(url: str) -> float:
    """Seconds from the first claim to the last `sent_at`: the robot's sending, its first
    connection's set-up included (0.0 when nothing was sent)."""
    claimed = first_claim(url)
    last = _parse_time(_query(url, "SELECT max(sent_at) FROM outbox WHERE status = 'sent'")[0][0])
    return (last - claimed).total_seconds() if claimed and last else 0.0


def set_accounts(url: str, every: int, account: str, others: str) -> None:
    """Give every `every`-th row (id % every = 0) `account`, the others `others`; every = 0
    gives all rows `others`."""
    case = f"CASE WHEN id % {int(every)} = 0 THEN '{account}' ELSE '{others}' END"
    query = f"UPDATE outbox SET account = {case if every else repr(others)}"
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url), timeout=30)
        try:
            conn.execute(query)
            conn.commit()
        finally:
            conn.close()
        return
    if is_mysql(url):
        with mysql_connect(url) as my:
            with my.cursor() as cur:
                cur.execute(query)
            my.commit()
        return
    with psycopg.connect(pg_dsn(url)) as pg:
        pg.execute(query)


def sent_times(url: str, account: str) -> list[datetime]:
    """The sent_at of the sent rows of `account`, in order."""
    rows = _query(
        url,
        f"SELECT sent_at FROM outbox WHERE status = 'sent' AND account = '{account}' "
        "ORDER BY sent_at",
    )
    return [t for t in (_parse_time(r[0]) for r in rows) if t is not None]


def count_sent_of(url: str, account: str, status: str = "sent") -> int:
    """How many rows of `account` are sent (or in `status`)."""
    query = f"SELECT count(*) FROM outbox WHERE status = '{status}' AND account = '{account}'"
    return int(_query(url, query)[0][0])


def pg_counters(url: str) -> dict[str, Any]:
    """The commit count of the database of `url` (pg_stat_database) and the cluster's WAL
    counters (pg_stat_wal, PostgreSQL 14 and later)."""
    with psycopg.connect(pg_dsn(url), autocommit=True) as pg:
        row = pg.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        out: dict[str, Any] = {"xact_commit": int(row[0]) if row else 0}
        try:
            wal = pg.execute(
                "SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"
            ).fetchone()
        except psycopg.Error:
            wal = None
        if wal:
            out |= {
                "wal_records": int(wal[0]),
                "wal_bytes": int(wal[1]),
                "wal_write": int(wal[2]),
                "wal_sync": int(wal[3]),
            }
        return out


def pg_settings(url: str, names: tuple[str, ...]) -> dict[str, str]:
    """SHOW each of `names`."""
    with psycopg.connect(pg_dsn(url), autocommit=True) as pg:
        return {name: str(pg.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]
