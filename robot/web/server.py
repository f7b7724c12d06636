"""`email-robot web`: the console served by uvicorn, in a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator

import uvicorn
from sqlalchemy import Engine

from robot.config import Settings, is_loopback
from robot.errors import ConfigError, RobotError
from robot.logs import get_logger
from robot.web.app import console_app
from robot.web.secret import session_secret


def split_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as host and port. Raises ConfigError."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {listen!r}: give HOST:PORT", key="web.listen")
    return host, int(port)


class QuietServer(uvicorn.Server):
    """uvicorn's server with our own signal handling: SIGTERM and SIGINT stop it and the
    process exits 0 (uvicorn's own handlers raise the signal again once it has stopped)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop(self) -> None:
        """Finish the requests under way, then return from serve()."""
        self.should_exit = True


def serve(settings: Settings, engine: Engine, listen: str) -> int:
    """Serve the console on `listen` until SIGTERM or SIGINT; returns the exit code."""
    host, port = split_listen(listen)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise RobotError(f"web: cannot listen on {listen}: {reason}") from None
    log = get_logger("robot.web")
    if not is_loopback(host):
        log.warning(
            "web_not_on_loopback",
            listen=listen,
            advice="put TLS in front (a reverse proxy): passwords and cookies cross the network",
        )
    app = console_app(settings, engine, secret=session_secret(settings.web, engine))
    proxies = settings.web.trusted_proxies
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or "",
        server_header=False,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = QuietServer(config)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            for bound in server.servers:
                for sock in bound.sockets:
                    address = sock.getsockname()
                    log.info("web_listening", host=address[0], port=address[1])
        await serving

    try:
        asyncio.run(run())
    finally:
        listening.close()
    return 0 if server.started else 1
