"""What the daemon reads from robot.ini, built once per load: SIGHUP swaps it whole."""

from __future__ import annotations

from dataclasses import dataclass

from robot.compose.dkim import DkimSigner, load_signer
from robot.config import Settings
from robot.daemon.throttle import TokenBucket
from robot.outbox.message_ids import AccountDomain, MessageIds
from robot.outcome.retry import RetryPolicy


@dataclass(frozen=True)
class Setup:
    """The settings and what is made from them: the retry policy, the robot's and each
    account's rate limit, the DKIM signers and the Message-ID maker."""

    settings: Settings
    retry: RetryPolicy
    bucket: TokenBucket
    account_buckets: dict[str, TokenBucket]
    signers: dict[str, DkimSigner]
    message_ids: MessageIds

    @classmethod
    def of(cls, settings: Settings) -> Setup:
        """Build from `settings`. Raises ConfigError for a DKIM key that cannot be used."""
        return cls(
            settings=settings,
            retry=RetryPolicy(settings.robot.retry_minutes, settings.robot.max_errors),
            bucket=TokenBucket(settings.robot.rate),
            account_buckets={
                name: TokenBucket(account.smtp.rate)
                for name, account in settings.accounts.items()
                if account.smtp.rate > 0
            },
            signers=_signers(settings),
            message_ids=_message_ids(settings),
        )


def _signers(settings: Settings) -> dict[str, DkimSigner]:
    """The DKIM signer of each account that has one. Raises ConfigError."""
    found = {}
    for name, account in settings.accounts.items():
        signer = load_signer(account.sender, name, settings.path)
        if signer is not None:
            found[name] = signer
    return found


def _message_ids(settings: Settings) -> MessageIds:
    """The Message-ID maker for the accounts of `settings`."""
    accounts = {
        name: AccountDomain(account.sender.address, account.helo_name)
        for name, account in settings.accounts.items()
    }
    default = settings.default_account
    return MessageIds(accounts, AccountDomain(default.sender.address, default.helo_name))
