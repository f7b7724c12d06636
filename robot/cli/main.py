"""The `email-robot` command line: parses arguments and wires the other modules together.

Exit codes: 0 done; 1 not done or done in part; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import mimetypes
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from robot import __version__
from robot.cli.output import (
    account_state_text,
    accounts_json,
    accounts_state_table,
    accounts_table,
    change_text,
    rows_json,
    rows_table,
    show_json,
    show_text,
    status_json,
    status_text,
    suppression_table,
)
from robot.cli.sink import serve_sink
from robot.config import Settings, find_config, load_settings, sample_ini
from robot.daemon.database import when_reachable
from robot.daemon.robot import Robot
from robot.daemon.supervisor import (
    child_position,
    child_settings,
    stop_with_supervisor,
    supervise,
    supervisor_pid,
)
from robot.errors import ConfigError, RobotError
from robot.logs import configure_logging, drop_what_a_closed_pipe_gets, first_line, get_logger
from robot.outbox.account_states import AccountState, AccountStates, pause_end
from robot.outbox.engine import (
    make_engine,
    missing_sqlite_file,
    schema_is_current,
    schema_revision,
    upgrade,
)
from robot.outbox.grants import apply_grants, grant_statements
from robot.outbox.operations import Operations, operations_for
from robot.outbox.rows import Attachment
from robot.outbox.schema import Status
from robot.outcome.judge import deciding_refusal
from robot.send.probe import check_account, send_test
from robot.web.server import serve as serve_console
from robot.web.users import ROLES, BadUser, Users

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell shows for a tool killed by SIGPIPE


class UsageError(RobotError):
    """The command line asks for something impossible."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print one line on stderr on failure, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a row's odd bytes must not crash a listing
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    wiring = Wiring(getattr(args, "config", None))
    try:
        code: int = args.handler(args, wiring)
        sys.stdout.flush()  # inside the try: a reader gone is a BrokenPipeError here
        return code
    except BrokenPipeError:
        # The reader went away (`email-robot list | head`): stop quietly, as Unix tools do
        # (SIGPIPE's exit status), and keep the interpreter from failing to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    except UsageError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    except RobotError as exc:
        _complain(str(exc))
        return EXIT_PARTIAL
    except SQLAlchemyError as exc:
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["error"])[0]
        _complain(f"database: {first}")
        return EXIT_PARTIAL
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("ROBOT_DEBUG"):
            raise
        where = _where(exc)
        _complain(
            f"internal error: {type(exc).__name__}: {exc} ({where}; "
            "ROBOT_DEBUG=1 shows the traceback)"
        )
        return EXIT_PARTIAL
    finally:
        wiring.close()


