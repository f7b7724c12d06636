"""The operators' console (robot/web) through Starlette's TestClient, on real SQLite and
PostgreSQL databases: sign-in, sessions, CSRF, roles, the oops buttons, the audit log."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from httpx2 import Response
from sqlalchemy import Engine, event, select
from starlette.testclient import TestClient

from robot.config import Settings, WebSettings, load_settings
from robot.outbox.account_states import AccountStates
from robot.outbox.engine import make_engine, upgrade
from robot.outbox.operations import operations_for
from robot.outbox.rows import Attachment
from robot.outbox.schema import web_audit, web_user
from robot.web.app import console_app
from robot.web.secret import session_secret
from robot.web.throttle import LoginThrottle
from robot.web.users import Users
from tests.conftest import WriteIni
from tests.integration.host import host_sql, series_sql
from tests.support.smtpd import TestSMTPServer

PASSWORDS = {"viv": "viewer-pass-1", "olga": "operator-pass-1", "ada": "admin-pass-12"}
ROLES = {"viv": "viewer", "olga": "operator", "ada": "admin"}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SECRET = "s" * 48


class Console:
    """A console app on one database, its users made, and a way to make browsers for it."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        engine: Engine,
        make: Callable[[str, LoginThrottle | None], TestClient],
    ) -> None:
        self.url = url
        self.settings = settings
        self.engine = engine
        self.ops = operations_for(settings, engine)
        self.make = make

    def client(
        self, address: str = "testclient", throttle: LoginThrottle | None = None
    ) -> TestClient:
        return self.make(address, throttle)

    def signed_in(self, name: str) -> TestClient:
        client = self.client()
        response = login(client, name, PASSWORDS[name])
        assert response.status_code == 200 and response.url.path == "/", response.text
        return client

    def audit(self) -> list[tuple[str, str, int, str]]:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(
                    web_audit.c.who, web_audit.c.action, web_audit.c.rows, web_audit.c.result
                ).order_by(web_audit.c.id)
            ).all()
        return [(r.who, r.action, r.rows, r.result) for r in found]

    def status(self, row_id: int) -> str:
        row = self.ops.get(row_id)
        assert row is not None
        return row.status


@pytest.fixture
def console(db_url: str, write_ini: WriteIni) -> Iterator[Console]:
    settings = load_settings(write_ini(db_url, extra="[robot]\ngrace_minutes = 5\n"))
    engine = make_engine(db_url, lenient_text=True)
    users = Users(engine)
    for name, role in ROLES.items():
        assert users.add(name, role, PASSWORDS[name])
    shared = LoginThrottle()
    clients: list[TestClient] = []

    def make(address: str, throttle: LoginThrottle | None) -> TestClient:
        app = console_app(settings, engine, secret=SECRET, throttle=throttle or shared)
        client = TestClient(app, client=(address, 40000), follow_redirects=True)
        clients.append(client)
        return client

    yield Console(db_url, settings, engine, make)
    for client in clients:
        client.close()
    engine.dispose()


def csrf_of(client: TestClient, path: str = "/") -> str:
    found = CSRF.search(client.get(path).text)
    assert found, f"no CSRF token on {path}"
    return found[1]


def login(client: TestClient, name: str, password: str) -> Response:
    token = csrf_of(client, "/login")
    return client.post("/login", data={"username": name, "password": password, "csrf": token})


def pending(console: Console, n: int = 1, **fields: object) -> list[int]:
    return [
        console.ops.enqueue(
            {"recipient": f"p{i}@example.org", "subject": f"s{i}", "body_text": "x", **fields}
        )
        for i in range(n)
    ]


def set_status(console: Console, row_id: int, status: str) -> None:
    host_sql(console.url, "UPDATE outbox SET status = ? WHERE id = ?", (status, row_id))


# -- users and sign-in ---------------------------------------------------------------------


