"""An account's state, shared through account_state by a real robot, the command line and
the console: a robot's pause after a refused login shows in `status` and on the Accounts
page; an operator's pause stops a real robot sending that account's rows while another
account keeps sending, and resume lets them go."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from starlette.testclient import TestClient

from robot.config import load_settings
from robot.outbox.engine import make_engine
from robot.web.app import console_app
from robot.web.throttle import LoginThrottle
from robot.web.users import Users
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.whole_robot.test_cli import acli
from tests.support.robot_proc import RobotProcess, wait_until
from tests.support.smtpd import TestSMTPServer

SECRET = "n3ws-secret-pw"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def news_account(port: int, password_file: Path) -> str:
    return (
        "[account:news]\n"
        "address = news@example.net\n"
        f"port = {port}\n"
        "username = news@example.net\n"
        f"password_file = {password_file}\n"
        "rate = 50\n"
    )


def insert_rows(url: str, count: int, account: str | None = None) -> list[int]:
    """`count` rows of `account` (None: the default), as a host inserts them; their ids."""
    name = f"'{account}'" if account else "NULL"
    first = int(host_sql(url, "SELECT coalesce(max(id), 0) FROM outbox")[0][0])
    values = ", ".join(f"('r{n}@example.org', 'x', {name})" for n in range(count))
    host_sql(url, f"INSERT INTO outbox (recipient, body_text, account) VALUES {values}")
    return [int(r[0]) for r in host_sql(url, f"SELECT id FROM outbox WHERE id > {first}")]


def statuses(url: str, account: str | None) -> dict[str, int]:
    where = "account IS NULL" if account is None else f"account = '{account}'"
    return dict(host_sql(url, f"SELECT status, count(*) FROM outbox WHERE {where} GROUP BY status"))


def console_page(ini: Path, url: str, path: str, user: str = "ada") -> str:
    """`path` of the console (the real app on the same robot.ini and database), signed in."""
    engine = make_engine(url, lenient_text=True)
    try:
        app = console_app(load_settings(ini), engine, secret="s" * 32, throttle=LoginThrottle())
        with TestClient(app, follow_redirects=True) as client:
            token = CSRF.search(client.get("/login").text)
            assert token is not None
            client.post("/login", data={"username": user, "password": "pw-ada-1", "csrf": token[1]})
            return client.get(path).text
    finally:
        engine.dispose()


async def test_a_refused_login_shows_as_paused_after_a_fault_in_status_and_on_the_page(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer, tmp_path: Path
) -> None:
    news_server = TestSMTPServer(auth={"news@example.net": SECRET})
    await news_server.start()
    password = tmp_path / "news-pw"
    password.write_text("not-the-password\n")
    ini = write_ini(db_url, smtp_server.port, news_account(news_server.port, password))
    engine = make_engine(db_url)
    assert Users(engine).add("ada", "admin", "pw-ada-1")
    engine.dispose()
    robot = await RobotProcess(ini, "run").start()
    try:
        news = insert_rows(db_url, 3, "news")
        others = insert_rows(db_url, 2)
        fault = await robot.wait_for_event("account.fault")
        assert fault["account"] == "news" and "535" in fault["reason"]
        await smtp_server.wait_for(2, timeout=30)  # the other account sends meanwhile

        code, out, err = await acli("-c", str(ini), "status")
        assert code == 0, err
        line = next(x for x in out.splitlines() if x.strip().startswith("news"))
        assert "paused after a fault until" in line and "535" in line, out
        assert re.search(r"^\s+default\s+sending$", out, re.M), out
        assert "3 wait for paused accounts: news" in out, out
        assert "ETA paused: 3 due rows wait for their accounts (news)" in out, out
        assert "ETA due now: now" not in out, out  # nothing due is promised
        code, out, _ = await acli("-c", str(ini), "status", "--json")
        state = json.loads(out)["accounts"]["news"]
        assert state["state"] == "paused" and not state["paused_by_operator"]
        assert json.loads(out)["due_waiting_for_paused_accounts"] == 3

        page = await asyncio.to_thread(console_page, ini, db_url, "/accounts")
        cell = re.search(r'<tr data-account="news">.*?<td class="state paused">([^<]*)', page, re.S)
        assert cell is not None and cell[1].startswith("paused after a fault until"), page
        assert "535" in cell[1] and "Resume (try now)" in page
        assert SECRET not in page and "not-the-password" not in page
        assert all(SECRET not in str(r) for r in host_sql(db_url, "SELECT * FROM account_state"))

        # The right password, and Resume: the robot tries at once, sends, and says so.
        password.write_text(SECRET + "\n")
        code, out, err = await acli("-c", str(ini), "account", "resume", "news")
        assert code == 0 and "resumed (it was paused after a fault" in out, (out, err)
        await news_server.wait_for(3, timeout=30)
        await wait_until(
            lambda: host_sql(db_url, "SELECT count(*) FROM account_state") == [(0,)],
            30,
            "the fault pause cleared",
        )
        code, out, _ = await acli("-c", str(ini), "account", "list")
        assert re.search(r"^news\s+sending$", out, re.M), out
    finally:
        await robot.terminate()
        await news_server.stop()
    assert statuses(db_url, "news") == {"sent": 3}
    assert statuses(db_url, None) == {"sent": len(others)}
    assert SECRET not in "\n".join(robot.lines)
    assert len(news) == 3


async def test_an_operator_pause_stops_one_account_while_another_sends_until_resumed(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer, tmp_path: Path
) -> None:
    news_server = TestSMTPServer()
    await news_server.start()
    # The account's server stalls after 5 messages until the pause is read: the robot is
    # then mid-way, its connections on the wire and rows of the account claimed in hand.
    gate = news_server.hold_after(5)
    ini = write_ini(
        db_url,
        smtp_server.port,
        f"[account:news]\naddress = news@example.net\nport = {news_server.port}\n",
    )
    robot = await RobotProcess(ini, "run").start()
    try:
        await robot.wait_for_event("robot.started")
        insert_rows(db_url, 200, "news")
        await news_server.wait_for(5, timeout=30)

        code, out, err = await acli(
            "-c", str(ini), "account", "pause", "news", "--reason", "list cleanup"
        )
        assert code == 0 and "paused by" in out and "(list cleanup)" in out, (out, err)
        await robot.wait_for_event("account.paused_by_operator")
        gate.set()  # the messages on the wire finish; what the robot holds goes back
        await wait_until(
            lambda: statuses(db_url, "news").get("sending", 0) == 0,
            30,
            "no row of the paused account sending",
        )
        received_at_pause = len(news_server.received)
        others = insert_rows(db_url, 20)
        await smtp_server.wait_for(20, timeout=30)  # the other account keeps sending
        await asyncio.sleep(1)  # five more polls: a robot that ignored the pause would send
        assert len(news_server.received) == received_at_pause
        news_status = statuses(db_url, "news")
        assert news_status.get("pending", 0) == 200 - received_at_pause, news_status

        code, out, _ = await acli("-c", str(ini), "status")
        assert re.search(r"^\s+news\s+paused by \S+ until resumed \(list cleanup\)$", out, re.M)
        assert f"{200 - received_at_pause} wait for paused accounts: news" in out, out
        released = host_sql(
            db_url,
            "SELECT detail FROM outbox_event WHERE kind = 'unclaimed' AND detail LIKE ?",
            ["not tried: account news paused by %"],
        )
        unclaimed = host_sql(db_url, "SELECT count(*) FROM outbox_event WHERE kind = 'unclaimed'")
        assert released and len(released) == unclaimed[0][0], (released, unclaimed)
        assert "(list cleanup)" in released[0][0]

        code, out, err = await acli("-c", str(ini), "account", "resume", "news")
        assert code == 0 and "resumed (it was paused by" in out, (out, err)
        await news_server.wait_for(200, timeout=60)
    finally:
        gate.set()
        await robot.terminate()
        await news_server.stop()
    assert statuses(db_url, "news") == {"sent": 200}
    assert statuses(db_url, None) == {"sent": len(others)}
    ids = [m.message()["Message-ID"] for m in news_server.received]
    assert len(set(ids)) == 200  # each once


def test_account_commands_refuse_an_unknown_account_with_exit_2(
    db_url: str, write_ini: WriteIni
) -> None:
    from tests.integration.whole_robot.test_cli import cli, one_line_error

    ini = str(write_ini(db_url))
    for verb in ("pause", "resume"):
        result = cli("-c", ini, "account", verb, "nope")
        assert result.returncode == 2
        assert "unknown account 'nope' (known: default)" in one_line_error(result)
    bad_time = cli("-c", ini, "account", "pause", "default", "--until", "yesterday")
    assert bad_time.returncode == 2 and "not a time" in bad_time.stderr
    later = cli("-c", ini, "account", "pause", "default", "--until", "2h", "--reason", "why")
    assert later.returncode == 0 and "paused by" in later.stdout and "(why)" in later.stdout
    listing = json.loads(cli("-c", ini, "account", "list", "--json").stdout)
    assert listing["default"]["paused_by_operator"] and listing["default"]["reason"] == "why"


async def test_the_fault_pause_is_cleared_when_the_account_sends_again_by_itself(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer, tmp_path: Path
) -> None:
    """No operator: the robot tries again when its pause ends, sends, and clears the row."""
    news_server = TestSMTPServer(auth={"news@example.net": SECRET})
    await news_server.start()
    password = tmp_path / "news-pw"
    password.write_text("not-the-password\n")
    ini = write_ini(db_url, smtp_server.port, news_account(news_server.port, password))
    robot = await RobotProcess(ini, "run").start()
    try:
        insert_rows(db_url, 2, "news")
        await robot.wait_for_event("account.fault")
        await wait_until(
            lambda: (
                host_sql(db_url, "SELECT kind, paused_by FROM account_state")
                == [("fault", robot.named("robot.started")[0]["robot"])]
            ),
            30,
            "the fault pause written",
        )
        password.write_text(SECRET + "\n")  # read again at the next try (10 s later)
        await news_server.wait_for(2, timeout=60)
        await wait_until(
            lambda: host_sql(db_url, "SELECT count(*) FROM account_state") == [(0,)],
            30,
            "the fault pause cleared",
        )
    finally:
        await robot.terminate()
        await news_server.stop()
    assert statuses(db_url, "news") == {"sent": 2}
    assert len(robot.named("account.fault")) == 1