def build_parser() -> argparse.ArgumentParser:
    """The parser; `-c` is accepted before or after the verb."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, metavar="PATH", help="robot.ini to use"
    )
    parser = argparse.ArgumentParser(
        prog="email-robot",
        parents=[config],
        description="Sends the rows of an outbox table over SMTP.",
    )
    parser.add_argument("--version", action="version", version=f"email-robot {__version__}")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")

    def verb(
        name: str, handler: Callable[[argparse.Namespace, Wiring], int], text: str
    ) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, parents=[config], help=text, description=text)
        sub.set_defaults(handler=handler, command=name)
        return sub

    run = verb("run", cmd_run, "run the daemon (systemd Type=notify)")
    run.add_argument("--drain", action="store_true", help="send what is due, then exit")

    db = verb("db", lambda a, w: _usage("db needs a subcommand: upgrade"), "database schema")
    db_verbs = db.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    db_up = db_verbs.add_parser(
        "upgrade", parents=[config], help="create or upgrade the schema (Alembic)"
    )
    db_up.set_defaults(handler=cmd_db_upgrade)
    db_grant = db_verbs.add_parser(
        "grant",
        parents=[config],
        help="the least rights of a host application's role (PostgreSQL, MariaDB/MySQL)",
    )
    db_grant.add_argument(
        "role", help="an existing PostgreSQL role, or MariaDB/MySQL account NAME or NAME@HOST"
    )
    db_grant.add_argument(
        "--read-only", action="store_true", help="a reporting role: SELECT only, no INSERT"
    )
    db_grant.add_argument(
        "--print", action="store_true", help="print the SQL instead of running it"
    )
    db_grant.set_defaults(handler=cmd_db_grant)

    enqueue = verb("enqueue", cmd_enqueue, "add a message to the outbox")
    enqueue.add_argument("--to", required=True, help="recipient: addr or 'Name <addr>'")
    enqueue.add_argument("--subject", default="")
    body = enqueue.add_mutually_exclusive_group(required=True)
    body.add_argument("--text", help="plain-text body")
    body.add_argument("--text-file", type=Path, help="file with the plain-text body")
    body.add_argument("--html-file", type=Path, help="file with the HTML body")
    enqueue.add_argument("--also-html-file", type=Path, help="HTML alternative to --text")
    enqueue.add_argument("--cc")
    enqueue.add_argument("--bcc")
    enqueue.add_argument("--account")
    enqueue.add_argument("--batch")
    enqueue.add_argument("--priority", type=int, default=0)
    enqueue.add_argument("--transactional", action="store_true")
    enqueue.add_argument("--context", help="JSON object: subject and bodies are templates")
    enqueue.add_argument("--attach", type=Path, action="append", default=[], metavar="FILE")

    listing = verb("list", cmd_list, 'rows with their "due in" countdown, newest first')
    listing.add_argument("--status", choices=[s.value for s in Status], help="only this status")
    listing.add_argument("--batch", help="only this batch")
    listing.add_argument(
        "--limit", type=_positive, default=50, help="at most this many rows (50); newest first"
    )
    listing.add_argument("--json", action="store_true")

    show = verb("show", cmd_show, "a row and its history")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")

    for name, text in (
        ("retract", "the oops button: retract pending, deferred or held rows"),
        ("hold", "hold pending or deferred rows (a draft; `release` lets them go)"),
        ("release", "release held rows"),
    ):
        change = verb(name, cmd_change, text + "; says which were too late")
        change.add_argument("ids", type=int, nargs="*", metavar="ID")
        change.add_argument("--batch", help="every row of this batch")
    retry = verb("retry", cmd_change, "send failed, bounced or deferred rows again, now")
    retry.add_argument("ids", type=int, nargs="*", metavar="ID")
    retry.add_argument("--failed", action="store_true", help="every failed row")
    retry.add_argument("--batch", help="with --failed: only this batch's")

    status = verb("status", cmd_status, "counts by status, the due backlog and its ETA")
    status.add_argument("--batch")
    status.add_argument("--json", action="store_true")

    suppress = verb(
        "suppress", lambda a, w: _usage("suppress needs add, remove or list"), "suppression list"
    )
    suppress_verbs = suppress.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    add = suppress_verbs.add_parser("add", parents=[config], help="never mail these addresses")
    add.add_argument("addresses", nargs="+", metavar="ADDRESS")
    add.add_argument("--reason", default="added by the operator")
    add.set_defaults(handler=cmd_suppress_add)
    remove = suppress_verbs.add_parser("remove", parents=[config], help="mail them again")
    remove.add_argument("addresses", nargs="+", metavar="ADDRESS")
    remove.set_defaults(handler=cmd_suppress_remove)
    show_list = suppress_verbs.add_parser("list", parents=[config], help="the list")
    show_list.add_argument("--json", action="store_true")
    show_list.set_defaults(handler=cmd_suppress_list)

    test = verb("test", cmd_test, "send one test message now and print the server's reply")
    test.add_argument("--to", required=True)
    test.add_argument("--account", default="default")

    check = verb("check", cmd_check, "validate config, connect, EHLO, AUTH; send nothing")
    check.add_argument("--account", help="check only this account")

    verb("accounts", cmd_accounts, "configured sender accounts (no secrets)")

    account = verb(
        "account",
        lambda a, w: _usage("account needs list, pause or resume"),
        "an account's state: sending or paused; pause and resume it",
    )
    account_verbs = account.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    account_list = account_verbs.add_parser(
        "list", parents=[config], help="each account and its state (sending, or paused why)"
    )
    account_list.add_argument("--json", action="store_true")
    account_list.set_defaults(handler=cmd_account_list)
    pause = account_verbs.add_parser(
        "pause",
        parents=[config],
        help="robots send none of its rows until it is resumed (or until --until)",
    )
    pause.add_argument("name", metavar="NAME")
    pause.add_argument("--reason", help="why, shown in status and on the console")
    pause.add_argument(
        "--until",
        type=_until,
        metavar="WHEN",
        help="UTC: 'HH:MM', 'YYYY-MM-DD HH:MM', or a duration '30m', '2h', '1d'",
    )
    pause.set_defaults(handler=cmd_account_pause)
    resume = account_verbs.add_parser(
        "resume", parents=[config], help="send its rows again (also ends a fault's pause: try now)"
    )
    resume.add_argument("name", metavar="NAME")
    resume.set_defaults(handler=cmd_account_resume)

    config_verb = verb(
        "config", lambda a, w: _usage("config needs a subcommand: sample"), "robot.ini"
    )
    config_verbs = config_verb.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    sample = config_verbs.add_parser(
        "sample", help="print the commented sample robot.ini (to start one from)"
    )
    sample.set_defaults(handler=cmd_config_sample)

    web = verb("web", cmd_web, "the operators' console: a web page beside `run`")
    web.add_argument("--listen", metavar="HOST:PORT", help="default: [web] listen (127.0.0.1:8025)")

    user = verb(
        "user", lambda a, w: _usage("user needs add, list, remove or passwd"), "console users"
    )
    user_verbs = user.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    user_add = user_verbs.add_parser(
        "add", parents=[config], help="add a console user (password from stdin or a prompt)"
    )
    user_add.add_argument("name")
    user_add.add_argument("--role", required=True, choices=ROLES)
    user_add.set_defaults(handler=cmd_user_add)
    user_list = user_verbs.add_parser("list", parents=[config], help="the console's users")
    user_list.set_defaults(handler=cmd_user_list)
    user_remove = user_verbs.add_parser("remove", parents=[config], help="remove a console user")
    user_remove.add_argument("name")
    user_remove.set_defaults(handler=cmd_user_remove)
    user_passwd = user_verbs.add_parser(
        "passwd", parents=[config], help="a new password (from stdin or a prompt)"
    )
    user_passwd.add_argument("name")
    user_passwd.set_defaults(handler=cmd_user_passwd)

    sink = verb("sink", cmd_sink, "a local capture SMTP server for trying the robot out")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=2525)
    sink.add_argument("--maildir", type=Path, help="also store each message in this Maildir")
    return parser


# -- commands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, wiring: Wiring) -> int:
    position = child_position()
    supervisor = supervisor_pid() if position is not None else None
    if supervisor is not None and not stop_with_supervisor(supervisor):
        return EXIT_OK  # the supervisor died while this process started: nothing to do
    settings = wiring.settings()
    configure_logging(settings.log.format, settings.log.level)
    engine = _database_when_reachable(wiring)
    if engine is None:
        return EXIT_OK  # SIGTERM while waiting for the database
    if position is None and settings.robot.processes > 1:
        engine.dispose()
        return supervise(settings, settings.path, args.drain)
    path = Path(settings.path)

    def load() -> Settings:
        fresh = load_settings(path)
        return child_settings(fresh, *position) if position else fresh

    if position is not None:
        settings = child_settings(settings, *position)
    robot = Robot(settings, engine, drain=args.drain, reload=load, supervisor=supervisor)
    return _event_loop_runner(settings.robot.uvloop)(robot.run())


def _database_when_reachable(wiring: Wiring) -> Engine | None:
    """The daemon's engine on a current schema, once the database answers (it may be down
    when the robot starts, as it may be later); None when stopped while waiting. Raises
    ConfigError when the schema is missing or old, or the database says its URL is wrong."""
    log = get_logger("robot.daemon")
    try:
        return when_reachable(
            lambda: wiring.engine(migrate_sqlite=True, lenient_text=False, create=True), log
        )
    except OperationalError as exc:
        settings = wiring.settings()
        raise ConfigError(
            f"{settings.path}: [database] url: {first_line(exc.orig or exc)}",
            key="url",
            path=settings.path,
        ) from None


def _event_loop_runner(use_uvloop: bool) -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop.run when asked for and installed (a faster event loop), else asyncio.run."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run
    return asyncio.run


def cmd_db_upgrade(args: argparse.Namespace, wiring: Wiring) -> int:
    engine = wiring.engine(current=False, create=True)
    where = engine.url.render_as_string(hide_password=True)
    before = schema_revision(engine)
    upgrade(engine)
    after = schema_revision(engine)
    if before is None:
        print(f"created the schema ({after}) in {where}")
    elif before != after:
        print(f"upgraded the schema from {before} to {after} in {where}")
    else:
        print(f"the schema is up to date ({after}) in {where}")
    return EXIT_OK


def cmd_db_grant(args: argparse.Namespace, wiring: Wiring) -> int:
    """GRANT a host application's role (or a read-only one) what it needs, and no more."""
    engine = wiring.engine()
    if engine.dialect.name == "sqlite":
        raise UsageError(f"db grant: {engine.dialect.name} has no roles to grant rights to")
    statements = grant_statements(engine, args.role, writer=not args.read_only)
    if args.print:
        print(";\n".join(statements) + ";")
        return EXIT_OK
    apply_grants(engine, statements)
    kind = "read-only" if args.read_only else "writer"
    print(f"granted {args.role} the {kind} rights on the outbox tables")
    return EXIT_OK


