"""The console in a real browser: a headless Chromium against a real `email-robot web`
process, beside a real robot sending to the test SMTP server.

An operator signs in, sees a waiting row's countdown run, clicks Retract, and the SMTP server
never gets that message (while a row enqueued with it is sent). An HTML body with a script
and a remote image neither runs nor loads in the row page's preview.

ROBOT_SCREENSHOTS=1 also writes docs/console-queue.png and docs/console-row.png."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from robot.outbox.engine import make_engine, upgrade
from robot.outbox.operations import Operations
from robot.web.users import Users
from tests.conftest import WriteIni
from tests.integration.host import host_sql, insert_many
from tests.support.browser import chromium
from tests.support.robot_proc import RobotProcess, wait_until
from tests.support.smtpd import TestSMTPServer

DOCS = Path(__file__).parents[3] / "docs"
GRACE_SECONDS = 20  # long enough to sign in and click, short enough to wait for in a test
PASSWORD = "operator-pass-1"


class Listener:
    """A TCP listener that only counts who connects: where the 'remote' image points."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def sign_in(browser: WebDriver, base: str) -> None:
    browser.get(base + "/")
    assert browser.current_url.endswith("/login"), browser.current_url
    browser.find_element(By.NAME, "username").send_keys("olga")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda b: b.current_url.rstrip("/") == base)


def retract_in_browser(
    base: str, row_id: int, profile: Path, screenshots: bool, outbox: Operations
) -> list[str]:
    """Sign in, watch the row's countdown run and a new row appear without a reload, click
    the row's Retract button; the countdown texts seen and the result page's text."""
    with chromium(profile) as browser:
        sign_in(browser, base)
        browser.find_element(By.CSS_SELECTOR, f'input[name=ids][value="{row_id}"]').click()
        arrival = outbox.enqueue(
            {
                "recipient": "late@example.org",
                "subject": "Arrived later",
                "body_text": "x",
                "status": "held",
            }
        )
        WebDriverWait(browser, 15).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, f'table.all tr[data-id="{arrival}"]')
        )
        # The page was fetched again, and the box ticked before that is still ticked.
        assert browser.find_element(
            By.CSS_SELECTOR, f'input[name=ids][value="{row_id}"]'
        ).is_selected()
        selector = f'table.soon tr[data-id="{row_id}"] .countdown'
        WebDriverWait(browser, 10).until(
            lambda b: re.fullmatch(
                r"leaves in \d+:\d\d", b.find_element(By.CSS_SELECTOR, selector).text
            )
        )
        first = browser.find_element(By.CSS_SELECTOR, selector).text
        WebDriverWait(browser, 10).until(
            lambda b: b.find_element(By.CSS_SELECTOR, selector).text != first
        )
        second = browser.find_element(By.CSS_SELECTOR, selector).text
        if screenshots:
            browser.save_screenshot(str(DOCS / "console-queue.png"))
        button = browser.find_element(
            By.CSS_SELECTOR, f'table.soon tr[data-id="{row_id}"] button[value="retract:{row_id}"]'
        )
        assert button.text == "Retract"
        button.click()
        WebDriverWait(browser, 10).until(lambda b: "Retracted: 1" in b.page_source)
        return [first, second, browser.find_element(By.TAG_NAME, "main").text]


def preview_in_browser(
    base: str, row_id: int, profile: Path, screenshots: bool
) -> dict[str, object]:
    """Open the row page; what the preview frame looks like from the outside and inside."""
    with chromium(profile) as browser:
        sign_in(browser, base)
        browser.get(f"{base}/row/{row_id}")
        WebDriverWait(browser, 10).until(
            lambda b: b.execute_script("return document.readyState") == "complete"
        )
        frame = browser.find_element(By.CSS_SELECTOR, "iframe.preview")
        time.sleep(2)  # give a script or an image every chance to act
        seen: dict[str, object] = {
            "sandbox": frame.get_attribute("sandbox"),
            "title": browser.title,
            "marker": browser.execute_script("return window.robotPwned === undefined"),
        }
        if screenshots:
            browser.set_window_size(1280, 1500)
            browser.save_screenshot(str(DOCS / "console-row.png"))
        browser.switch_to.frame(frame)
        seen["frame_text"] = browser.find_element(By.TAG_NAME, "body").text
        seen["images_loaded"] = browser.execute_script(
            "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
        )
        browser.switch_to.default_content()
        return seen