def test_passwords_are_stored_as_argon2id_hashes(console: Console) -> None:
    with console.engine.connect() as conn:
        hashes = dict(conn.execute(select(web_user.c.name, web_user.c.password_hash)).all())
    assert all(h.startswith("$argon2id$") for h in hashes.values()), hashes
    assert PASSWORDS["olga"] not in hashes["olga"]


def test_sign_in_and_out(console: Console) -> None:
    client = console.client()
    assert client.get("/").url.path == "/login"  # not signed in: the sign-in page
    response = login(client, "olga", PASSWORDS["olga"])
    assert response.url.path == "/"
    page = client.get("/")
    assert page.status_code == 200 and "olga (operator)" in page.text
    cookie = page.request.headers.get("cookie", "")
    assert "robot_console=" in cookie
    out = client.post("/logout", data={"csrf": csrf_of(client)})
    assert out.url.path == "/login"
    assert client.get("/").url.path == "/login"
    assert [a[:2] for a in console.audit()] == [("olga", "login"), ("olga", "logout")]


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer_and_take_as_long(
    console: Console,
) -> None:
    client = console.client(throttle=LoginThrottle(max_failures=1000))
    answers = {}
    times: dict[str, list[float]] = {"wrong": [], "unknown": []}
    for _ in range(4):
        for kind, name in (("wrong", "olga"), ("unknown", "nobody-here")):
            token = csrf_of(client, "/login")
            started = time.perf_counter()
            response = client.post(
                "/login", data={"username": name, "password": "not-it-at-all", "csrf": token}
            )
            times[kind].append(time.perf_counter() - started)
            answers[kind] = (response.status_code, CSRF.sub("", response.text))
    assert answers["wrong"] == answers["unknown"]
    assert answers["wrong"][0] == 401 and "Wrong user name or password." in answers["wrong"][1]
    # An unknown name costs a password hash check too (argon2: tens of milliseconds), not
    # just a look-up: its fastest answer is of the same order as a wrong password's.
    assert min(times["unknown"]) > 0.3 * min(times["wrong"]), times


def test_sign_in_is_throttled_per_user_name_and_per_client_address(console: Console) -> None:
    throttle = LoginThrottle(max_failures=3)
    first = console.client("10.0.0.1", throttle)
    for _ in range(3):
        assert login(first, "olga", "guess-guess").status_code == 401
    # The name is blocked, from any address, even with the right password.
    blocked = login(console.client("10.0.0.2", throttle), "olga", PASSWORDS["olga"])
    assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.text
    # Another name from another address still signs in.
    other = login(console.client("10.0.0.3", throttle), "ada", PASSWORDS["ada"])
    assert other.status_code == 200
    # Guessing many names from one address blocks the address.
    guesser = console.client("10.0.0.4", throttle)
    for name in ("a1", "a2", "a3"):
        login(guesser, name, "guess-guess")
    assert login(guesser, "ada", PASSWORDS["ada"]).status_code == 429
    assert ("olga", "login", 0, "refused: throttled") in console.audit()


def test_a_removed_user_is_signed_out_at_once(console: Console) -> None:
    client = console.signed_in("olga")
    assert Users(console.engine).remove("olga")
    assert client.get("/").url.path == "/login"


# -- security --------------------------------------------------------------------------------


def test_every_response_carries_the_security_headers(console: Console) -> None:
    client = console.signed_in("olga")
    row_id = pending(console)[0]
    for path in ("/login", "/", f"/row/{row_id}", "/static/console.js", "/no-such-page", "/audit"):
        response = client.get(path)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "same-origin", path
    assert client.get("/no-such-page").status_code == 404
    assert client.get("/audit").status_code == 403  # admins only