def cmd_enqueue(args: argparse.Namespace, wiring: Wiring) -> int:
    outbox = wiring.outbox()
    fields: dict[str, object] = {
        "recipient": args.to,
        "subject": args.subject,
        "cc": args.cc,
        "bcc": args.bcc,
        "account": args.account,
        "batch": args.batch,
        "priority": args.priority,
        "transactional": args.transactional,
        "context": args.context,
        "body_text": args.text if args.text is not None else _read(args.text_file),
        "body_html": _read(args.html_file) or _read(args.also_html_file),
    }
    files = []
    for path in args.attach:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            files.append(Attachment(path.name, kind, path.read_bytes()))
        except OSError as exc:
            raise UsageError(f"--attach {path}: {exc.strerror}") from None
    row_id = outbox.enqueue({k: v for k, v in fields.items() if v is not None}, files)
    print(row_id)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, wiring: Wiring) -> int:

    outbox = wiring.outbox()
    now, rows = outbox.rows(status=args.status, batch=args.batch, limit=args.limit + 1)
    shown = rows[: args.limit]
    print(rows_json(now, shown) if args.json else rows_table(now, shown))
    if len(rows) > args.limit:  # on stderr: the JSON on stdout stays one array
        print(f"(the newest {args.limit} rows; --limit N shows more)", file=sys.stderr)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, wiring: Wiring) -> int:

    outbox = wiring.outbox()
    row = outbox.get(args.id)
    if row is None:
        print(f"email-robot: no outbox row with id {args.id}", file=sys.stderr)
        return EXIT_PARTIAL
    events = outbox.history(args.id)
    print(show_json(row, events) if args.json else show_text(row, events))
    return EXIT_OK


