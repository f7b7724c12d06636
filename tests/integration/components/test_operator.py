"""Operator control on real SQLite and PostgreSQL: retract, hold, release, retry, status,
the suppression list, retention, and rows too big or too odd to send."""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from robot.outbox.both_sides import Outbox
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outbox.rows import Decision
from robot.outbox.schema import Status
from tests.integration.host import host_sql, insert_many, now_plus_sql

mid = MessageIds(fallback=AccountDomain("robot@example.org", "example.org"))


def statuses(url: str) -> dict[int, str]:
    return {int(i): s for i, s in host_sql(url, "SELECT id, status FROM outbox")}


def queue(engine: Engine, **kw: float) -> Outbox:
    return Outbox(engine, grace_seconds=kw.get("grace", 0), lease_seconds=60)


def test_retract_hold_release_and_what_is_too_late(db_url: str, engine: Engine) -> None:
    ids = insert_many(db_url, 5, batch="june")
    box = queue(engine)
    (sending,) = box.claim("robot", 1, mid)  # the first is on the wire now
    held = box.transition("hold", ids=ids[1:3])
    assert held.changed == ids[1:3]
    assert held.too_late == [(sending.id, "sending")] or sending.id not in ids[1:3]
    change = box.transition("retract", batch="june")
    assert change.changed == ids[1:]  # pending and held rows alike
    assert change.too_late == [(sending.id, "sending")]
    again = box.transition("retract", ids=[ids[1], 999999])
    assert again.changed == []
    assert again.unchanged == [(ids[1], "retracted")]
    assert again.too_late == [(999999, "missing")]
    released = box.transition("release", ids=[ids[1]])
    assert released.changed == [] and released.too_late == [(ids[1], "retracted")]
    assert statuses(db_url) == {sending.id: "sending", **{i: "retracted" for i in ids[1:]}}
    kinds = [e.kind for e in box.history(ids[1])]
    assert kinds == ["held", "retracted"]
    assert box.claim("robot", 10, mid) == []  # nothing retracted is ever claimed


def test_hold_then_release_lets_a_row_go(db_url: str, engine: Engine) -> None:
    (row_id,) = insert_many(db_url, 1)
    box = queue(engine)
    assert box.transition("hold", ids=[row_id]).changed == [row_id]
    assert box.claim("robot", 5, mid) == []
    assert box.transition("hold", ids=[row_id]).unchanged == [(row_id, "held")]
    assert box.transition("release", ids=[row_id]).changed == [row_id]
    assert [r.id for r in box.claim("robot", 5, mid)] == [row_id]


def test_host_inserted_held_row_is_a_draft(db_url: str, engine: Engine) -> None:
    host_sql(
        db_url,
        "INSERT INTO outbox (recipient, body_text, status) VALUES ('d@example.org', 'x', 'held')",
    )
    box = queue(engine)
    assert box.claim("robot", 5, mid) == []
    (row_id,) = box.transition("release", statuses=("held",)).changed
    assert [r.id for r in box.claim("robot", 5, mid)] == [row_id]


def test_retry_failed_rows_starts_them_afresh_with_the_same_message_id(
    db_url: str, engine: Engine
) -> None:
    ids = insert_many(db_url, 3, batch="b1")
    box = queue(engine)
    rows = box.claim("robot", 3, mid)
    failed = Decision(Status.FAILED, None, "554 rejected", "failed")
    for row in rows[:2]:
        assert box.finish(row.id, "robot", failed)
    assert box.finish(rows[2].id, "robot", Decision(Status.SENT, None, None, "sent"))
    change = box.transition("retry", statuses=("failed",), batch="b1")
    assert change.changed == ids[:2]
    assert change.too_late == []  # rows in other statuses are not "chosen" by --failed
    again = {r.id: r for r in box.claim("robot", 5, mid)}
    assert sorted(again) == ids[:2]
    assert all(again[r.id].message_id == r.message_id for r in rows[:2])
    assert all(r.attempts == 1 for r in again.values())  # counting starts again
    sent_retry = box.transition("retry", ids=[ids[2]])
    assert sent_retry.too_late == [(ids[2], "sent")]


def race_once(box: Outbox, batch: str) -> tuple[list[int], list[int]]:
    """Claim (in small bites) and retract the batch at the same moment; returns both."""
    start = threading.Barrier(2)
    claimed: list[int] = []
    retracted: list[int] = []
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            start.wait()
            for _ in range(4):
                claimed.extend(r.id for r in box.claim("robot", 5, mid))
        except BaseException as exc:
            errors.append(exc)

    def retract() -> None:
        try:
            start.wait()
            retracted.extend(box.transition("retract", batch=batch).changed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim), threading.Thread(target=retract)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return claimed, retracted


def test_retract_and_claim_race_never_both(db_url: str, engine: Engine) -> None:
    """Retract and claim run at the same moment, many times: each row ends either retracted
    or claimed (and then sent), never both."""
    box = queue(engine)
    split = 0
    for round_number in range(25):
        ids = insert_many(db_url, 20, batch=f"race{round_number}")
        claimed, retracted = race_once(box, f"race{round_number}")
        assert not set(claimed) & set(retracted)
        assert sorted(claimed + retracted) == ids
        split += bool(claimed and retracted)
        for row_id in claimed:
            assert box.finish(row_id, "robot", Decision(Status.SENT, None, None, "sent"))
    both = host_sql(
        db_url,
        "SELECT count(*) FROM outbox_event r JOIN outbox_event s ON r.outbox_id = s.outbox_id "
        "WHERE r.kind = 'retracted' AND s.kind = 'sent'",
    )
    assert both == [(0,)]
    counts = dict(host_sql(db_url, "SELECT status, count(*) FROM outbox GROUP BY status"))
    assert set(counts) <= {"sent", "retracted"} and sum(counts.values()) == 500
    assert counts.get("retracted", 0) > 0
    print(f"rounds where claim and retract interleaved: {split} of 25")