def test_the_session_cookie_is_signed_httponly_and_samesite_strict(console: Console) -> None:
    client = console.client()
    token = csrf_of(client, "/login")
    response = client.post(
        "/login",
        data={"username": "olga", "password": PASSWORDS["olga"], "csrf": token},
        follow_redirects=False,
    )
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert (
        cookie.startswith("robot_console=") and "httponly" in cookie and "samesite=strict" in cookie
    )
    assert "secure" not in cookie  # plain http here
    # A cookie signed with another secret is no session at all.
    value = response.cookies["robot_console"]
    forged = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
    fresh = console.client()
    fresh.cookies.set("robot_console", forged)
    assert fresh.get("/").url.path == "/login"


def test_cookies_are_secure_over_tls(console: Console) -> None:
    app = console_app(console.settings, console.engine, secret=SECRET)
    with TestClient(app, base_url="https://console.test") as client:
        response = client.get("/login")
        assert "secure" in response.headers["set-cookie"].lower()
        assert response.headers["strict-transport-security"] == "max-age=31536000"
    with TestClient(app) as plain:
        assert "strict-transport-security" not in plain.get("/login").headers


def test_a_post_without_the_csrf_token_is_refused(console: Console) -> None:
    row_id = pending(console)[0]
    client = console.signed_in("olga")
    for data in ({"row": f"retract:{row_id}"}, {"row": f"retract:{row_id}", "csrf": "forged"}):
        response = client.post("/act", data=data)
        assert response.status_code == 403, response.text
    assert console.status(row_id) == "pending"
    assert (
        console.client()
        .post("/login", data={"username": "olga", "password": PASSWORDS["olga"]})
        .status_code
        == 403
    )


def test_a_viewer_sees_no_buttons_and_a_forged_post_is_refused(console: Console) -> None:
    row_id = pending(console)[0]
    client = console.signed_in("viv")
    page = client.get("/").text
    assert f'href="/row/{row_id}"' in page
    for label in ("Retract", "Hold", "Release", "Retry"):
        assert f">{label}<" not in page and f">{label}…<" not in page
    assert ">Retract<" not in client.get(f"/row/{row_id}").text
    response = client.post("/act", data={"row": f"retract:{row_id}", "csrf": csrf_of(client)})
    assert response.status_code == 403
    assert console.status(row_id) == "pending"
    assert ("viv", "action", 0, "refused: viewer") in console.audit()
    assert client.get("/confirm?verb=retract").status_code == 403


def test_no_secret_on_any_page(console: Console, db_url: str) -> None:
    client = console.signed_in("ada")
    pending(console)
    for path in ("/", "/accounts", "/audit", "/suppression"):
        text = client.get(path).text
        assert SECRET not in text and "$argon2" not in text
        assert PASSWORDS["ada"] not in text


# -- the oops buttons --------------------------------------------------------------------------


def test_retract_hold_release_retry_one_row(console: Console) -> None:
    row_id = pending(console)[0]
    client = console.signed_in("olga")
    page = client.get("/").text
    buttons = re.findall(rf'value="(\w+):{row_id}" class="[^"]*">(\w+)</button>', page)
    assert ("retract", "Retract") in buttons and ("hold", "Hold") in buttons
    assert ("release", "Release") not in buttons  # a pending row cannot be released
    for verb, label, status in (
        ("hold", "Held", "held"),
        ("release", "Released", "pending"),
        ("retract", "Retracted", "retracted"),
    ):
        response = client.post("/act", data={"row": f"{verb}:{row_id}", "csrf": csrf_of(client)})
        assert response.status_code == 200
        assert f"{label}: 1" in response.text and f'href="/row/{row_id}"' in response.text
        assert console.status(row_id) == status
    failed = pending(console)[0]
    set_status(console, failed, "failed")
    response = client.post("/act", data={"row": f"retry:{failed}", "csrf": csrf_of(client)})
    assert "Retried: 1" in response.text and console.status(failed) == "pending"
    history = [e.kind for e in console.ops.history(row_id)]
    assert history[-3:] == ["held", "released", "retracted"]
    assert [(a[1], a[2]) for a in console.audit() if a[1] != "login"] == [
        ("hold", 1),
        ("release", 1),
        ("retract", 1),
        ("retry", 1),
    ]


