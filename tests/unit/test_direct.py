"""The pure parts of direct delivery: grouping by domain, MX order, null MX, and the robot.ini
keys. What its refusals mean for the row is robot.outcome's: tests/unit/test_judge.py."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from robot.config import load_settings
from robot.errors import ConfigError
from robot.send.direct import (
    address_literal,
    group_by_domain,
    is_null_mx,
    order_mx,
)


def test_recipients_are_grouped_by_lower_cased_domain_in_first_seen_order() -> None:
    groups = group_by_domain(
        ["ann@alpha.test", "bob@Beta.TEST", "Carl@ALPHA.test", "dora@beta.test", "eve@x.test"]
    )
    assert list(groups) == ["alpha.test", "beta.test", "x.test"]
    assert groups["alpha.test"] == ("ann@alpha.test", "Carl@ALPHA.test")  # kept as given
    assert groups["beta.test"] == ("bob@Beta.TEST", "dora@beta.test")


def test_a_quoted_local_part_with_an_at_sign_groups_by_the_last_at() -> None:
    assert group_by_domain(['"a@b"@gamma.test']) == {"gamma.test": ('"a@b"@gamma.test',)}


def test_mx_hosts_come_in_preference_order_lowest_first() -> None:
    records = [(30, "mx3.example.test."), (10, "MX1.example.test."), (20, "mx2.example.test")]
    assert order_mx(records) == ["mx1.example.test", "mx2.example.test", "mx3.example.test"]


def test_equal_preferences_are_shuffled_but_never_jump_ahead() -> None:
    records = [(20, "c.test."), (10, "a.test."), (10, "b.test."), (30, "d.test.")]
    seen = set()
    for seed in range(50):
        hosts = order_mx(records, random.Random(seed))
        assert set(hosts[:2]) == {"a.test", "b.test"}
        assert hosts[2:] == ["c.test", "d.test"]
        seen.add(tuple(hosts[:2]))
    assert seen == {("a.test", "b.test"), ("b.test", "a.test")}  # both orders occur


def test_a_host_listed_twice_is_tried_once_at_its_best_preference() -> None:
    assert order_mx([(20, "a.test."), (10, "A.test."), (15, "b.test.")]) == ["a.test", "b.test"]


def test_null_mx() -> None:
    assert is_null_mx([(0, ".")])
    assert not is_null_mx([])  # no MX at all: the A/AAAA record is the mail host
    assert not is_null_mx([(0, "."), (10, "mx.example.test.")])  # broken, but a host to try
    assert order_mx([(0, "."), (10, "mx.example.test.")]) == ["mx.example.test"]


def test_address_literals() -> None:
    assert address_literal("[192.0.2.1]") == "192.0.2.1"
    assert address_literal("[IPv6:2001:db8::1]") == "2001:db8::1"
    assert address_literal("[not-an-ip]") is None
    assert address_literal("example.test") is None


INI = "[database]\nurl = sqlite:///x.db\n[sender]\naddress = robot@example.org\n[smtp]\n"


def test_direct_keys_are_read_per_account(tmp_path: Path) -> None:
    path = tmp_path / "robot.ini"
    path.write_text(
        INI + "direct = true\ndns_servers = 192.0.2.53, 2001:db8::53\ndns_port = 5353\n"
        "[account:news]\naddress = news@example.org\ndirect = false\n"
    )
    settings = load_settings(path, environ={})
    smtp = settings.default_account.smtp
    assert (smtp.direct, smtp.dns_servers, smtp.dns_port, smtp.direct_port) == (
        True,
        "192.0.2.53, 2001:db8::53",
        5353,
        25,
    )
    assert settings.accounts["news"].smtp.direct is False


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("dns_servers = 192.0.2.53, ns.example.org", "dns_servers"),
        ("dns_port = 0", "dns_port"),
        ("direct_port = 70000", "direct_port"),
    ],
)
def test_bad_direct_keys_are_refused(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "robot.ini"
    path.write_text(INI + "direct = true\n" + line + "\n")
    with pytest.raises(ConfigError, match=key):
        load_settings(path, environ={})
