"""The console's users (table web_user): names, roles and argon2id password hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from robot.outbox.schema import WEB_ROLES, web_user

ROLES = WEB_ROLES  # viewer reads; operator also changes rows and the suppression list; admin all
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte of password would be a way to burn CPU
NAME_LENGTH = 64


@dataclass(frozen=True)
class User:
    """A console user as the pages see it: never the password hash."""

    name: str
    role: str
    created_at: datetime | None = None
    sessions_end_at: datetime | None = None  # sessions begun before this are over

    def session_is_current(self, began: float) -> bool:
        """True when a session begun at `began` (seconds since the epoch) still counts."""
        return self.sessions_end_at is None or began > self.sessions_end_at.timestamp()

    @property
    def can_act(self) -> bool:
        """Retract, hold, release, retry, and change the suppression list."""
        return self.role in ("operator", "admin")

    @property
    def is_admin(self) -> bool:
        """Everything, the audit log included."""
        return self.role == "admin"


class BadUser(ValueError):
    """A user name, role or password the console does not accept."""


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with argon2-cffi's recommended costs


@cache
def _unknown_user_hash() -> str:
    """A hash checked for names that do not exist, so that they cost the same time."""
    return _hasher().hash("no such user: this never matches a password that is typed")


def check_password(password: str) -> None:
    """Raise BadUser when `password` is too short or too long."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadUser(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadUser(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")


class Users:
    """web_user through one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str, role: str, password: str) -> bool:
        """Add a user; False when the name is taken. Raises BadUser."""
        _check_name(name)
        _check_role(role)
        check_password(password)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(web_user).values(
                        name=name, role=role, password_hash=_hasher().hash(password)
                    )
                )
        except IntegrityError:
            return False
        return True

    def remove(self, name: str) -> bool:
        """Remove a user; False when there was none of that name."""
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(web_user).where(web_user.c.name == name)).rowcount)

    def set_password(self, name: str, password: str) -> bool:
        """Give a user a new password, which ends their sessions; False when there is none
        of that name."""
        check_password(password)
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(web_user)
                    .where(web_user.c.name == name)
                    .values(password_hash=_hasher().hash(password), sessions_end_at=_now())
                ).rowcount
            )

    def end_sessions(self, name: str) -> None:
        """End every session of `name` begun until now (signing out ends them all)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(web_user).where(web_user.c.name == name).values(sessions_end_at=_now())
            )

    def get(self, name: str) -> User | None:
        """The user called `name`, or None."""
        with self.engine.connect() as conn:
            found = conn.execute(select(*USER_COLUMNS).where(web_user.c.name == name)).first()
        return None if found is None else User(*found)

    def listing(self) -> list[User]:
        """Every user, by name."""
        with self.engine.connect() as conn:
            found = conn.execute(select(*USER_COLUMNS).order_by(web_user.c.name)).all()
        return [User(*r) for r in found]

    def verify(self, name: str, password: str) -> User | None:
        """The user when `password` is theirs, else None. An unknown name costs one hash
        check too, so that the time taken does not tell which names exist."""
        if len(password) > MAX_PASSWORD_LENGTH or len(name) > NAME_LENGTH:
            _verify(_unknown_user_hash(), "")
            return None
        with self.engine.connect() as conn:
            found = conn.execute(select(web_user).where(web_user.c.name == name)).first()
        if found is None:
            _verify(_unknown_user_hash(), password)
            return None
        if not _verify(found.password_hash, password):
            return None
        return User(found.name, found.role, found.created_at, found.sessions_end_at)


USER_COLUMNS = (web_user.c.name, web_user.c.role, web_user.c.created_at, web_user.c.sessions_end_at)


def _now() -> datetime:
    return datetime.now(UTC)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _check_name(name: str) -> None:
    if not name or len(name) > NAME_LENGTH or not name.isprintable() or name != name.strip():
        raise BadUser(
            f"a user name is 1 to {NAME_LENGTH} printable characters, without spaces at either end"
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise BadUser(f"unknown role {role!r} (viewer, operator or admin)")