def test_retract_a_selection_lists_the_rows_that_were_too_late(console: Console) -> None:
    waiting = pending(console, 3)
    sent = pending(console)[0]
    set_status(console, sent, "sent")
    client = console.signed_in("olga")
    response = client.post(
        "/act",
        data={
            "verb": "retract",
            "ids": [str(i) for i in [*waiting, sent]],
            "csrf": csrf_of(client),
        },
    )
    assert response.status_code == 200
    text = response.text
    assert "Retracted: 3" in text
    assert "Too late: 1" in text and f'href="/row/{sent}">{sent}</a> (sent)' in text
    assert [console.status(i) for i in waiting] == ["retracted"] * 3
    assert console.status(sent) == "sent"
    who, action, rows, result = console.audit()[-1]
    assert (who, action, rows) == ("olga", "retract", 3)
    assert f"too late 1: {sent} (sent)" in result


def test_hold_everything_matching_a_filter_after_a_confirmation(console: Console) -> None:
    mine = pending(console, 3, batch="spring")
    other = pending(console, 2, batch="autumn")
    set_status(console, mine[0], "sent")
    client = console.signed_in("olga")
    confirm = client.get("/confirm?verb=hold&batch=spring")
    assert confirm.status_code == 200
    assert re.search(r"This will hold <b>2</b> rows", confirm.text), confirm.text
    assert ">Hold</button>" in confirm.text
    confirmed = re.search(r'name="confirmed" value="([^"]*)"', confirm.text)
    assert confirmed is not None
    # One of them leaves between the confirmation and the click: it is reported too late.
    set_status(console, mine[1], "sending")
    response = client.post(
        "/act", data={"verb": "hold", "confirmed": confirmed[1], "csrf": csrf_of(client)}
    )
    assert "Held: 1" in response.text and f"{mine[1]}</a> (sending)" in response.text
    assert [console.status(i) for i in mine] == ["sent", "sending", "held"]
    assert [console.status(i) for i in other] == ["pending", "pending"]


def test_a_missing_row_is_reported_too_late(console: Console) -> None:
    client = console.signed_in("olga")
    response = client.post("/act", data={"row": "retract:987654", "csrf": csrf_of(client)})
    assert "Too late: 1" in response.text and "987654 (no such row)" in response.text


# -- the queue and a row ------------------------------------------------------------------------


def test_the_queue_shows_countdowns_counts_and_filters(console: Console) -> None:
    soon = pending(console, 2, subject="Invoice March")
    later = pending(console, 1, subject="Newsletter")
    set_status(console, later[0], "held")
    client = console.signed_in("viv")
    page = client.get("/").text
    assert "Leaving soon" in page
    assert len(re.findall(r'class="countdown" data-due="[^"]+"', page)) >= 2
    assert re.search(r"pending <b>2</b>", page) and re.search(r"held <b>1</b>", page)
    found = client.get("/?q=invoice").text
    assert f'href="/row/{soon[0]}"' in found and f'href="/row/{later[0]}"' not in found
    held = client.get("/?status=held").text
    assert f'href="/row/{later[0]}"' in held and f'href="/row/{soon[0]}"' not in held
    live = client.get("/queue/live?q=invoice")
    assert live.status_code == 200 and 'id="clock" data-now=' in live.text
    assert "<html" not in live.text


def test_a_text_search_shows_rows_without_counting_every_row(console: Console) -> None:
    """Counting text matches per status read all of a 1,000,000-row outbox (1 s on SQLite,
    0.46 s on PostgreSQL: docs/benchmarks.md); a text search lists rows, not counts."""
    wanted = pending(console, 1, subject="Invoice April")
    other = pending(console, 1, subject="Newsletter")
    client = console.signed_in("viv")
    found = client.get("/?q=invoice").text
    assert f'href="/row/{wanted[0]}"' in found and f'href="/row/{other[0]}"' not in found
    assert "Counts are not shown for a text search." in found
    assert not re.search(r"pending <b>\d+</b>", found)
    assert re.search(r"pending <b>2</b>", client.get("/").text)  # without text: counted


