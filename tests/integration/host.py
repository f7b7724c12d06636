"""Talk to the outbox the way a host application does: its own driver, plain SQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import psycopg
import pymysql
from sqlalchemy.engine import make_url

MYSQL = ("mysql", "mariadb")


def is_mysql(url: str) -> bool:
    """Whether `url` is a MariaDB/MySQL database."""
    return make_url(url).get_backend_name() in MYSQL


def host_sql(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement with the plain driver (sqlite3, psycopg or PyMySQL), commit,
    return rows.

    Write placeholders as `?`; they are turned into `%s` for psycopg and PyMySQL. A MariaDB
    session keeps the server's time zone, as a host's does (the columns' defaults are UTC),
    and reads `||` as concatenation and a backslash as itself (PIPES_AS_CONCAT,
    NO_BACKSLASH_ESCAPES: standard SQL), so that tests write it once.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with sqlite3.connect(parsed.database or ":memory:", timeout=30) as conn:
            cursor = conn.execute(sql, tuple(params))
            return cursor.fetchall()
    if parsed.get_backend_name() in MYSQL:
        with (
            pymysql.connect(
                host=parsed.host,
                port=parsed.port or 3306,
                user=parsed.username,
                password=parsed.password or "",
                database=parsed.database,
                charset="utf8mb4",
                init_command="SET SESSION sql_mode = concat(@@sql_mode, ',PIPES_AS_CONCAT,NO_BACKSLASH_ESCAPES')",
            ) as my,
            my.cursor() as my_cursor,
        ):
            my_cursor.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))
            found = list(my_cursor.fetchall()) if my_cursor.description else []
            my.commit()
            return found
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as pg:
        pg_cursor = pg.execute(sql.replace("?", "%s"), tuple(params))
        rows = pg_cursor.fetchall() if pg_cursor.description else []
        pg.commit()
        return rows


def now_plus_sql(url: str, seconds: float) -> str:
    """SQL for 'the database clock plus `seconds`' in the host's dialect."""
    if url.startswith("sqlite"):
        return f"strftime('%Y-%m-%d %H:%M:%f', 'now', '{seconds:+} seconds')"
    if is_mysql(url):
        return f"(utc_timestamp(6) + INTERVAL {round(seconds * 1_000_000)} MICROSECOND)"
    return f"now() + interval '{seconds} seconds'"


def series_sql(url: str, n: int) -> str:
    """A FROM item of the numbers 1 to `n` in a column `i`, in the host's dialect."""
    if url.startswith("sqlite"):
        return f"(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i FROM n) AS n"
    if is_mysql(url):  # MariaDB's Sequence engine
        return f"(SELECT seq AS i FROM seq_1_to_{n}) AS n"
    return f"generate_series(1, {n}) AS i"


def insert_many(url: str, n: int, batch: str | None = None, extra: str = "") -> list[int]:
    """n rows through plain SQL; returns their ids."""
    first = int(host_sql(url, "SELECT coalesce(max(id), 0) FROM outbox")[0][0])
    batch_sql = f"'{batch}'" if batch else "NULL"
    source = f"SELECT 'r' || i || '@example.org', 'x', {batch_sql} {extra} "
    source += f"FROM {series_sql(url, n)}"
    columns = "recipient, body_text, batch" + (", created_at" if extra else "")
    host_sql(url, f"INSERT INTO outbox ({columns}) {source}")
    return [
        int(r[0]) for r in host_sql(url, f"SELECT id FROM outbox WHERE id > {first} ORDER BY id")
    ]