def cmd_change(args: argparse.Namespace, wiring: Wiring) -> int:
    """retract, hold, release, retry: one conditional UPDATE; exit 1 if any was too late."""

    verb = args.command
    everything_failed = getattr(args, "failed", False)
    if args.batch is not None and (args.ids or (verb == "retry" and not everything_failed)):
        raise UsageError(
            f"{verb}: give IDs or --batch, not both"
            if args.ids
            else "retry --batch needs --failed (retry --failed --batch B)"
        )
    if not args.ids and args.batch is None and not everything_failed:
        raise UsageError(
            f"{verb}: give row IDs or --batch B" + (" or --failed" if verb == "retry" else "")
        )
    if everything_failed and args.ids:
        raise UsageError("retry: give IDs or --failed, not both")
    change = wiring.outbox().transition(
        verb,
        ids=args.ids,
        batch=args.batch,
        statuses=("failed",) if everything_failed else (),
        reason=f"{verb} by {_operator()}",
    )
    print(change_text(verb, change))
    return EXIT_PARTIAL if change.too_late else EXIT_OK


def cmd_status(args: argparse.Namespace, wiring: Wiring) -> int:

    robot = wiring.settings().robot
    status = wiring.outbox().status(batch=args.batch)
    accounts = _account_states(wiring)
    if args.json:
        print(status_json(status, robot.rate, robot.redirect_to, accounts))
    else:
        print(status_text(status, robot.rate, args.batch, robot.redirect_to, accounts))
    return EXIT_OK