async def test_an_operator_retracts_a_waiting_row_in_the_browser_and_it_is_never_sent(
    tmp_path: Path, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    url = f"sqlite:///{tmp_path}/robot.db"
    engine = make_engine(url)
    upgrade(engine)
    assert Users(engine).add("olga", "operator", PASSWORD)
    outbox = Operations(engine, grace_seconds=GRACE_SECONDS)
    listener = Listener()
    image_port = await listener.start()
    ini = write_ini(url, smtp_server.port, extra=f"[robot]\ngrace_minutes = {GRACE_SECONDS / 60}\n")
    screenshots = os.environ.get("ROBOT_SCREENSHOTS") == "1"
    robot = await RobotProcess(ini, "run").start()
    web = await RobotProcess(ini, "web", "--listen", "127.0.0.1:0").start()
    try:
        listening = await web.wait_for_event("web_listening")
        base = f"http://127.0.0.1:{listening['port']}"
        oops = outbox.enqueue(
            {
                "recipient": "parents@example.org",
                "subject": "Wrong list: do not send",
                "body_text": "oops",
            }
        )
        kept = outbox.enqueue(
            {"recipient": "staff@example.org", "subject": "Staff meeting", "body_text": "at 3"}
        )
        for i in range(3):  # a few sent rows, for the look of the page
            outbox.enqueue(
                {"recipient": f"sent{i}@example.org", "subject": f"Report {i}", "body_text": "x"}
            )
        host_sql(
            url, "UPDATE outbox SET created_at = '2026-01-01 00:00:00.000' WHERE id > ?", (kept,)
        )
        await smtp_server.wait_for(3, timeout=30)

        first, second, result = await asyncio.to_thread(
            retract_in_browser, base, oops, tmp_path / "profile-1", screenshots, outbox
        )
        assert first != second, (first, second)  # the countdown runs without a reload
        assert "Retracted: 1" in result and str(oops) in result

        # The row retracted with it in its grace window leaves; the retracted one never does.
        await smtp_server.wait_for(4, timeout=GRACE_SECONDS + 30)
        await asyncio.sleep(2)  # a few more polls of the robot
        recipients = [r for message in smtp_server.received for r in message.rcpt_tos]
        assert "staff@example.org" in recipients
        assert "parents@example.org" not in recipients, recipients
        assert host_sql(url, "SELECT status FROM outbox WHERE id = ?", (oops,)) == [("retracted",)]

        html = (
            "<h1>Spring newsletter</h1><p>Dear parents, the fair is on Saturday.</p>"
            "<script>window.parent.document.title = 'pwned'; window.parent.robotPwned = 1;"
            f"fetch('http://127.0.0.1:{image_port}/script');</script>"
            f'<img src="http://127.0.0.1:{image_port}/pixel.png" alt="tracker">'
            f'<img src="x" onerror="fetch(\'http://127.0.0.1:{image_port}/onerror\')">'
        )
        risky = outbox.enqueue(
            {
                "recipient": "parents@example.org",
                "subject": "Spring newsletter",
                "body_text": "Dear parents, the fair is on Saturday.",
                "body_html": html,
                "status": "held",
            }
        )
        seen = await asyncio.to_thread(
            preview_in_browser, base, risky, tmp_path / "profile-2", screenshots
        )
        assert seen["sandbox"] == ""
        assert "Spring newsletter" in str(seen["frame_text"])  # the preview does show the mail
        assert seen["title"] == f"Row {risky} · email-robot" and seen["marker"] is True
        assert seen["images_loaded"] == 0
        assert listener.connections == 0  # neither the image nor the script reached out

        # The listener does answer: a connection is counted when something really connects.
        _, writer = await asyncio.open_connection("127.0.0.1", image_port)
        writer.close()
        await wait_until(lambda: listener.connections == 1, 5, "the control connection")
    finally:
        await web.terminate()
        await robot.terminate()
        await listener.stop()
        engine.dispose()
    assert web.returncode == 0, web.tail()


BATCH_ROWS = 300
HOLD_AFTER = 150  # the SMTP server stalls here until the retract is done: never finished first


def retract_batch_in_browser(base: str, batch: str, profile: Path) -> dict[str, object]:
    """Sign in, filter the queue by `batch`, Retract everything matching it, confirm; the
    count the confirmation showed, the ids it named, and the result page's lists."""
    with chromium(profile) as browser:
        sign_in(browser, base)
        browser.find_element(By.CSS_SELECTOR, "form.filter input[name=batch]").send_keys(batch)
        browser.find_element(By.CSS_SELECTOR, "form.filter button[type=submit]").click()
        WebDriverWait(browser, 15).until(lambda b: f"batch={batch}" in b.current_url)
        browser.find_element(By.CSS_SELECTOR, ".matching a.verb-retract").click()
        WebDriverWait(browser, 15).until(lambda b: "/confirm" in b.current_url)
        shown = int(browser.find_element(By.CSS_SELECTOR, ".confirm-count b").text)
        confirmed = browser.find_element(By.NAME, "confirmed").get_attribute("value") or ""
        browser.find_element(By.CSS_SELECTOR, "form button.verb-retract").click()
        WebDriverWait(browser, 30).until(lambda b: "Retracted:" in b.page_source)

        def listed(section: str) -> list[tuple[int, str]]:
            found = []
            for item in browser.find_elements(By.CSS_SELECTOR, f"section.{section} li"):
                row_id, _, status = item.text.partition(" ")
                found.append((int(row_id), status.strip("()")))
            return found

        return {
            "shown": shown,
            "confirmed": [int(i) for i in confirmed.split(",") if i],
            "retracted": [i for i, _ in listed("changed")],
            "too_late": listed("too-late"),
            "heading": browser.find_element(By.CSS_SELECTOR, "section.changed h2").text,
        }


async def test_retracting_a_batch_by_filter_while_it_is_sent_reports_exactly_what_left(
    db_url: str, tmp_path: Path, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    """The batch goes out (throttled) while an operator retracts everything matching the
    batch filter: the result page's "too late" ids are exactly the messages the server got,
    every other row of the batch is retracted and never sent, and together they are the
    whole batch."""
    engine = make_engine(db_url)
    assert Users(engine).add("olga", "operator", PASSWORD)
    ini = write_ini(db_url, smtp_server.port, extra="[robot]\nrate = 10\n")
    gate = smtp_server.hold_after(HOLD_AFTER)
    robot = await RobotProcess(ini, "run").start()
    web = await RobotProcess(ini, "web", "--listen", "127.0.0.1:0").start()
    try:
        listening = await web.wait_for_event("web_listening")
        base = f"http://127.0.0.1:{listening['port']}"
        await robot.wait_for_event("robot.started")
        batch = set(insert_many(db_url, BATCH_ROWS, batch="june"))
        await smtp_server.wait_for(10, timeout=60)  # the send is under way

        seen = await asyncio.to_thread(retract_batch_in_browser, base, "june", tmp_path / "p")

        gate.set()  # the rows that were too late may now finish
        await wait_until(
            lambda: (
                host_sql(
                    db_url,
                    "SELECT count(*) FROM outbox WHERE batch = 'june' "
                    "AND status NOT IN ('sent', 'retracted')",
                )
                == [(0,)]
            ),
            120,
            "every row of the batch sent or retracted",
        )
        message_ids = dict(
            host_sql(db_url, "SELECT message_id, id FROM outbox WHERE batch = 'june'")
        )
        received = [m.message()["Message-ID"] for m in smtp_server.received]
        received_ids = {message_ids[m] for m in received}
        statuses = dict(host_sql(db_url, "SELECT id, status FROM outbox WHERE batch = 'june'"))
    finally:
        gate.set()
        await web.terminate()
        await robot.terminate()
        engine.dispose()

    confirmed, retracted = seen["confirmed"], seen["retracted"]
    too_late = seen["too_late"]
    assert isinstance(confirmed, list) and isinstance(retracted, list)
    assert isinstance(too_late, list)
    assert seen["shown"] == len(confirmed)  # the confirmation said how many it would retract
    assert 0 < len(confirmed) < BATCH_ROWS  # the click landed mid-way through the batch
    assert seen["heading"] == f"Retracted: {len(retracted)}"
    too_late_ids = {i for i, _ in too_late}
    assert len(received) == len(received_ids)  # each message once
    assert too_late_ids == received_ids, (sorted(too_late_ids ^ received_ids), too_late)
    assert {s for _, s in too_late} <= {"sending", "sent"}
    assert set(retracted) | too_late_ids == batch
    assert not set(retracted) & too_late_ids
    assert retracted and too_late_ids  # some were stopped, some had left
    assert {i for i, s in statuses.items() if s == "retracted"} == set(retracted)
    assert {i for i, s in statuses.items() if s == "sent"} == received_ids
    assert web.returncode == 0, web.tail()
