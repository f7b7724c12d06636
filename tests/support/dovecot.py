"""A private Dovecot IMAP server for tests, run from the installed binary with its own config.

Everything lives in a temporary directory: dovecot.conf, the passwd-file of users, their
Maildirs, the TLS certificate, the sockets (base_dir) and the log. The system's /etc/dovecot
and its service are never touched. Started as root, Dovecot's master starts its login and
mail processes as other users and the mail users' files belong to `nobody`; started as any
other user, every process and file is that user's (Dovecot's documented way to run without
root: its internal and login users are the current user, and no process chroots).
"""

from __future__ import annotations

import atexit
import grp
import imaplib
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import trustme

__all__ = ["DovecotServer"]

DOVECOT = "/usr/sbin/dovecot"
MAIL_USER = "nobody"
USERS = 100

CONFIG = """\
# email-robot test server: nothing from /etc/dovecot is read.
instance_name = {instance}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{base}/cert.pem
ssl_key = <{base}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
# No waiting after a wrong password, and no growing penalty for 127.0.0.1, where every test
# logs in (Dovecot's documented way to turn the anvil penalty off).
auth_failure_delay = 0
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {base}/users
}}
userdb {{
  driver = passwd-file
  args = {base}/users
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
{rootless}service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
"""

# Without root Dovecot cannot change users or chroot: everything runs as the current user.
ROOTLESS = """\
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DovecotServer:
    """Dovecot on 127.0.0.1: `imap_port` (STARTTLS) and `imaps_port` (TLS), passwd-file users."""

    def __init__(self, ca: trustme.CA) -> None:
        if not os.path.exists(DOVECOT):
            raise RuntimeError(
                f"Dovecot is not installed ({DOVECOT} missing): run scripts/ensure-dovecot.sh"
            )
        self.as_root = os.geteuid() == 0
        self.ca = ca
        self.base = Path(tempfile.mkdtemp(prefix="robot-dovecot-", dir="/tmp"))
        self.base.chmod(0o755)  # the mail processes (as nobody) walk through it to the homes
        self.homes = self.base / "home"
        self.homes.mkdir()
        if self.as_root:
            mail_user = pwd.getpwnam(MAIL_USER)
            self.uid, self.gid = mail_user.pw_uid, mail_user.pw_gid
            os.chown(self.homes, self.uid, self.gid)
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        (self.base / "state").mkdir()
        # Every user is written before the start: Dovecot re-reads a changed passwd-file at
        # most once a second, too late for a user added during a test.
        self._users = [(f"u{n:03d}", secrets.token_urlsafe(12)) for n in range(USERS)]
        home = self.homes
        (self.base / "users").write_text(
            "".join(
                f"{name}:{{PLAIN}}{password}:{self.uid}:{self.gid}::{home / name}::\n"
                for name, password in self._users
            )
        )
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(self.base / "key.pem"))
        (self.base / "key.pem").chmod(0o600)
        with (self.base / "cert.pem").open("wb") as handle:
            for blob in cert.cert_chain_pems:
                handle.write(blob.bytes())
        self.ca_file = self.base / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.imap_port = 0
        self.imaps_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.base / "dovecot.log"

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Write the config and start `dovecot -F -c CONFIG`; block until it greets."""
        for attempt in range(3):
            self.imap_port, self.imaps_port = _free_port(), _free_port()
            conf = self.base / "dovecot.conf"
            conf.write_text(
                CONFIG.format(
                    instance=f"robot-test-{self.base.name}",
                    base=self.base,
                    imap_port=self.imap_port,
                    imaps_port=self.imaps_port,
                    rootless="" if self.as_root else self._rootless_settings(),
                )
            )
            with (self.base / "stderr.log").open("wb") as stderr:
                self.proc = subprocess.Popen(
                    [DOVECOT, "-F", "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            atexit.register(self._stop_at_exit)
            if self._wait_ready():
                return
            self._terminate()
            taken = "address already in use" in self._log_tail().lower()
            if not taken or attempt == 2:
                output = (self.base / "stderr.log").read_text(errors="replace")
                raise RuntimeError(
                    f"Dovecot did not start (config {conf}):\n{output}\n{self._log_tail()}"
                )

    def _rootless_settings(self) -> str:
        return ROOTLESS.format(
            user=pwd.getpwuid(self.uid).pw_name, group=grp.getgrgid(self.gid).gr_name
        )

    def _wait_ready(self, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.imap_port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()  # the master stops its children and exits
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _stop_at_exit(self) -> None:
        if self.proc is not None:
            self.stop()

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        self._terminate()
        atexit.unregister(self._stop_at_exit)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- users and mail ----------------------------------------------------------------------

    def add_user(self) -> tuple[str, str]:
        """A mail user no test has used yet, with an empty INBOX: (user name, password)."""
        if not self._users:
            raise RuntimeError(f"the Dovecot test server has only {USERS} users: raise USERS")
        return self._users.pop(0)

    def client(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        """A logged-in IMAPS connection of the test itself (to APPEND and inspect)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=context, timeout=10)
        try:
            conn.login(user, password)
        except imaplib.IMAP4.error:
            conn.shutdown()
            raise
        return conn

    def append(self, user: str, password: str, message: bytes, folder: str = "INBOX") -> None:
        """Deliver `message` into `folder` as new (unseen) mail."""
        conn = self.client(user, password)
        try:
            typ, data = conn.append(
                folder, None, None, message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            )
            if typ != "OK":
                raise RuntimeError(f"APPEND failed: {data}")
        finally:
            conn.logout()

    def flags(self, user: str, password: str, folder: str = "INBOX") -> list[set[str]] | None:
        """The flags (but \\Recent) of every message in `folder`, oldest first; None if there
        is no such folder."""
        conn = self.client(user, password)
        try:
            typ, count = conn.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return None
            if count and count[0] == b"0":
                return []
            typ, data = conn.fetch("1:*", "(FLAGS)")
            found: list[set[str]] = []
            for item in data:
                if isinstance(item, bytes) and b"FLAGS (" in item:
                    inner = item.split(b"FLAGS (", 1)[1].split(b")", 1)[0]
                    found.append(set(inner.decode().split()) - {"\\Recent"})
            return found
        finally:
            conn.logout()
