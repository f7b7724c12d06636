"""Throwaway MariaDB server for tests, built with the locally installed server binaries
(Debian's `mariadb-server`: mariadb-install-db and mariadbd).

The data directory is a temporary directory; the server listens on 127.0.0.1 on a free port
and on a private socket in that directory, never on the system's. As root it runs as the
``mysql`` system user (mariadbd refuses root unless told otherwise), else as the current user.
"""

from __future__ import annotations

import atexit
import gc
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import pymysql

__all__ = ["MariaDbServer", "find_server"]

_SYSTEM_USER = "mysql"
_TOOLS = ("mariadb-install-db", "mysql_install_db")
_SERVERS = ("mariadbd", "mysqld")


def find_server() -> tuple[Path, Path]:
    """The install tool and the server binary (mariadb-install-db, mariadbd)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    tool = next(
        (shutil.which(t, path=search) for t in _TOOLS if shutil.which(t, path=search)), None
    )
    server = next(
        (shutil.which(s, path=search) for s in _SERVERS if shutil.which(s, path=search)), None
    )
    if tool is None or server is None:
        raise RuntimeError(
            "MariaDB server binaries (mariadb-install-db, mariadbd) not found: "
            "run scripts/ensure-mariadb.sh (Debian's mariadb-server)"
        )
    return Path(tool), Path(server)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MariaDbServer:
    """A private MariaDB server on 127.0.0.1:<free port>, user ``root`` without a password
    (over TCP from 127.0.0.1 only), data in a temporary directory."""

    def __init__(self) -> None:
        self.tool, self.server = find_server()
        self.as_root = os.geteuid() == 0
        parent = Path("/tmp") if self.as_root else None
        self.base_dir = Path(tempfile.mkdtemp(prefix="robot-mariadb-", dir=parent))
        self.data_dir = self.base_dir / "data"
        self.socket = self.base_dir / "mariadb.sock"
        self.log_path = self.base_dir / "mariadb.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._installed = False
        self.user = _SYSTEM_USER if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        if self.as_root:
            pw = pwd.getpwnam(_SYSTEM_USER)
            self.base_dir.chmod(0o700)
            os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)

    def _options(self) -> list[str]:
        """Server options: private paths, and speed over durability (a test server)."""
        return [
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--socket={self.socket}",
            f"--pid-file={self.base_dir / 'mariadb.pid'}",
            f"--log-error={self.log_path}",
            f"--user={self.user}",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=256M",
            "--sync-binlog=0",
            "--max-connections=300",
            "--max-allowed-packet=256M",
            "--skip-log-bin",
        ]

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str, detail: str = "") -> RuntimeError:
        parts = [f"MariaDB: {what} failed"]
        if detail:
            parts.append(detail)
        parts.append(f"server log tail ({self.log_path}):\n{self._log_tail()}")
        return RuntimeError("\n".join(parts))

    # -- lifecycle -------------------------------------------------------------------------

    def _install(self) -> None:
        proc = subprocess.run(
            [
                str(self.tool),
                "--no-defaults",
                f"--datadir={self.data_dir}",
                f"--user={self.user}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if proc.returncode != 0:
            raise self._fail(
                "mariadb-install-db", f"exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        self._installed = True

    def start(self) -> None:
        """Install the data directory (first time) and start the server; block until it
        accepts connections."""
        if self.process is not None:
            return
        if not self._installed:
            self._install()
        for attempt in range(3):
            self.port = _free_port()
            self.process = subprocess.Popen(
                [str(self.server), *self._options()],
                cwd=self.base_dir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                self._wait_ready()
                break
            except RuntimeError:
                self._kill()
                if "bind" not in self._log_tail(10).lower() or attempt == 2:
                    raise
        atexit.register(self._stop_at_exit)
        self._grant_root_over_tcp()

    def _grant_root_over_tcp(self) -> None:
        with self._admin() as conn, conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
            cur.execute("GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")

    def _admin(self) -> pymysql.Connection[pymysql.cursors.Cursor]:
        """A root connection over the private socket."""
        return pymysql.connect(
            unix_socket=str(self.socket), user="root", autocommit=True, connect_timeout=2
        )

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise self._fail(f"mariadbd exited with {self.process.returncode}")
            try:
                with self._admin() as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return
            except pymysql.Error as exc:
                last = str(exc)  # not exc: its traceback holds the failed connection
            # PyMySQL leaves the socket of a failed connect to the garbage collector.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
            time.sleep(0.1)
        raise self._fail(f"waiting for the server to accept connections ({last})")

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None

    def down(self) -> None:
        """Stop the server (SIGTERM, a normal shutdown: open sessions are cut); keep the data."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self._kill()
            raise self._fail("stopping the server") from None
        self.process = None

    def up(self) -> None:
        """Start the server again on the same port and data directory; wait until it answers."""
        if self.process is not None:
            return
        self.process = subprocess.Popen(
            [str(self.server), *self._options()],
            cwd=self.base_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ready()

    def _stop_at_exit(self) -> None:
        # Safety net for a test session that dies without calling stop().
        if self.process is not None:
            self.stop()

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.down()
        finally:
            if self.process is None:
                atexit.unregister(self._stop_at_exit)
                shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------

    def url(self, name: str) -> str:
        """The robot's URL for database `name` on this server (as robot.config writes it)."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{name}?charset=utf8mb4"

    def execute(self, *statements: str) -> None:
        """Run statements as root, in autocommit mode."""
        with self._admin() as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def create_database(self, name: str) -> str:
        """Create database `name` (utf8mb4) and return its URL."""
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        return self.url(name)

    def template(self, name: str) -> list[str]:
        """The statements that create database `name`'s tables and rows of alembic_version
        again in another database: parents before children (their foreign keys)."""
        with self._admin() as conn, conn.cursor() as cur:
            cur.execute(f"USE `{name}`")
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (name,),
            )
            tables = [str(row[0]) for row in cur.fetchall()]
            cur.execute(
                "SELECT table_name, referenced_table_name FROM "
                "information_schema.referential_constraints WHERE constraint_schema = %s",
                (name,),
            )
            parents: dict[str, set[str]] = {t: set() for t in tables}
            for child, parent in cur.fetchall():
                parents[str(child)].add(str(parent))
            ordered: list[str] = []
            while len(ordered) < len(tables):
                ordered += sorted(
                    t for t in tables if t not in ordered and parents[t] <= set(ordered)
                )
            statements = []
            for table in ordered:
                cur.execute(f"SHOW CREATE TABLE `{table}`")
                statements.append(str(cur.fetchone()[1]))  # type: ignore[index]
            cur.execute("SELECT version_num FROM alembic_version")
            statements += [
                f"INSERT INTO alembic_version VALUES ('{row[0]}')" for row in cur.fetchall()
            ]
        return statements

    def create_from(self, name: str, template: list[str]) -> str:
        """Create database `name` with the statements of `template` (MariaDB cannot copy a
        database); its URL."""
        self.execute(
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            f"USE `{name}`",
            *template,
        )
        return self.url(name)

    def empty(self, name: str, version: str) -> bool:
        """Empty every table of database `name` (ids start at 1 again) and say whether it is
        as a fresh copy would be: schema at Alembic `version`. False when it cannot be
        emptied in 10 s (a session of a test still holds a table) or its revision changed:
        then it is no use again."""
        try:
            with self._admin() as conn, conn.cursor() as cur:
                cur.execute(f"USE `{name}`")
                cur.execute("SET SESSION lock_wait_timeout = 10, foreign_key_checks = 0")
                cur.execute("SELECT version_num FROM alembic_version")
                if [row[0] for row in cur.fetchall()] != [version]:
                    return False
                cur.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = %s AND table_name != 'alembic_version'",
                    (name,),
                )
                for (table,) in cur.fetchall():
                    cur.execute(f"TRUNCATE TABLE `{table}`")
        except pymysql.Error:
            return False
        return True

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists."""
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")
