"""Message-IDs: the row's id, 16 random hex digits and a domain that can stand in one."""

from __future__ import annotations

import re

from robot.outbox import message_ids
from robot.outbox.message_ids import AccountDomain, MessageIds

IDS = MessageIds(
    accounts={
        "default": AccountDomain("Shop <news@shop.example>", "mail.shop.example"),
        "odd": AccountDomain("news@[192.0.2.1]", "helo.example"),
    }
)


def test_the_domain_of_the_rows_sender_then_the_accounts() -> None:
    assert re.fullmatch(r"<42\.[0-9a-f]{16}@own\.example>", IDS.for_row(42, None, "a@own.example"))
    assert re.fullmatch(r"<7\.[0-9a-f]{16}@shop\.example>", IDS.for_row(7, None, None))


def test_a_domain_that_is_no_host_name_gives_way_to_helo_then_none() -> None:
    assert IDS.for_row(1, "odd", None).endswith("@helo.example>")
    bare = MessageIds(accounts={"default": AccountDomain("x@[::1]", "not a name")})
    assert bare.for_row(1, None, None).endswith("@email-robot.invalid>")


def test_each_id_is_new() -> None:
    assert len({IDS.for_row(1, None, None) for _ in range(1000)}) == 1000


def test_an_overlong_sender_is_not_kept_in_the_cache() -> None:
    message_ids._cached_domain.cache_clear()
    huge = "x" * 100_000 + "@huge.example"
    assert IDS.for_row(3, None, huge).endswith("@huge.example>")
    assert message_ids._cached_domain.cache_info().currsize == 0
    IDS.for_row(3, None, "a@own.example")
    assert message_ids._cached_domain.cache_info().currsize == 1
