"""Prometheus metrics (`[metrics] listen = 127.0.0.1:9464`): outcomes, queue depth, send
latency, open connections, transport faults. One registry per robot, served from a thread."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from robot.errors import ConfigError

SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The robot's instruments; `serve` exposes them over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "email_robot_messages",
            "Attempts by outcome (sent, deferred, bounced, failed, suppressed)",
            ["outcome"],
            registry=self.registry,
        )
        self.outbox_rows = Gauge(
            "email_robot_outbox_rows", "Rows per status", ["status"], registry=self.registry
        )
        self.due_backlog = Gauge(
            "email_robot_due_backlog",
            "Waiting rows whose due time has come",
            registry=self.registry,
        )
        self.send_seconds = Histogram(
            "email_robot_send_seconds",
            "From MAIL FROM to the server's reply to DATA",
            buckets=SEND_BUCKETS,
            registry=self.registry,
        )
        self.open_connections = Gauge(
            "email_robot_open_connections",
            "SMTP connections open, per account",
            ["account"],
            registry=self.registry,
        )
        self.transport_faults = Counter(
            "email_robot_transport_faults",
            "Connection, TLS and login failures, per account",
            ["account"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._by_outcome: dict[str, Any] = {}  # the counter of each outcome, looked up once

    def count_message(self, outcome: str) -> None:
        """One more attempt that ended in `outcome` (a row's new status)."""
        counter = self._by_outcome.get(outcome)
        if counter is None:
            counter = self._by_outcome[outcome] = self.messages.labels(outcome)
        counter.inc()

    def set_queue(self, counts: Mapping[str, int], due: int, statuses: tuple[str, ...]) -> None:
        """Publish a fresh reading of the outbox (every status, zeros included)."""
        for status in statuses:
            self.outbox_rows.labels(status).set(counts.get(status, 0))
        self.due_backlog.set(due)

    def set_connections(self, open_by_account: Callable[[], Mapping[str, int]]) -> None:
        """Publish the open connections per account."""
        for account, count in open_by_account().items():
            self.open_connections.labels(account).set(count)

    def serve(self, listen: str) -> tuple[str, int]:
        """Start the HTTP endpoint on `host:port`; returns the address it listens on."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            self._server, _ = start_http_server(int(port), host, registry=self.registry)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"[metrics] listen {listen}: cannot listen there ({exc})", key="metrics.listen"
            ) from None
        bound_host, bound_port = self._server.server_address[:2]
        return str(bound_host), int(bound_port)

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
