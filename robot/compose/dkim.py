"""DKIM signing (RFC 6376) of composed messages with dkimpy, per sender account."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import dkim

from robot.compose.message import Composed
from robot.config import SenderSettings
from robot.errors import ConfigError

# Signed when present. From must be; List-Unsubscribe(-Post) are signed so that a one-click
# unsubscribe cannot be forged onto the message (RFC 8058, section 4).
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
    b"mime-version", b"content-type", b"content-transfer-encoding",
    b"list-unsubscribe", b"list-unsubscribe-post",
)  # fmt: skip


@dataclass(frozen=True)
class DkimSigner:
    """A loaded private key and where its public half is published."""

    domain: str
    selector: str
    key: bytes

    def sign_composed(self, message: Composed) -> Composed:
        """The same message, signed."""
        return dataclasses.replace(message, data=self.sign(message.data))

    def sign(self, message: bytes) -> bytes:
        """`message` with a DKIM-Signature header in front."""
        present = {
            line.split(b":", 1)[0].strip().lower()
            for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line and not line[:1].isspace()
        }
        headers = [h for h in SIGNED_HEADERS if h in present]
        signature: bytes = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
        )
        return signature + message


def load_signer(sender: SenderSettings, account: str, path: str) -> DkimSigner | None:
    """The account's signer, or None when DKIM is not configured. Raises ConfigError
    naming the key when the settings are incomplete or the key cannot be used."""
    keys = {
        "dkim_domain": sender.dkim_domain,
        "dkim_selector": sender.dkim_selector,
        "dkim_key_file": sender.dkim_key_file,
    }
    if not any(keys.values()):
        return None
    section = "sender" if account == "default" else f"account:{account}"
    missing = [name for name, value in keys.items() if not value]
    if missing:
        raise ConfigError(
            f"{path}: [{section}] DKIM needs dkim_domain, dkim_selector and dkim_key_file",
            key=missing[0],
            path=path,
        )
    assert sender.dkim_domain and sender.dkim_selector and sender.dkim_key_file
    try:
        key = Path(sender.dkim_key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: [{section}] dkim_key_file {sender.dkim_key_file}: {exc.strerror}",
            key="dkim_key_file",
            path=path,
        ) from None
    signer = DkimSigner(sender.dkim_domain, sender.dkim_selector, key)
    try:
        signer.sign(b"From: a@example.org\r\nSubject: key check\r\n\r\nx\r\n")
    except dkim.DKIMException as exc:
        raise ConfigError(
            f"{path}: [{section}] dkim_key_file {sender.dkim_key_file}: not a usable key ({exc})",
            key="dkim_key_file",
            path=path,
        ) from None
    return signer
