"""`[metrics] listen`: a Prometheus endpoint a scraper can read while the robot runs."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from robot.config import load_settings
from robot.daemon.robot import Robot
from robot.outbox.engine import make_engine
from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.support.smtpd import TestSMTPServer


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_endpoint_reports_outcomes_depth_and_latency(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    smtp_server.fault("RCPT", "550 5.1.1 No such user", address="gone@example.org")
    for recipient in ("a@example.org", "b@example.org", "gone@example.org"):
        host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES (?, 'x')", [recipient])
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, body_text, status) VALUES ('d@example.org', 'x', 'held')",
    )
    ini = write_ini(db_url, smtp_server.port, "[metrics]\nlisten = 127.0.0.1:0\n")
    engine = make_engine(db_url)
    robot = Robot(load_settings(ini, environ={}), engine)
    running = asyncio.create_task(robot.run())
    try:
        await smtp_server.wait_for(2, timeout=20)
        # Every outcome committed before the depth is read: a connection goes on sending
        # while its last outcome commits, so the server having the mail is not enough.
        counts = robot.tally.counts
        while counts.get("bounced", 0) < 1 or counts.get("sent", 0) < 2:
            await asyncio.sleep(0.05)
        await robot.jobs.measure()  # the 15-second reading, now
        assert robot.metrics_url is not None
        seen = await asyncio.to_thread(scrape, robot.metrics_url)
    finally:
        robot.stop()
        assert await asyncio.wait_for(running, 20) == 0
        engine.dispose()
    assert seen[("email_robot_messages_total", (("outcome", "sent"),))] == 2
    assert seen[("email_robot_messages_total", (("outcome", "bounced"),))] == 1
    assert seen[("email_robot_outbox_rows", (("status", "sent"),))] == 2
    assert seen[("email_robot_outbox_rows", (("status", "held"),))] == 1
    assert seen[("email_robot_outbox_rows", (("status", "pending"),))] == 0
    assert seen[("email_robot_due_backlog", ())] == 0
    assert seen[("email_robot_send_seconds_count", ())] == 3
    assert seen[("email_robot_open_connections", (("account", "default"),))] >= 1
