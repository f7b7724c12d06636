"""Throwaway PostgreSQL cluster for tests, built with the locally installed server binaries.

As root the cluster runs as the ``postgres`` system user (initdb/postgres refuse to run as root).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

__all__ = ["PgCluster", "find_bindir"]

_SUPERUSER = "postgres"
_SYSTEM_USER = "postgres"


def find_bindir() -> Path:
    """Return the newest PostgreSQL server bin dir (one holding initdb and pg_ctl)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.CalledProcessError):
            pass

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        candidates.append(Path(path))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; looked in: "
        + ", ".join(str(c) for c in candidates)
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    """A private PostgreSQL server on 127.0.0.1:<free port>, superuser ``postgres``, trust auth.

    fsync, synchronous_commit and full_page_writes are off unless `durable` (the benchmark's
    durable cluster keeps PostgreSQL's defaults)."""

    def __init__(self, base_dir: Path | None = None, *, durable: bool = False) -> None:
        self.durable = durable  # the distribution's defaults: fsync, synchronous_commit on
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        parent = base_dir if base_dir is not None else (Path("/tmp") if self.as_root else None)
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self.base_dir = Path(tempfile.mkdtemp(prefix="robot-pg-", dir=parent))
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        self.port = 0
        self.running = False
        self._initialized = False
        if self.as_root:
            pw = pwd.getpwnam(_SYSTEM_USER)
            self.base_dir.chmod(0o700)
            os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)

    # -- process helpers -------------------------------------------------------------------

    def _command(self, args: list[str]) -> list[str]:
        if not self.as_root:
            return args
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", _SYSTEM_USER, "--", *args]
        return ["su", "-s", "/bin/sh", _SYSTEM_USER, "-c", shlex.join(args)]

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = self._command([str(self.bindir / tool), *args])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(
            cmd, cwd=self.base_dir, env=env, capture_output=True, text=True, timeout=timeout
        )

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str, proc: subprocess.CompletedProcess[str] | None) -> RuntimeError:
        parts = [f"PostgreSQL: {what} failed"]
        if proc is not None:
            parts.append(f"command: {shlex.join(proc.args)} (exit {proc.returncode})")
            parts.append(f"output:\n{proc.stdout}{proc.stderr}".rstrip())
        parts.append(f"server log tail ({self.log_path}):\n{self._log_tail()}")
        return RuntimeError("\n".join(parts))

    # -- lifecycle -------------------------------------------------------------------------

    def _initdb(self) -> None:
        proc = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            _SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if proc.returncode != 0:
            raise self._fail("initdb", proc)
        self._initialized = True

    def _configure(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data_dir}'",
            "max_connections": "200",
            "log_min_messages": "warning",
        }
        if not self.durable:  # a throwaway cluster need not survive a crash
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        with conf.open("a") as f:  # appended settings win over earlier ones
            f.write("\n# email-robot test cluster\n")
            for key, value in settings.items():
                f.write(f"{key} = {value}\n")

    def _pg_ctl(self, action: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            *extra,
            action,
        )

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self._dsn("postgres"), connect_timeout=2) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise self._fail(f"waiting for the server to accept connections ({last})", None)

    def start(self) -> None:
        """initdb (first time) and start the server; block until it accepts connections."""
        if self.running:
            return
        if not self._initialized:
            self._initdb()
        for attempt in range(3):
            self.port = _free_port()
            self._configure()
            proc = self._pg_ctl("start")
            if proc.returncode == 0:
                break
            port_taken = "could not bind" in self._log_tail(10).lower()
            if not port_taken or attempt == 2:
                raise self._fail("pg_ctl start", proc)
        self.running = True
        atexit.register(self._stop_at_exit)
        self._wait_ready()

    def _stop_at_exit(self) -> None:
        # Safety net for a test session that dies without calling stop().
        if self.running:
            self.stop()

    def restart(self) -> None:
        """Restart the server (fast shutdown, same port) and wait until it is ready."""
        proc = self._pg_ctl("restart", "-m", "fast")
        if proc.returncode != 0:
            raise self._fail("pg_ctl restart", proc)
        self.running = True
        self._wait_ready()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the cluster directory."""
        proc = None
        try:
            if self.running:
                proc = self._pg_ctl("stop", "-m", "fast")
                self.running = proc.returncode != 0
                if self.running:
                    raise self._fail("pg_ctl stop", proc)
        finally:
            if not self.running:
                atexit.unregister(self._stop_at_exit)
                shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------

    def _dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={_SUPERUSER} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL for ``dbname`` on this cluster."""
        return f"postgresql+psycopg://{_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (optionally from ``template``) and return its URL."""
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(stmt)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        stmt = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(stmt)