def test_the_queue_pages_by_id(console: Console) -> None:
    host_sql(
        console.url,
        "INSERT INTO outbox (recipient, body_text, status) "
        f"SELECT 'r' || i || '@example.org', 'x', 'sent' FROM {series_sql(console.url, 120)}",
    )
    client = console.signed_in("viv")
    seen: list[int] = []
    path = "/"
    for _ in range(5):
        page = client.get(path).text
        seen += [int(i) for i in re.findall(r'<td><a href="/row/(\d+)">', page)]
        older = re.search(r'<a href="/\?([^"]*before=\d+[^"]*)">Older</a>', page)
        if older is None:
            break
        path = "/?" + older[1].replace("&amp;", "&")
    assert len(seen) == 120 and seen == sorted(seen, reverse=True) and len(set(seen)) == 120


def test_the_row_page_shows_the_envelope_history_and_a_sandboxed_preview(console: Console) -> None:
    html = '<p>Hello</p><script>alert("x")</script><img src="http://127.0.0.1:9/track.png">'
    row_id = console.ops.enqueue(
        {
            "recipient": "ann@example.org",
            "subject": "Fees <2026>",
            "body_text": "Plain text",
            "body_html": html,
        },
        [Attachment("fees.pdf", "application/pdf", b"%PDF-1.4 fake")],
    )
    host_sql(
        console.url,
        "UPDATE outbox SET status = 'deferred', message_id = '<1.abc@example.org>', smtp_code = 451, "
        "smtp_reply = '4.7.1 try later', last_error = 'greylisted' WHERE id = ?",
        (row_id,),
    )
    console.ops.transition("hold", ids=[row_id], reason="hold by test")
    client = console.signed_in("olga")
    response = client.get(f"/row/{row_id}")
    text = response.text
    for expected in (
        "ann@example.org",
        "Fees &lt;2026&gt;",
        "&lt;1.abc@example.org&gt;",
        "451 4.7.1 try later",
        "greylisted",
        "hold by test",
        "fees.pdf",
        "Plain text",
    ):
        assert expected in text, expected
    frame = re.search(r'<iframe[^>]*sandbox=""[^>]*srcdoc="([^"]*)"', text)
    assert frame is not None, text
    assert "<script>" not in text.split("<iframe")[1].split("</iframe>")[0]
    assert "&lt;script&gt;" in frame[1] and "img-src data:" in frame[1]
    assert "img-src 'self' data:" in response.headers["content-security-policy"]
    assert (
        ">Release</button>" in text and ">Retract</button>" in text and ">Hold</button>" not in text
    )
    assert client.get("/row/424242").status_code == 404


# -- suppression list, audit log, session secret ---------------------------------------------------


def test_the_suppression_list_page_adds_and_removes(console: Console) -> None:
    client = console.signed_in("olga")
    added = client.post(
        "/suppression/add",
        data={
            "address": "Bob@Example.org",
            "reason": "asked us",
            "csrf": csrf_of(client, "/suppression"),
        },
    )
    assert "bob@example.org: added" in added.text and "asked us" in added.text
    assert console.ops.is_suppressed(["bob@example.org"]) == ["bob@example.org"]
    assert "bob@example.org" in client.get("/suppression?q=bob").text
    removed = client.post(
        "/suppression/remove",
        data={"address": "bob@example.org", "csrf": csrf_of(client, "/suppression")},
    )
    assert "bob@example.org: removed" in removed.text
    assert console.ops.is_suppressed(["bob@example.org"]) == []
    assert [a[1] for a in console.audit()][-2:] == ["suppress", "unsuppress"]


