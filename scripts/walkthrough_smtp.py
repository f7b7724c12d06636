"""The SMTP server of scripts/walkthrough.sh: on 127.0.0.1 at a free port, it offers AUTH in
clear (the robot sends a password in clear only to loopback), accepts every login and every
message, stores each message in a Maildir and writes every login it saw to a file, so that
the walk-through can check the robot logged in with the password the README installed.

Usage: python scripts/walkthrough_smtp.py MAILDIR PORT_FILE LOGINS_FILE  (runs until killed)
"""

from __future__ import annotations

import asyncio
import mailbox
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class Capture:
    """Stores each message; records each login as 'user password' lines."""

    def __init__(self, maildir: Path, logins: Path) -> None:
        self.maildir = mailbox.Maildir(maildir, create=True)
        self.logins = logins

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            with self.logins.open("a") as out:
                out.write(f"{data.login.decode()} {data.password.decode()}\n")
        return AuthResult(success=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.maildir.add(envelope.original_content or b"")
        return "250 2.0.0 stored"


async def serve(maildir: Path, port_file: Path, logins: Path) -> None:
    capture = Capture(maildir, logins)
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(capture, authenticator=capture.authenticate, auth_require_tls=False)

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port_file.write_text(f"{server.sockets[0].getsockname()[1]}\n")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
