"""The safer forms an outcome is recorded in when the database refuses it as it is."""

from __future__ import annotations

from robot.outbox.rows import Decision, Finish, HistoryLine, recordable_forms, sanitised_text
from robot.outbox.schema import Status

BOUNCED = Decision(Status.BOUNCED, None, "550 no\x00 such user", "bounced")


def test_control_characters_go_tabs_and_line_breaks_stay() -> None:
    assert sanitised_text("a\tb\nc\x00d\x1be\x7ff\r") == "a\tb\ncdef"
    assert sanitised_text("Gr\udcfc\udcdfe") == "Gr\ufffd\ufffde"  # bytes that were not UTF-8
    assert sanitised_text("é ü 漢字 ✓") == "é ü 漢字 ✓"
    assert sanitised_text(None) is None
    assert sanitised_text("x" * 50, 10) == "x" * 10


def test_the_forms_of_an_outcome() -> None:
    outcome = Finish(
        7,
        BOUNCED,
        550,
        "5.1.1 no\x00 such user" + "x" * 2000,
        detail="\x07detail",
        suppress=(("gone@example.org", "bounced: no\x00 such user"),),
        history=(HistoryLine("refused", "cc: 550\x00", 550),),
    )
    own, sanitised, bare = recordable_forms(outcome)
    assert own == outcome
    assert sanitised.decision.last_error == "550 no such user"
    assert sanitised.decision.status is Status.BOUNCED and sanitised.decision.event == "bounced"
    assert sanitised.smtp_reply == "5.1.1 no such user" + "x" * 2000
    assert sanitised.detail == "detail"
    assert sanitised.suppress == (("gone@example.org", "bounced: no such user"),)
    assert sanitised.history == (HistoryLine("refused", "cc: 550", 550),)
    assert bare.smtp_reply is not None and len(bare.smtp_reply) == 1000
    assert (bare.suppress, bare.history, bare.smtp_code) == ((), (), 550)
    assert bare.decision.last_error == "550 no such user"