def test_the_audit_log_page_is_for_admins(console: Console) -> None:
    row_id = pending(console)[0]
    operator = console.signed_in("olga")
    operator.post("/act", data={"row": f"retract:{row_id}", "csrf": csrf_of(operator)})
    assert operator.get("/audit").status_code == 403
    page = console.signed_in("ada").get("/audit")
    assert page.status_code == 200
    assert re.search(
        r"<td>olga</td><td>testclient</td><td>retract</td><td>1</td><td>retracted 1: "
        + str(row_id),
        page.text,
    ), page.text


def test_the_session_secret_is_made_once_and_kept(console: Console, tmp_path: Path) -> None:
    first = session_secret(WebSettings(), console.engine)
    assert len(first) >= 32 and session_secret(WebSettings(), console.engine) == first
    path = tmp_path / "secret"
    path.write_text("f" * 40 + "\n")
    assert session_secret(WebSettings(session_secret_file=str(path)), console.engine) == "f" * 40


def test_the_csrf_token_changes_at_sign_in(console: Console) -> None:
    row_id = pending(console)[0]
    client = console.client()
    before = csrf_of(client, "/login")
    assert login(client, "olga", PASSWORDS["olga"]).url.path == "/"
    after = csrf_of(client)
    assert after != before
    refused = client.post("/act", data={"row": f"retract:{row_id}", "csrf": before})
    assert refused.status_code == 403 and console.status(row_id) == "pending"


def test_a_batch_shows_its_progress_and_retracts_what_has_not_left(console: Console) -> None:
    rows = pending(console, 5, batch="spring")
    pending(console, 2, batch="autumn")
    for row_id in rows[:2]:
        set_status(console, row_id, "sent")
    client = console.signed_in("olga")
    page = client.get("/?batch=spring").text
    assert re.search(r"sent <b>2</b>", page) and re.search(r"pending <b>3</b>", page)
    assert "2 of 5 sent" in page
    link = re.search(
        r'<a class="batch-retract" href="(/confirm\?[^"]+)">Retract what has not left yet', page
    )
    assert link is not None, page
    confirm = client.get(link[1].replace("&amp;", "&")).text
    assert re.search(r"This will retract <b>3</b> rows", confirm), confirm


