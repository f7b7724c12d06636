"""`check` and `test`: talk to an account's server now, outside the queue."""

from __future__ import annotations

import secrets
import socket
from datetime import UTC, datetime

from robot.compose.dkim import load_signer
from robot.compose.message import compose
from robot.config import Account, Settings
from robot.logs import get_logger
from robot.outbox.rows import OutboxRow
from robot.send.attempt import Attempt
from robot.send.direct import deliver as deliver_direct
from robot.send.relay import Relay, SmtpConnection


async def check_account(account: Account) -> str:
    """Connect, EHLO, STARTTLS/TLS and AUTH, then QUIT. Returns the greeting.

    Raises TransportFault with the reason when any step fails.
    """
    connection = SmtpConnection(account)
    greeting = await connection.open()
    await connection.close()
    return greeting


async def send_test(settings: Settings, account: Account, to: str) -> Attempt:
    """Send one test message to `to` now, through the account's relay or directly to the
    recipient's mail host; writes no outbox row. Returns what the server said. Raises
    BadRowError for a bad address."""
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
        return await deliver_direct(account, message, get_logger("robot.test"))
    relay = Relay()
    try:
        return await relay.send(account, message)
    finally:
        await relay.close()
