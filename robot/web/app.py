"""The console's pages and actions (Starlette): sign-in, the live queue with its oops buttons,
a row, the suppression list, the accounts, and the audit log.

Every state-changing request is a POST with the session's CSRF token; every action calls the
same Operations methods as the command line and is written to the audit log."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader
from sqlalchemy import ColumnElement, Engine
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from robot.config import Settings
from robot.outbox.account_states import AccountState, AccountStates, pause_end
from robot.outbox.operations import TRANSITIONS, Operations, operations_for
from robot.outbox.rows import Change
from robot.outbox.schema import Status
from robot.outcome.judge import deciding_refusal
from robot.send.probe import send_test
from robot.web.audit import Audit
from robot.web.security import (
    CSRF_FIELD,
    PREVIEW_POLICY,
    ROW_PAGE_POLICY,
    SecurityHeaders,
    check_csrf,
    csrf_token,
)
from robot.web.throttle import LoginThrottle
from robot.web.users import User, Users

HERE = Path(__file__).parent
PAGE_ROWS = 50  # rows per page of the queue
SOON_ROWS = 50  # rows shown in "leaving soon"
SORTED_ROWS = 5000  # up to this many rows of one status are sorted by id; more are walked
MAX_IDS = 5000  # rows one action may name (a filter's confirmation takes the first ones)
SESSION_SECONDS = 8 * 3600
SESSION_COOKIE = "robot_console"
VERBS = ("retract", "hold", "release", "retry")
REPORTS_LEFT = ("retract", "hold")  # on a filter, rows that left before it are too late too
LABELS = {"retract": "Retract", "hold": "Hold", "release": "Release", "retry": "Retry"}
PAST = {"retract": "retracted", "hold": "held", "release": "released", "retry": "retried"}
FILTER_KEYS = ("status", "batch", "account", "q")
LOCAL_PATH = re.compile(r"/(?![/\\])[^\s\\]*")  # a path on this console, never //host or /\host
WRONG_LOGIN = "Wrong user name or password."
THROTTLED = "Too many failed sign-ins: wait a quarter of an hour and try again."


@dataclass(frozen=True)
class QueueFilter:
    """What the queue page shows: a status, a batch, an account, text in recipient/subject."""

    status: str = ""
    batch: str = ""
    account: str = ""
    q: str = ""

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> QueueFilter:
        status = values.get("status", "").strip()
        return cls(
            status=status if status in {s.value for s in Status} else "",
            batch=values.get("batch", "").strip()[:200],
            account=values.get("account", "").strip()[:200],
            q=values.get("q", "").strip()[:200],
        )

    def where(
        self, ops: Operations, *, with_status: bool = True, walk_ids: bool = False
    ) -> list[ColumnElement[bool]]:
        return ops.console_filter(
            status=self.status if with_status else None,
            batch=self.batch or None,
            account=self.account or None,
            text=self.q or None,
            walk_ids=walk_ids,
        )

    def query(self, **more: str | int) -> str:
        """The filter (and `more`) as a query string."""
        pairs: dict[str, str | int] = {k: getattr(self, k) for k in FILTER_KEYS}
        pairs.update(more)
        return urlencode({k: v for k, v in pairs.items() if v not in ("", None)})

    @property
    def empty(self) -> bool:
        return not any(getattr(self, k) for k in FILTER_KEYS)

    def describe(self) -> str:
        parts = [
            f"status {self.status}" if self.status else "",
            f"batch {self.batch}" if self.batch else "",
            f"account {self.account}" if self.account else "",
            f"text “{self.q}”" if self.q else "",
        ]
        return ", ".join(p for p in parts if p) or "every row"


class Console:
    """The pages, on one Operations, the users, the audit log and the login throttle."""

    def __init__(self, settings: Settings, engine: Engine, throttle: LoginThrottle) -> None:
        self.settings = settings
        self.ops = operations_for(settings, engine)
        self.users = Users(engine)
        self.audit = Audit(engine)
        self.account_states = AccountStates(engine)
        self.throttle = throttle
        pages = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
        pages.filters["when"] = _when
        pages.filters["iso"] = _iso
        self.templates = Jinja2Templates(env=pages)

    # -- helpers ---------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        status: int = 200,
        user: User | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        values = {"user": user, "csrf": csrf_token(request), "labels": LABELS, **context}
        response: Response = self.templates.TemplateResponse(
            request, name, values, status_code=status, headers=headers
        )
        return response

    def signed_in(self, request: Request) -> User | None:
        """The signed-in user, read anew: a removed user, a changed role, a sign-out
        elsewhere or a new password counts at once."""
        name = request.session.get("user")
        began = request.session.get("began")
        if not isinstance(name, str) or not isinstance(began, float | int):
            return None
        user = self.users.get(name)
        if user is None or not user.session_is_current(float(began)):
            return None
        return user

    async def form(self, request: Request) -> FormData:
        """The posted form, after its CSRF token was checked (403 otherwise)."""
        form = await request.form(max_files=0, max_fields=MAX_IDS + 20)
        check_csrf(request, form.get(CSRF_FIELD))
        return form

    async def acting_user(self, request: Request, action: str) -> tuple[User, FormData]:
        """The user of a state-changing POST: signed in, CSRF checked, allowed to act."""
        form = await self.form(request)
        user = self.signed_in(request)
        if user is None:
            raise HTTPException(403, "sign in first")
        if not user.can_act:
            self.audit.write(user.name, _client(request), action, 0, "refused: viewer")
            raise HTTPException(403, "viewers cannot change anything")
        return user, form

    # -- sign in and out ---------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if self.signed_in(request) is not None:
            return RedirectResponse("/", 303)
        return self.render(request, "login.html", {"message": None})

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        name = str(form.get("username", ""))[:200]
        password = str(form.get("password", ""))
        client = _client(request)
        keys = [f"user:{name.casefold()}", f"client:{client}"]
        if self.throttle.blocked(keys):
            self.audit.write(self._who(name), client, "login", 0, "refused: throttled")
            return self.render(request, "login.html", {"message": THROTTLED}, status=429)
        user = await asyncio.to_thread(self.users.verify, name, password)
        if user is None:
            self.throttle.failed(keys)
            self.audit.write(self._who(name), client, "login", 0, "failed")
            return self.render(request, "login.html", {"message": WRONG_LOGIN}, status=401)
        self.throttle.succeeded(keys[:1])
        request.session.clear()  # a new session on sign-in: no fixation
        request.session["user"] = user.name
        request.session["began"] = time.time()
        request.session[CSRF_FIELD] = secrets.token_urlsafe(32)
        self.audit.write(user.name, client, "login", 0, "ok")
        return RedirectResponse("/", 303)

    def _who(self, typed: str) -> str:
        """The audit log's name for a failed sign-in: the user's, or no name at all when
        there is no such user (what was typed may be a password in the wrong field)."""
        return typed if typed and self.users.get(typed) is not None else "(unknown user)"

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        user = self.signed_in(request)
        request.session.clear()
        if user is not None:
            self.users.end_sessions(user.name)  # a copy of the cookie is worth nothing now
            self.audit.write(user.name, _client(request), "logout", 0, "ok")
        return RedirectResponse("/login", 303)

    # -- the queue ---------------------------------------------------------------------------

    def queue_context(self, request: Request) -> dict[str, Any]:
        chosen = QueueFilter.from_values(request.query_params)
        before = _int(request.query_params.get("before"))
        if chosen.q:
            # Counting the rows that match a text reads every row (half a second to a second
            # at 1,000,000 rows: docs/benchmarks.md): a text search shows rows, not counts,
            # and walks the ids down to its page.
            counts: dict[str, int] = {}
            walk_ids = True
        else:
            counts = self.ops.counts_where(chosen.where(self.ops, with_status=False))
            # A status of many rows (sent, on a large outbox): walk the ids down rather than
            # sort them all; a status of few rows: take them by the status index, sort those.
            walk_ids = counts.get(chosen.status, 0) > SORTED_ROWS
        now, rows = self.ops.page(
            chosen.where(self.ops, walk_ids=walk_ids), before=before, limit=PAGE_ROWS + 1
        )
        more = len(rows) > PAGE_ROWS
        rows = rows[:PAGE_ROWS]
        soon = [] if before else self.ops.leaving_soon(chosen.where(self.ops), limit=SOON_ROWS)
        return {
            "filter": chosen,
            "now": now,
            "rows": rows,
            "soon": soon,
            "counts": counts,
            "statuses": [s.value for s in Status],
            "older": chosen.query(before=rows[-1][0].id) if more and rows else None,
            "newest": chosen.query() if before else None,
            "accounts": sorted(self.settings.accounts),
            "verbs": VERBS,
            "sources": {verb: TRANSITIONS[verb].sources for verb in VERBS},
        }

    async def queue(self, request: Request) -> Response:
        user = self.signed_in(request)
        if user is None:
            return RedirectResponse("/login", 303)
        return self.render(request, "queue.html", self.queue_context(request), user=user)

    async def queue_live(self, request: Request) -> Response:
        """The part of the queue page the browser fetches again every few seconds."""
        user = self.signed_in(request)
        if user is None:
            raise HTTPException(403, "sign in first")
        return self.render(request, "queue_live.html", self.queue_context(request), user=user)

    async def confirm(self, request: Request) -> Response:
        """How many rows an action on everything matching the filter would touch."""
        user = self.signed_in(request)
        if user is None:
            return RedirectResponse("/login", 303)
        if not user.can_act:
            raise HTTPException(403, "viewers cannot change anything")
        verb = request.query_params.get("verb", "")
        if verb not in VERBS:
            raise HTTPException(400, "unknown action")
        chosen = QueueFilter.from_values(request.query_params)
        ids = self.ops.ids_where(
            chosen.where(self.ops), TRANSITIONS[verb].sources, limit=MAX_IDS + 1
        )
        context = {
            "verb": verb,
            "filter": chosen,
            "ids": ids[:MAX_IDS],
            "capped": len(ids) > MAX_IDS,
            "max_ids": MAX_IDS,
            "sources": TRANSITIONS[verb].sources,
        }
        return self.render(request, "confirm.html", context, user=user)

    async def act(self, request: Request) -> Response:
        """Retract, hold, release or retry one row, the selection, or a confirmed filter."""
        user, form = await self.acting_user(request, "action")
        verb, ids = _action(form)
        if not ids:
            raise HTTPException(400, "choose at least one row")
        change = self.ops.transition(verb, ids=ids, reason=f"{verb} by {user.name} (console)")
        matching = str(form.get("filter", ""))
        if matching and verb in REPORTS_LEFT:
            # Everything matching a filter: the rows of it that had left before the
            # confirmation are too late as well, as `email-robot retract --batch` says.
            chosen = QueueFilter.from_values(dict(parse_qsl(matching)))
            move = TRANSITIONS[verb]
            left = self.ops.left_where(
                chosen.where(self.ops),
                (*move.sources, *move.already),
                besides=ids,
                limit=MAX_IDS,
            )
            change = Change(change.changed, change.unchanged, sorted([*change.too_late, *left]))
        self.audit.write(
            user.name, _client(request), verb, len(change.changed), _change_text(verb, change)
        )
        back = str(form.get("back", ""))
        context = {
            "verb": verb,
            "change": change,
            "past": PAST[verb],
            "back": back if LOCAL_PATH.fullmatch(back) else "/",
        }
        return self.render(request, "result.html", context, user=user)

    # -- one row -----------------------------------------------------------------------------

    async def row(self, request: Request) -> Response:
        user = self.signed_in(request)
        if user is None:
            return RedirectResponse("/login", 303)
        row_id = int(request.path_params["row_id"])
        row = self.ops.get(row_id)
        if row is None:
            raise HTTPException(404, f"no outbox row with id {row_id}")
        preview = None
        if row.body_html is not None:
            preview = (
                f'<!doctype html><meta http-equiv="Content-Security-Policy" '
                f'content="{PREVIEW_POLICY}"><base target="_blank">' + row.body_html
            )
        context = {
            "row": row,
            "events": self.ops.history(row_id),
            "preview": preview,
            "verbs": [v for v in VERBS if row.status in TRANSITIONS[v].sources],
            "account_sender": _account_sender(self.settings, row.account),
        }
        return self.render(
            request,
            "row.html",
            context,
            user=user,
            headers={"Content-Security-Policy": ROW_PAGE_POLICY},
        )

    # -- suppression list, accounts, audit ---------------------------------------------------

    async def suppression(self, request: Request) -> Response:
        user = self.signed_in(request)
        if user is None:
            return RedirectResponse("/login", 303)
        search = request.query_params.get("q", "").strip().lower()[:200]
        entries = [e for e in self.ops.suppressed() if search in e[0]][:500]
        context = {"entries": entries, "search": search, "message": None}
        return self.render(request, "suppression.html", context, user=user)

    async def suppression_change(self, request: Request) -> Response:
        adding = request.url.path.endswith("/add")
        action = "suppress" if adding else "unsuppress"
        user, form = await self.acting_user(request, action)
        address = parseaddr(str(form.get("address", "")))[1].strip().lower()
        if "@" not in address or address.startswith("@") or address.endswith("@"):
            raise HTTPException(400, "not an e-mail address")
        if adding:
            reason = str(form.get("reason", "")).strip()[:500] or f"added by {user.name}"
            done = self.ops.suppress(address, reason)
            message = f"{address}: {'added' if done else 'already suppressed'}"
        else:
            done = self.ops.unsuppress(address)
            message = f"{address}: {'removed' if done else 'not in the list'}"
        self.audit.write(user.name, _client(request), action, 0, message)
        entries = self.ops.suppressed()[:500]
        context = {"entries": entries, "search": "", "message": message}
        return self.render(request, "suppression.html", context, user=user)

    def accounts_context(self, message: str | None) -> dict[str, Any]:
        """The accounts of robot.ini, each with its state (account_state): no secret."""
        found = self.account_states.states()
        states: dict[str, AccountState | None] = {
            name: found.get(name) for name in self.settings.accounts
        }
        return {"accounts": self.settings.accounts, "states": states, "message": message}

    async def accounts(self, request: Request) -> Response:
        user = self.signed_in(request)
        if user is None:
            return RedirectResponse("/login", 303)
        return self.render(request, "accounts.html", self.accounts_context(None), user=user)

    async def account_pause(self, request: Request) -> Response:
        """Pause or resume an account, as `email-robot account pause|resume` does
        (operators and admins)."""
        pausing = request.url.path.endswith("/pause")
        action = "pause account" if pausing else "resume account"
        user, form = await self.acting_user(request, action)
        name = str(form.get("account", ""))
        if name not in self.settings.accounts:
            raise HTTPException(400, "no such account in robot.ini")
        if pausing:
            reason = str(form.get("reason", "")).strip()[:1000] or None
            until_text = str(form.get("until", "")).strip()
            try:
                until = pause_end(until_text, datetime.now(UTC)) if until_text else None
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
            self.account_states.pause(name, f"{user.name} (console)", reason, until)
            state = self.account_states.states().get(name)
            message = f"{name}: {state.describe() if state else 'sending'}"
        else:
            was = self.account_states.resume(name)
            message = f"{name}: " + (
                f"resumed (it was {was.describe()})" if was else "was not paused"
            )
        self.audit.write(user.name, _client(request), action, 0, message)
        return self.render(request, "accounts.html", self.accounts_context(message), user=user)

    async def account_test(self, request: Request) -> Response:
        user, form = await self.acting_user(request, "test message")
        account = self.settings.accounts.get(str(form.get("account", "")))
        to = parseaddr(str(form.get("to", "")))[1]
        if account is None or "@" not in to:
            raise HTTPException(400, "choose an account and give an address")
        attempt = await send_test(self.settings, account, to)
        if attempt.fault is not None:
            message = f"not sent: {attempt.fault}"
        elif attempt.accepted_reply is None:
            message = f"refused: {deciding_refusal(attempt.refusals).reason()}"
        else:
            message = f"accepted: {attempt.accepted_reply.line()}"
        message = f"{account.name} → {to}: {message}"
        self.audit.write(user.name, _client(request), "test message", 0, message)
        return self.render(request, "accounts.html", self.accounts_context(message), user=user)

    async def audit_log(self, request: Request) -> Response:
        user = self.signed_in(request)
        if user is None:
            return RedirectResponse("/login", 303)
        if not user.is_admin:
            raise HTTPException(403, "the audit log is for admins")
        before = _int(request.query_params.get("before"))
        entries = self.audit.entries(before=before, limit=101)
        older = entries[99].id if len(entries) > 100 else None
        context = {"entries": entries[:100], "older": older}
        return self.render(request, "audit.html", context, user=user)

    async def error(self, request: Request, exc: Exception) -> Response:
        """An error page (the security headers are added around it like everywhere)."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        user, csrf = None, ""
        try:
            user = self.signed_in(request)
            csrf = csrf_token(request)
        except Exception:  # no session, or the database is what failed
            pass
        values = {"user": user, "csrf": csrf, "labels": LABELS, "detail": detail, "status": status}
        response: Response = self.templates.TemplateResponse(
            request, "error.html", values, status_code=status
        )
        return response