def cmd_suppress_add(args: argparse.Namespace, wiring: Wiring) -> int:
    outbox = wiring.outbox()
    for address in _addresses(args.addresses):
        added = outbox.suppress(address, args.reason)
        print(f"{address}: {'added' if added else 'already suppressed'}")
    return EXIT_OK


def cmd_suppress_remove(args: argparse.Namespace, wiring: Wiring) -> int:
    outbox = wiring.outbox()
    missing = False
    for address in _addresses(args.addresses):
        removed = outbox.unsuppress(address)
        missing |= not removed
        print(f"{address}: {'removed' if removed else 'not in the list'}")
    return EXIT_PARTIAL if missing else EXIT_OK


def cmd_suppress_list(args: argparse.Namespace, wiring: Wiring) -> int:

    entries = wiring.outbox().suppressed()
    if args.json:
        print(
            json.dumps(
                [
                    {"address": a, "reason": r, "since": t.isoformat() if t else None}
                    for a, r, t in entries
                ],
                indent=2,
            )
        )
    else:
        print(suppression_table(entries))
    return EXIT_OK


def cmd_test(args: argparse.Namespace, wiring: Wiring) -> int:

    settings = wiring.settings()
    account = settings.accounts.get(args.account)
    if account is None:
        raise UsageError(
            f"unknown account {args.account!r} (known: {', '.join(settings.accounts)})"
        )
    configure_logging(settings.log.format, "warning")
    attempt = asyncio.run(send_test(settings, account, args.to))
    if attempt.fault is not None:
        print(f"email-robot: {attempt.fault}", file=sys.stderr)
        return EXIT_PARTIAL
    if attempt.accepted_reply is None:
        print(
            f"email-robot: refused: {deciding_refusal(attempt.refusals).reason()}", file=sys.stderr
        )
        return EXIT_PARTIAL
    where = f" ({attempt.hosts[0]})" if account.smtp.direct and attempt.hosts else ""
    print(f"{attempt.accepted_reply.line()}{where}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, wiring: Wiring) -> int:

    settings = wiring.settings()
    configure_logging(settings.log.format, "warning")
    engine = wiring.engine(current=False)
    with engine.connect():
        pass
    print(f"database: reachable ({engine.url.render_as_string(hide_password=True)})")
    names = [args.account] if args.account else list(settings.accounts)
    failed = False
    for name in names:
        account = settings.accounts.get(name)
        if account is None:
            raise UsageError(f"unknown account {name!r}")
        if account.needs_app_password:
            print(
                f"account {name}: warning: {account.smtp.preset} needs an app password "
                "(the account's normal password is refused)",
                file=sys.stderr,
            )
        if account.smtp.direct:
            print(f"account {name}: direct delivery, no relay to check")
            continue
        try:
            greeting = asyncio.run(check_account(account))
        except RobotError as exc:
            print(f"email-robot: account {name}: {exc}", file=sys.stderr)
            failed = True
            continue
        login = f", logged in as {account.smtp.username}" if account.smtp.username else ""
        print(f"account {name}: {account.smtp.host}:{account.port} ok ({greeting}{login})")
    return EXIT_PARTIAL if failed else EXIT_OK


def cmd_accounts(args: argparse.Namespace, wiring: Wiring) -> int:

    print(accounts_table(wiring.settings().accounts))
    return EXIT_OK


def cmd_account_list(args: argparse.Namespace, wiring: Wiring) -> int:
    accounts = _account_states(wiring)
    print(
        json.dumps(accounts_json(accounts), indent=2)
        if args.json
        else accounts_state_table(accounts)
    )
    return EXIT_OK


def cmd_account_pause(args: argparse.Namespace, wiring: Wiring) -> int:
    """An operator's pause: robots claim none of the account's rows, and give back the
    ones they hold, until it is resumed (or until --until)."""
    name = _known_account(wiring, args.name)
    reason = args.reason.strip()[:1000] if args.reason and args.reason.strip() else None
    wiring.account_states().pause(name, _operator(), reason, args.until)
    print(f"account {name}: {account_state_text(_account_states(wiring)[name])}")
    return EXIT_OK


def cmd_account_resume(args: argparse.Namespace, wiring: Wiring) -> int:
    name = _known_account(wiring, args.name)
    was = wiring.account_states().resume(name)
    if was is None:
        print(f"account {name}: was not paused")
    else:
        print(f"account {name}: resumed (it was {account_state_text(was)})")
    return EXIT_OK


def _known_account(wiring: Wiring, name: str) -> str:
    """`name` if robot.ini has that account; a usage error (exit 2) otherwise."""
    accounts = wiring.settings().accounts
    if name not in accounts:
        raise UsageError(f"unknown account {name!r} (known: {', '.join(accounts)})")
    return name


def _account_states(wiring: Wiring) -> dict[str, AccountState | None]:
    """robot.ini's accounts, each with its row of account_state (None: it sends)."""
    found = wiring.account_states().states()
    return {name: found.get(name) for name in wiring.settings().accounts}


def _until(text: str) -> datetime:
    """argparse type: when a pause ends (see pause_end)."""
    try:
        return pause_end(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_config_sample(args: argparse.Namespace, wiring: Wiring) -> int:
    print(sample_ini(), end="")
    return EXIT_OK


def cmd_sink(args: argparse.Namespace, wiring: Wiring) -> int:

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_sink(args.host, args.port, args.maildir, sys.stdout, stop)

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise RobotError(
            f"sink: cannot listen on {args.host}:{args.port}: {exc.strerror}"
        ) from None
    return EXIT_OK


def cmd_web(args: argparse.Namespace, wiring: Wiring) -> int:
    """The console: a process of its own on the same robot.ini and database."""
    settings = wiring.settings()
    configure_logging(settings.log.format, settings.log.level)
    engine = wiring.engine(migrate_sqlite=True)
    return serve_console(settings, engine, args.listen or settings.web.listen)


def cmd_user_add(args: argparse.Namespace, wiring: Wiring) -> int:
    users = Users(wiring.engine(migrate_sqlite=True))
    try:
        added = users.add(args.name, args.role, _new_password())
    except BadUser as exc:
        raise UsageError(str(exc)) from None
    if not added:
        raise UsageError(f"user {args.name!r} exists already (user passwd changes a password)")
    print(f"user {args.name} added ({args.role})")
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace, wiring: Wiring) -> int:
    for user in Users(wiring.engine(migrate_sqlite=True)).listing():
        since = user.created_at.strftime("%Y-%m-%d %H:%M UTC") if user.created_at else ""
        print(f"{user.name}\t{user.role}\t{since}")
    return EXIT_OK


def cmd_user_remove(args: argparse.Namespace, wiring: Wiring) -> int:
    if not Users(wiring.engine(migrate_sqlite=True)).remove(args.name):
        print(f"email-robot: no user {args.name!r}", file=sys.stderr)
        return EXIT_PARTIAL
    print(f"user {args.name} removed")
    return EXIT_OK


def cmd_user_passwd(args: argparse.Namespace, wiring: Wiring) -> int:
    users = Users(wiring.engine(migrate_sqlite=True))
    if users.get(args.name) is None:
        print(f"email-robot: no user {args.name!r}", file=sys.stderr)
        return EXIT_PARTIAL
    try:
        users.set_password(args.name, _new_password())
    except BadUser as exc:
        raise UsageError(str(exc)) from None
    print(f"password of {args.name} changed")
    return EXIT_OK


def _new_password() -> str:
    """A new password: typed twice at a prompt, or the first line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


# -- wiring -------------------------------------------------------------------------------


class Wiring:
    """Loads the settings and opens the engine once per command, and closes it after."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None
        self._engine: Engine | None = None

    def settings(self) -> Settings:
        """robot.ini, found and parsed. Raises ConfigError."""
        if self._settings is None:
            self._settings = load_settings(find_config(self.config_path))
        return self._settings

    def engine(
        self,
        *,
        migrate_sqlite: bool = False,
        current: bool = True,
        lenient_text: bool = True,
        create: bool = False,
    ) -> Engine:
        """The engine; with `current`, on the newest schema (SQLite may be migrated in place,
        PostgreSQL must have been: `email-robot db upgrade`). The daemon reads text with the
        fast decoder (`lenient_text` off); the operator's commands show odd bytes escaped.
        Only with `create` may a missing SQLite file be made (`db upgrade`, `run`): any
        other command on a missing file is a configuration error, never an empty queue."""
        if self._engine is None:
            settings = self.settings()
            missing = missing_sqlite_file(settings.database.url)
            if missing is not None and not (create and missing.parent.is_dir()):
                raise ConfigError(
                    f"{settings.path}: [database] url: the SQLite database {missing} "
                    + (
                        "does not exist: run `email-robot db upgrade` to create it"
                        if missing.parent.is_dir()
                        else f"cannot be created: the folder {missing.parent} does not exist"
                    ),
                    key="url",
                    path=settings.path,
                )
            engine = make_engine(settings.database.url, lenient_text=lenient_text)
            try:
                if engine.dialect.name == "sqlite" and migrate_sqlite:
                    upgrade(engine)
                elif current and not schema_is_current(engine):
                    raise ConfigError(
                        "the database schema is missing or old: run `email-robot db upgrade`",
                        key="database.url",
                        path=settings.path,
                    )
            except BaseException:  # unchecked: the next call opens and checks it anew
                engine.dispose()
                raise
            self._engine = engine
        return self._engine

    def outbox(self) -> Operations:
        """The host's and operator's side of the outbox, on a current schema."""
        return operations_for(self.settings(), self.engine(migrate_sqlite=True))

    def account_states(self) -> AccountStates:
        """The accounts' state (account_state), on a current schema."""
        return AccountStates(self.engine(migrate_sqlite=True))

    def close(self) -> None:
        """Close every database connection the command opened."""
        if self._engine is not None:
            self._engine.dispose()


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None


def _addresses(values: Sequence[str]) -> list[str]:
    """Lower-cased bare addresses; a value that is not an address is a usage error."""
    found = []
    for value in values:
        address = parseaddr(value)[1]
        if not address or "@" not in address or address.startswith("@") or address.endswith("@"):
            raise UsageError(f"not an e-mail address: {value!r}")
        found.append(address.lower())
    return found


def _operator() -> str:
    """Who ran the command, for the history: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "an operator"


def _complain(message: str) -> None:
    """One line on stderr; lost, not raised, when nobody reads stderr any more."""
    try:
        print(f"email-robot: {message}", file=sys.stderr, flush=True)
    except OSError:
        drop_what_a_closed_pipe_gets(sys.stderr)  # or the exit code becomes 120


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _usage(message: str) -> int:
    raise UsageError(message)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown place"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"
