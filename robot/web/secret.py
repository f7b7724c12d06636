"""The secret that signs the console's session cookies: [web] session_secret_file, else one
generated on first start and kept in the database (table web_setting)."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from robot.config import WebSettings
from robot.errors import ConfigError
from robot.outbox.schema import web_setting

SECRET_NAME = "session_secret"
MIN_SECRET_LENGTH = 32


def session_secret(web: WebSettings, engine: Engine) -> str:
    """The signing secret. Raises ConfigError when the file is unreadable or too short."""
    if web.session_secret_file:
        path = Path(web.session_secret_file)
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"[web] session_secret_file {path}: cannot read: {exc}",
                key="web.session_secret_file",
            ) from None
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"[web] session_secret_file {path}: needs at least {MIN_SECRET_LENGTH} characters",
                key="web.session_secret_file",
            )
        return secret
    query = select(web_setting.c.value).where(web_setting.c.name == SECRET_NAME)
    with engine.connect() as conn:
        stored = conn.execute(query).scalar_one_or_none()
    if stored is not None:
        return str(stored)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(web_setting).values(name=SECRET_NAME, value=secrets.token_urlsafe(48))
            )
    except IntegrityError:  # another console process stored its own first: use that one
        pass
    with engine.connect() as conn:
        return str(conn.execute(query).scalar_one())