def console_app(
    settings: Settings,
    engine: Engine,
    *,
    secret: str,
    throttle: LoginThrottle | None = None,
) -> ASGIApp:
    """The console as an ASGI application: the security headers wrap everything, error
    pages included."""
    console = Console(settings, engine, throttle or LoginThrottle())
    routes = [
        Route("/", console.queue),
        Route("/queue/live", console.queue_live),
        Route("/login", console.login_page, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/confirm", console.confirm),
        Route("/act", console.act, methods=["POST"]),
        Route("/row/{row_id:int}", console.row),
        Route("/suppression", console.suppression),
        Route("/suppression/add", console.suppression_change, methods=["POST"]),
        Route("/suppression/remove", console.suppression_change, methods=["POST"]),
        Route("/accounts", console.accounts),
        Route("/accounts/test", console.account_test, methods=["POST"]),
        Route("/accounts/pause", console.account_pause, methods=["POST"]),
        Route("/accounts/resume", console.account_pause, methods=["POST"]),
        Route("/audit", console.audit_log),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secret,
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_SECONDS,
            same_site="strict",
        ),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: console.error, Exception: console.error},
    )
    return SecurityHeaders(app)


def _action(form: FormData) -> tuple[str, list[int]]:
    """The verb and row ids of an action form: a row's own button (`row` = verb:id), or a
    selection button (`verb`) with the checked `ids` or a confirmation's `confirmed` ids."""
    one = str(form.get("row", ""))
    if one:
        verb, _, row_id = one.partition(":")
        ids = [_int(row_id)]
    else:
        verb = str(form.get("verb", ""))
        ids = [_int(str(i)) for i in form.getlist("ids")]
        ids += [_int(i) for i in str(form.get("confirmed", "")).split(",") if i.strip()]
    if verb not in VERBS:
        raise HTTPException(400, "unknown action")
    if any(i is None for i in ids) or len(ids) > MAX_IDS:
        raise HTTPException(400, f"give up to {MAX_IDS} row ids")
    return verb, sorted({i for i in ids if i is not None})


def _change_text(verb: str, change: Change) -> str:
    """The audit log's summary of an action: which rows changed, and which were too late."""
    parts = [f"{PAST[verb]} {len(change.changed)}: {' '.join(map(str, change.changed)) or '-'}"]
    if change.unchanged:
        parts.append(
            f"unchanged {len(change.unchanged)}: "
            + ", ".join(f"{i} ({s})" for i, s in change.unchanged)
        )
    if change.too_late:
        parts.append(
            f"too late {len(change.too_late)}: "
            + ", ".join(f"{i} ({s})" for i, s in change.too_late)
        )
    return "; ".join(parts)


def _account_sender(settings: Settings, account: str | None) -> str:
    """The From of a row without its own sender: its account's."""
    found = settings.accounts.get(account or "default")
    if found is None:
        return f"(unknown account {account})"
    sender = found.sender
    return f"{sender.name} <{sender.address}>" if sender.name else sender.address


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _int(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 18:
        return None
    return int(value)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""
