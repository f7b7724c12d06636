"""The Message-ID a row gets when it is first claimed, and keeps through every retry.

`<id.random@domain>`: the row's id, 16 random hex digits, and the domain of the row's From
address (its own sender, else its account's); a domain that is not a plain host name gives
way to the account's HELO name, then to `email-robot.invalid`. Pure.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DOMAIN = re.compile(r"^[A-Za-z0-9.-]+$")
NO_DOMAIN = "email-robot.invalid"


@dataclass(frozen=True)
class AccountDomain:
    """What an account contributes to a Message-ID: its From address and HELO name."""

    sender: str
    helo_name: str


@dataclass(frozen=True)
class MessageIds:
    """The Message-ID maker of one robot: each account's From address and HELO name, and
    the account that rows of an unknown account fall back to."""

    accounts: Mapping[str, AccountDomain] = field(default_factory=dict)
    fallback: AccountDomain = AccountDomain("", NO_DOMAIN)

    def for_row(self, row_id: int, account: str | None, sender: str | None) -> str:
        """A new Message-ID for row `row_id` of `account` whose own sender is `sender`."""
        known = self.accounts.get(account or "default", self.fallback)
        domain = _domain(sender or known.sender, known.helo_name)
        return f"<{row_id}.{os.urandom(8).hex()}@{domain}>"


CACHED_SENDER = 320  # characters: an address (254 at most) with room for a name


def _domain(sender: str, helo_name: str) -> str:
    """The domain of `sender` when it is a plain host name, else `helo_name`'s, else none;
    worked out once per address, not once per row (a host's overlong value is not kept)."""
    if len(sender) > CACHED_SENDER:
        return _domain_of(sender, helo_name)
    return _cached_domain(sender, helo_name)


def _domain_of(sender: str, helo_name: str) -> str:
    domain = sender.rpartition("@")[2].strip().rstrip(">")
    if not DOMAIN.match(domain):
        domain = helo_name if DOMAIN.match(helo_name) else NO_DOMAIN
    return domain


_cached_domain = functools.lru_cache(maxsize=256)(_domain_of)