def test_status_counts_backlog_and_batch(db_url: str, engine: Engine) -> None:
    insert_many(db_url, 4, batch="a")
    insert_many(db_url, 2, batch="b")
    host_sql(
        db_url,
        f"INSERT INTO outbox (recipient, body_text, send_after) "
        f"VALUES ('later@example.org', 'x', {now_plus_sql(db_url, 3600)})",
    )
    box = queue(engine)
    (row,) = box.claim("robot", 1, mid)
    assert box.finish(row.id, "robot", Decision(Status.SENT, None, None, "sent"))
    everything = box.status()
    assert everything.counts == {"pending": 6, "sent": 1}
    assert (everything.due, everything.later, everything.sent_recently) == (5, 1, 1)
    assert everything.next_due is not None
    assert 3500 < (everything.next_due - everything.now).total_seconds() <= 3600
    batch_b = box.status(batch="b")
    assert batch_b.counts == {"pending": 2} and batch_b.due == 2 and batch_b.later == 0


def test_suppression_list(engine: Engine) -> None:
    box = queue(engine)
    assert box.suppress("Ada@Example.org", "asked to stop")
    assert not box.suppress("ada@example.org", "again")
    assert box.is_suppressed(["ADA@example.org", "bob@example.org"]) == ["ada@example.org"]
    assert [entry[:2] for entry in box.suppressed()] == [("ada@example.org", "asked to stop")]
    assert box.unsuppress("ADA@EXAMPLE.ORG")
    assert not box.unsuppress("ada@example.org")
    assert box.suppressed() == []


def test_retention_deletes_old_finished_rows_in_chunks(db_url: str, engine: Engine) -> None:
    old = insert_many(db_url, 7)
    young = insert_many(db_url, 2)
    box = queue(engine)
    for row in box.claim("robot", 100, mid):
        assert box.finish(row.id, "robot", Decision(Status.SENT, None, None, "sent"))
    waiting = insert_many(db_url, 1)
    ancient = now_plus_sql(db_url, -40 * 86400)
    host_sql(db_url, f"UPDATE outbox SET updated_at = {ancient} WHERE id <= {old[-1]}")
    host_sql(db_url, f"UPDATE outbox SET updated_at = {ancient} WHERE id = {waiting[0]}")
    assert box.purge_finished(0) == 0  # 0 keeps everything
    assert box.purge_finished(30, chunk=3) == 7
    assert sorted(statuses(db_url)) == young + waiting  # pending rows are never purged
    orphans = host_sql(db_url, f"SELECT count(*) FROM outbox_event WHERE outbox_id <= {old[-1]}")
    assert orphans == [(0,)]


def test_oversize_body_and_attachments_are_not_loaded(db_url: str, engine: Engine) -> None:
    big = "x" * (3 * 1024 * 1024)
    host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('a@example.org', ?)", [big])
    host_sql(db_url, "INSERT INTO outbox (recipient, body_text) VALUES ('b@example.org', 'hi')")
    small_id = int(host_sql(db_url, "SELECT max(id) FROM outbox")[0][0])
    host_sql(
        db_url,
        "INSERT INTO outbox_attachment (outbox_id, filename, content) VALUES (?, 'a.bin', ?)",
        [small_id, b"\0" * (2 * 1024 * 1024)],
    )
    box = Outbox(
        engine,
        grace_seconds=0,
        lease_seconds=60,
        max_body_bytes=1024 * 1024,
        max_attachment_bytes=1024 * 1024,
    )
    rows = {r.recipient: r for r in box.claim("robot", 5, mid)}
    huge, small = rows["a@example.org"], rows["b@example.org"]
    assert huge.body_text is None and huge.body_bytes == len(big)
    assert small.body_text == "hi" and small.body_bytes == 2
    assert small.attachments == () and small.attachment_bytes == 2 * 1024 * 1024


def test_garbage_time_written_by_a_host_fails_the_row_on_sqlite(tmp_path: object) -> None:
    from pathlib import Path

    from robot.outbox.engine import make_engine, upgrade

    url = f"sqlite:///{Path(str(tmp_path)) / 'g.db'}"
    engine = make_engine(url)
    upgrade(engine)
    host_sql(
        url,
        "INSERT INTO outbox (recipient, body_text, send_after) VALUES ('a@example.org', 'x', 'soon')",
    )
    host_sql(url, "INSERT INTO outbox (recipient, body_text) VALUES ('b@example.org', 'x')")
    box = queue(engine)
    assert [r.recipient for r in box.claim("robot", 5, mid)] == ["b@example.org"]
    (failed,) = box.fail_unschedulable()
    assert host_sql(url, f"SELECT status FROM outbox WHERE id = {failed}") == [("failed",)]
    assert box.fail_unschedulable() == []
    engine.dispose()
