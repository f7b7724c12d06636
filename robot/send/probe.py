"""`check` and `test`: talk to an account's server now, outside the queue."""

from __future__ import annotations

import secrets
import socket
from datetime import UTC, datetime

from robot.compose.dkim import load_signer
from robot.compose.message import compose
from robot.config import Account, Settings
from robot.errors import PermanentDeliveryError, TransientDeliveryError
from robot.outbox.rows import OutboxRow
from robot.outcome.replies import Outcome, Stage
from robot.send.direct import DirectResult
from robot.send.direct import deliver as deliver_direct
from robot.send.relay import SendResult, SmtpConnection


async def check_account(account: Account) -> str:
    """Connect, EHLO, STARTTLS/TLS and AUTH, then QUIT. Returns the greeting.

    Raises TransportFault with the reason when any step fails.
    """
    connection = SmtpConnection(account)
    greeting = await connection.open()
    await connection.close()
    return greeting


async def send_test(settings: Settings, account: Account, to: str) -> SendResult:
    """Send one test message to `to` now; writes no outbox row.

    Raises BadRowError for a bad address, TransportFault or DeliveryError when refused.
    """
    now = datetime.now(UTC)
    domain = account.sender.address.rpartition("@")[2] or socket.getfqdn()
    row = OutboxRow(
        id=0,
        created_at=now,
        send_after=None,
        status="sending",
        priority=0,
        account=account.name,
        sender=None,
        sender_name=None,
        reply_to=None,
        recipient=to,
        cc=None,
        bcc=None,
        subject=f"email-robot test message from account {account.name}",
        body_text=(
            f"This is a test message sent by email-robot at {now:%Y-%m-%d %H:%M:%S} UTC\n"
            f"through {account.smtp.host}:{account.port} ({account.smtp.security}), "
            f"account {account.name}.\n"
        ),
        body_html=None,
        headers=None,
        context=None,
        batch=None,
        transactional=True,
        attempts=1,
        next_attempt_at=None,
        claimed_by=None,
        claimed_until=None,
        message_id=f"<test.{secrets.token_hex(8)}@{domain}>",
        smtp_code=None,
        smtp_reply=None,
        last_error=None,
        sent_at=None,
        updated_at=None,
    )
    message = compose(row, account, now=now, attachments=settings.attachments)
    signer = load_signer(account.sender, account.name, settings.path)
    if signer is not None:
        message = signer.sign_composed(message)
    if account.smtp.direct:
        return _direct_reply(await deliver_direct(account, message))
    connection = SmtpConnection(account)
    await connection.open()
    try:
        return await connection.send(message)
    finally:
        await connection.close()


def _direct_reply(result: DirectResult) -> SendResult:
    """A direct delivery as `test` reports it: the accepting host's reply, or the refusal."""
    first = result.first_accepted
    if first is not None:
        refused = {r.recipient: (r.code or 0, r.reply) for r in result.refusals}
        return SendResult(first.code or 250, f"{first.reply} ({first.host})", refused)
    refusal = result.decisive()
    error = (
        TransientDeliveryError if refusal.outcome is Outcome.DEFERRED else (PermanentDeliveryError)
    )
    raise error(
        refusal.detail,
        code=refusal.code,
        reply=refusal.reply,
        recipient=refusal.recipient,
        stage=refusal.stage or Stage.CONNECT,
    )