async def test_send_a_test_message_from_the_accounts_page(
    console: Console, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    settings = load_settings(write_ini(console.url, smtp_server.port, name="smtp.ini"))
    app = console_app(settings, console.engine, secret=SECRET)
    with TestClient(app) as client:
        await asyncio.to_thread(login, client, "olga", PASSWORDS["olga"])
        token = await asyncio.to_thread(csrf_of, client, "/accounts")
        response = await asyncio.to_thread(
            client.post,
            "/accounts/test",
            data={"account": "default", "to": "desk@example.org", "csrf": token},
        )
        assert response.status_code == 200 and "accepted: 250" in response.text, response.text
        viewer = TestClient(app)
        await asyncio.to_thread(login, viewer, "viv", PASSWORDS["viv"])
        token = await asyncio.to_thread(csrf_of, viewer, "/accounts")
        refused = await asyncio.to_thread(
            viewer.post,
            "/accounts/test",
            data={"account": "default", "to": "desk@example.org", "csrf": token},
        )
        assert refused.status_code == 403
        viewer.close()
    assert [m.rcpt_tos for m in smtp_server.received] == [["desk@example.org"]]
    tests = [a for a in console.audit() if a[1] == "test message"]
    assert [(a[0], a[3].split(": ")[0]) for a in tests] == [
        ("olga", "default → desk@example.org"),
        ("viv", "refused"),
    ]
    assert "accepted: 250" in tests[0][3]


def test_a_failed_sign_in_never_writes_what_was_typed_for_an_unknown_name(console: Console) -> None:
    client = console.client()
    login(client, "Secret-Typed-In-The-Name-Field", "whatever-1")
    login(client, "olga", "wrong-password-1")
    failures = [a for a in console.audit() if a[1] == "login"]
    assert failures == [("(unknown user)", "login", 0, "failed"), ("olga", "login", 0, "failed")]
    page = console.signed_in("ada").get("/audit").text
    assert "Secret-Typed-In-The-Name-Field" not in page and "(unknown user)" in page


def test_a_page_of_a_status_of_many_rows_is_not_sorted_on_sqlite(
    tmp_path: Path, write_ini: WriteIni
) -> None:
    """Keyset pages stay fast on a large outbox: SQLite would take the rows of a status by
    its index and sort them all (a second for half a million sent rows); the console walks
    the ids down instead once a status has many rows."""
    url = f"sqlite:///{tmp_path}/big.db"
    engine = make_engine(url)
    upgrade(engine)
    host_sql(
        url,
        "INSERT INTO outbox (recipient, body_text, status) WITH RECURSIVE n(i) AS "
        "(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000) "
        "SELECT 'r' || i || '@example.org', 'x', 'sent' FROM n",
    )
    assert Users(engine).add("viv", "viewer", PASSWORDS["viv"])
    pages: list[tuple[str, object]] = []

    def seen(conn: object, cursor: object, statement: str, parameters: object, *_: object) -> None:
        if "ORDER BY outbox.id DESC" in statement:
            pages.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    settings = load_settings(write_ini(url))
    with TestClient(console_app(settings, engine, secret=SECRET)) as client:
        login(client, "viv", PASSWORDS["viv"])
        for path in ("/?status=sent", "/?status=sent&before=3000"):
            pages.clear()
            page = client.get(path).text
            assert len(re.findall(r'<td><a href="/row/\d+">', page)) == 50
            assert len(pages) == 1
            statement, parameters = pages[0]
            with engine.connect() as conn:
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()  # type: ignore[arg-type]
            steps = " | ".join(str(step[-1]) for step in plan)
            assert "TEMP B-TREE" not in steps, steps
    engine.dispose()


def test_the_back_link_of_an_answer_stays_on_the_console(console: Console) -> None:
    row_id = pending(console)[0]
    client = console.signed_in("olga")
    for back, shown in (
        (f"/row/{row_id}", f"/row/{row_id}"),
        ("/?status=pending", "/?status=pending"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
    ):
        verb = "hold" if console.status(row_id) == "pending" else "release"
        answer = client.post(
            "/act", data={"row": f"{verb}:{row_id}", "back": back, "csrf": csrf_of(client)}
        )
        link = re.search(r'<a class="back" href="([^"]*)">', answer.text)
        assert link is not None and link[1].replace("&amp;", "&") == shown, (back, link)


def test_signing_out_or_a_new_password_ends_copies_of_the_session(console: Console) -> None:
    client = console.signed_in("olga")
    stolen = dict(client.cookies)
    copy = console.client()
    copy.cookies.update(stolen)
    assert copy.get("/").url.path == "/"  # a copy of the cookie works while the session lasts
    client.post("/logout", data={"csrf": csrf_of(client)})
    assert copy.get("/").url.path == "/login"
    again = console.signed_in("olga")
    assert again.get("/").url.path == "/"  # signing in again works
    assert Users(console.engine).set_password("olga", "brand-new-pass-1")
    assert again.get("/").url.path == "/login"


def test_retract_everything_in_a_batch_lists_the_rows_that_had_left_too_late(
    console: Console,
) -> None:
    """As `email-robot retract --batch` does: rows of the filter that left before the
    confirmation are too late as well as those that leave between confirmation and click."""
    mine = pending(console, 4, batch="june")
    other = pending(console, 1, batch="july")
    set_status(console, mine[0], "sent")
    client = console.signed_in("olga")
    confirm = client.get("/confirm?verb=retract&batch=june")
    confirmed = re.search(r'name="confirmed" value="([^"]*)"', confirm.text)
    assert confirmed is not None and confirmed[1] == ",".join(map(str, mine[1:]))
    set_status(console, mine[1], "sending")
    response = client.post(
        "/act",
        data={
            "verb": "retract",
            "confirmed": confirmed[1],
            "filter": "batch=june",
            "csrf": csrf_of(client),
        },
    )
    assert "Retracted: 2" in response.text and "Too late: 2" in response.text
    assert f"{mine[0]}</a> (sent)" in response.text
    assert f"{mine[1]}</a> (sending)" in response.text
    late = re.search(r'<section class="too-late">(.*?)</section>', response.text, re.S)
    assert late is not None
    assert re.findall(r'href="/row/(\d+)"', late[1]) == [str(mine[0]), str(mine[1])]
    assert console.status(other[0]) == "pending"
    assert [console.status(i) for i in mine] == ["sent", "sending", "retracted", "retracted"]


# -- the accounts' state -------------------------------------------------------------------


def account_cell(page: str, name: str = "default") -> str:
    found = re.search(rf'<tr data-account="{name}">.*?<td class="state [a-z]+">([^<]*)', page, re.S)
    assert found is not None, page
    return found[1]


def test_an_operator_pauses_and_resumes_an_account_on_the_accounts_page(
    console: Console,
) -> None:
    """The same operations as `email-robot account pause|resume`, with an audit line each;
    the state column says why, and the rate comes from robot.ini."""
    client = console.signed_in("olga")
    page = client.get("/accounts").text
    assert account_cell(page) == "sending" and '<td class="rate">unlimited</td>' in page
    assert ">Pause</button>" in page and "Resume</button>" not in page
    paused = client.post(
        "/accounts/pause",
        data={
            "account": "default",
            "reason": "list <cleanup>",
            "until": "",
            "csrf": csrf_of(client),
        },
    )
    assert paused.status_code == 200
    cell = account_cell(paused.text)
    assert cell.startswith("paused by olga (console) until resumed") and "&lt;cleanup&gt;" in cell
    assert ">Resume</button>" in paused.text and ">Pause</button>" not in paused.text
    states = AccountStates(console.engine).states()
    assert states["default"].paused and states["default"].by_operator
    assert states["default"].reason == "list <cleanup>"

    resumed = client.post("/accounts/resume", data={"account": "default", "csrf": csrf_of(client)})
    assert account_cell(resumed.text) == "sending"
    assert "resumed (it was paused by olga (console)" in resumed.text
    assert AccountStates(console.engine).states() == {}
    actions = [(who, action) for who, action, _, _ in console.audit()]
    assert ("olga", "pause account") in actions and ("olga", "resume account") in actions

    later = client.post(
        "/accounts/pause", data={"account": "default", "until": "2h", "csrf": csrf_of(client)}
    )
    assert re.match(
        r"paused by olga \(console\) until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$",
        account_cell(later.text),
    )
    for bad in ({"account": "nope"}, {"account": "default", "until": "someday"}):
        response = client.post("/accounts/pause", data={**bad, "csrf": csrf_of(client)})
        assert response.status_code == 400


def test_a_viewer_cannot_pause_an_account_and_a_forged_post_is_refused(console: Console) -> None:
    viewer = console.signed_in("viv")
    page = viewer.get("/accounts").text
    assert account_cell(page) == "sending" and ">Pause</button>" not in page
    token = csrf_of(viewer)
    for path in ("/accounts/pause", "/accounts/resume"):
        response = viewer.post(path, data={"account": "default", "csrf": token})
        assert response.status_code == 403
    assert AccountStates(console.engine).states() == {}
    assert ("viv", "pause account", 0, "refused: viewer") in console.audit()
    operator = console.signed_in("olga")
    no_token = operator.post("/accounts/pause", data={"account": "default"})
    assert no_token.status_code == 403
    assert AccountStates(console.engine).states() == {}
