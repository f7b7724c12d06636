"""The operator's commands as real processes: retract, hold, release, retry, status,
suppress; exit 1 whenever something was too late."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.conftest import WriteIni
from tests.integration.host import host_sql
from tests.integration.whole_robot.test_cli import acli, cli, one_line_error
from tests.support.robot_proc import RobotProcess
from tests.support.smtpd import TestSMTPServer


def enqueue(ini: str, to: str, batch: str | None = None) -> int:
    extra = ["--batch", batch] if batch else []
    made = cli("-c", ini, "enqueue", "--to", to, "--subject", "s", "--text", "t", *extra)
    assert made.returncode == 0, made.stderr
    return int(made.stdout)


def test_retract_hold_release_retry_exit_codes(
    db_url: str, tmp_path: Path, write_ini: WriteIni
) -> None:
    ini = str(write_ini(db_url, 25, "[robot]\ngrace_minutes = 5\n"))
    june = [enqueue(ini, f"p{n}@example.org", "june") for n in range(3)]
    other = enqueue(ini, "q@example.org")
    host_sql(db_url, f"UPDATE outbox SET status = 'sent' WHERE id = {june[0]}")

    retract = cli("-c", ini, "retract", "--batch", "june")
    assert retract.returncode == 1, retract.stderr  # one of them was already sent
    assert f"retracted 2: {june[1]} {june[2]}" in retract.stdout
    assert f"too late 1: {june[0]} (sent)" in retract.stdout

    again = cli("-c", ini, "retract", str(june[1]))
    assert again.returncode == 0  # already retracted: nothing was too late
    assert f"unchanged 1: {june[1]} (retracted)" in again.stdout

    assert cli("-c", ini, "hold", str(other)).returncode == 0
    listing = json.loads(cli("-c", ini, "list", "--status", "held", "--json").stdout)
    assert [r["id"] for r in listing] == [other]
    assert cli("-c", ini, "release", str(other), "424242").returncode == 1  # no such row
    assert host_sql(db_url, f"SELECT status FROM outbox WHERE id = {other}") == [("pending",)]

    host_sql(
        db_url,
        f"UPDATE outbox SET status = 'failed', attempts = 10, last_error = 'x' WHERE id = {other}",
    )
    retry = cli("-c", ini, "retry", "--failed")
    assert retry.returncode == 0 and f"retried 1: {other}" in retry.stdout
    assert host_sql(db_url, f"SELECT status, attempts FROM outbox WHERE id = {other}") == [
        ("pending", 0)
    ]
    history = json.loads(cli("-c", ini, "show", str(other), "--json").stdout)["history"]
    assert [e["kind"] for e in history] == ["held", "released", "retried"]
    assert history[0]["detail"].startswith("hold by ")

    usage = cli("-c", ini, "retract")
    assert usage.returncode == 2 and "give row IDs or --batch" in one_line_error(usage)


def test_status_and_suppress(tmp_path: Path, write_ini: WriteIni) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    ini = str(write_ini(url, 25, "[robot]\ngrace_minutes = 0\nrate = 10\n"))
    assert cli("-c", ini, "db", "upgrade").returncode == 0
    for n in range(30):
        host_sql(
            url,
            "INSERT INTO outbox (recipient, body_text, batch) VALUES (?, 'x', 'bulk')",
            [f"p{n}@example.org"],
        )
    status = cli("-c", ini, "status")
    assert status.returncode == 0, status.stderr
    assert "pending" in status.stdout and "30" in status.stdout
    assert "rate: 10.0/s ([robot] rate)" in status.stdout
    assert "ETA due now:" in status.stdout and "(in 3s)" in status.stdout
    as_json = json.loads(cli("-c", ini, "status", "--batch", "bulk", "--json").stdout)
    assert as_json["counts"] == {"pending": 30} and as_json["due"] == 30
    assert as_json["rate"] == 10.0

    added = cli("-c", ini, "suppress", "add", "Ada <ADA@example.org>", "b@example.org")
    assert added.returncode == 0
    assert added.stdout.splitlines() == ["ada@example.org: added", "b@example.org: added"]
    listed = json.loads(cli("-c", ini, "suppress", "list", "--json").stdout)
    assert sorted(e["address"] for e in listed) == ["ada@example.org", "b@example.org"]
    assert cli("-c", ini, "suppress", "remove", "b@example.org").returncode == 0
    gone = cli("-c", ini, "suppress", "remove", "b@example.org")
    assert gone.returncode == 1 and "not in the list" in gone.stdout
    bad = cli("-c", ini, "suppress", "add", "nobody")
    assert bad.returncode == 2 and "not an e-mail address" in one_line_error(bad)


async def test_retract_a_batch_during_its_grace_delay_while_the_robot_runs(
    db_url: str, write_ini: WriteIni, smtp_server: TestSMTPServer
) -> None:
    ini = write_ini(db_url, smtp_server.port, "[robot]\ngrace_minutes = 0.1\n")  # 6 s
    robot = await RobotProcess(ini).start()
    try:
        for n in range(5):
            host_sql(
                db_url,
                "INSERT INTO outbox (recipient, subject, body_text, batch) "
                f"VALUES ('oops{n}@example.org', 'wrong', 'x', 'oops')",
            )
        host_sql(
            db_url,
            "INSERT INTO outbox (recipient, subject, body_text, batch) "
            "VALUES ('keep@example.org', 'right', 'x', 'keep')",
        )
        code, out, err = await acli("-c", str(ini), "retract", "--batch", "oops")
        assert code == 0, out + err
        assert out.startswith("retracted 5:")
        await smtp_server.wait_for(1, timeout=30)
        await asyncio.sleep(1)  # would any retracted row still go out?
        code = await robot.terminate()
    finally:
        await robot.close()
    assert code == 0, robot.tail()
    assert [r.rcpt_tos for r in smtp_server.received] == [["keep@example.org"]]
    counts = dict(host_sql(db_url, "SELECT status, count(*) FROM outbox GROUP BY status"))
    assert counts == {"retracted": 5, "sent": 1}
