"""Postfix's smtp-sink on loopback: the benchmark's receiving server.

`scripts/ensure-smtp-sink.sh` installs the Debian package `postfix` noninteractively when
smtp-sink is missing and leaves the Postfix MTA stopped and disabled. smtp-sink accepts any
number of messages per connection, with PIPELINING (not announced with `-p`:
`pipelining=False`), and throws them away; with a dump file (`-D FILE`, a name without
strftime escapes) it appends every transaction to that one file, which is how the two-robot
run counts Message-IDs.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENSURE = ROOT / "scripts" / "ensure-smtp-sink.sh"
BACKLOG = 1024  # listen(2) backlog, smtp-sink's last argument
UNPRIVILEGED = "nobody"  # smtp-sink refuses to run as root without -u
MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def ensure_installed() -> str:
    """Install smtp-sink if needed (root only); return its path."""
    subprocess.run([str(ENSURE)], check=True)
    path = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(path).is_file():
        raise RuntimeError("smtp-sink is not installed (run scripts/ensure-smtp-sink.sh as root)")
    return path


def postfix_version() -> str:
    """`mail_version` of the installed Postfix, or '?'."""
    try:
        out = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SmtpSink:
    """One smtp-sink process on 127.0.0.1:<free port>, optionally dumping to a file."""

    def __init__(self, binary: str, dump: Path | None = None, *, pipelining: bool = True) -> None:
        self.binary = binary
        self.dump = dump
        self.pipelining = pipelining  # False: -p, PIPELINING is not announced
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The smtp-sink command line."""
        cmd = [self.binary]
        if os.geteuid() == 0:
            cmd += ["-u", UNPRIVILEGED]
        if self.dump is not None:
            cmd += ["-D", str(self.dump)]
        if not self.pipelining:
            cmd.append("-p")
        return [*cmd, f"127.0.0.1:{self.port}", str(BACKLOG)]

    def start(self) -> SmtpSink:
        """Start it and wait until it greets."""
        if self.dump is not None:
            self.dump.parent.mkdir(parents=True, exist_ok=True)
            self.dump.unlink(missing_ok=True)
            if os.geteuid() == 0:  # the dump is written after dropping privileges
                pw = pwd.getpwnam(UNPRIVILEGED)
                os.chown(self.dump.parent, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"smtp-sink exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"smtp-sink did not start on port {self.port}")

    def stop(self) -> None:
        """Terminate it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def message_ids(self) -> Counter[str]:
        """How many times each Message-ID reached the dump file (dumping sinks only)."""
        if self.dump is None or not self.dump.exists():
            return Counter()
        return Counter(m.decode() for m in MESSAGE_ID.findall(self.dump.read_bytes()))

    def transactions(self) -> int:
        """How many mail transactions the dump file holds (smtp-sink heads each one with
        X-Client-Addr)."""
        if self.dump is None or not self.dump.exists():
            return 0
        data = self.dump.read_bytes()
        return data.count(b"\nX-Client-Addr: ") + data.startswith(b"X-Client-Addr: ")
