"""Talk to the outbox the way a host application does: its own driver, plain SQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy.engine import make_url


def host_sql(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement with the plain driver (sqlite3 or psycopg), commit, return rows.

    Write placeholders as `?`; they are turned into `%s` for psycopg.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with sqlite3.connect(parsed.database or ":memory:", timeout=30) as conn:
            cursor = conn.execute(sql, tuple(params))
            return cursor.fetchall()
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
    return f"now() + interval '{seconds} seconds'"


def insert_many(url: str, n: int, batch: str | None = None, extra: str = "") -> list[int]:
    """n rows through plain SQL; returns their ids."""
    first = int(host_sql(url, "SELECT coalesce(max(id), 0) FROM outbox")[0][0])
    batch_sql = f"'{batch}'" if batch else "NULL"
    if url.startswith("sqlite"):
        source = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) "
        source += f"SELECT 'r' || i || '@example.org', 'x', {batch_sql} {extra} FROM n"
    else:
        source = f"SELECT 'r' || i || '@example.org', 'x', {batch_sql} {extra} "
        source += f"FROM generate_series(1, {n}) AS i"
    columns = "recipient, body_text, batch" + (", created_at" if extra else "")
    host_sql(url, f"INSERT INTO outbox ({columns}) {source}")
    return [
        int(r[0]) for r in host_sql(url, f"SELECT id FROM outbox WHERE id > {first} ORDER BY id")
    ]
