"""One robot process: its lifecycle. Start the dispatcher, the connection workers and the
timed jobs; stop on SIGTERM/SIGINT; reload robot.ini on SIGHUP.

Stopping: claim nothing more, finish the message on each wire, commit the outcomes, release
the rest of the claim, QUIT, exit 0. A reload that fails keeps the old settings.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable

from sqlalchemy import Engine

from robot.config import Settings
from robot.daemon.database import DatabaseCalls
from robot.daemon.dispatcher import Dispatcher
from robot.daemon.jobs import Jobs
from robot.daemon.metrics import Metrics
from robot.daemon.pauses import AccountPauses
from robot.daemon.rendering import TemplateRenderers
from robot.daemon.setup import Setup
from robot.daemon.shared_pauses import SharedPauses
from robot.daemon.systemd import notify
from robot.daemon.worker import Tally, Worker
from robot.errors import ConfigError
from robot.logs import get_logger
from robot.outbox.account_states import AccountStates
from robot.outbox.both_sides import outbox_for
from robot.outbox.engine import libpq_dsn
from robot.outbox.group_commit import AsyncGroupCommit, GroupCommit
from robot.outbox.shared import MIB
from robot.outbox.wakeup import listen

GIL_SWITCH_SECONDS = 0.0005  # sys.setswitchinterval (default 0.005): bench/ measured +5%
SUPERVISOR_LOOK_SECONDS = 1.0  # how often a sending process checks that its supervisor lives


class Robot:
    """One robot process: owns the scheduler, the dispatcher and `connections` workers."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        drain: bool = False,
        reload: Callable[[], Settings] | None = None,
        supervisor: int | None = None,
    ) -> None:
        self.setup = Setup.of(settings)  # raises ConfigError for a bad DKIM key
        self.outbox = outbox_for(settings, engine)
        self.worker_id = f"{settings.robot_name}:{os.getpid()}"
        self.drain = drain
        self.reload = reload
        self.supervisor = supervisor  # the parent process of a sending process, its pid
        self.log = get_logger("robot.daemon").bind(robot=self.worker_id)
        self.stopping = asyncio.Event()
        self.metrics = Metrics()
        self.metrics_url: str | None = None
        self.pauses = AccountPauses()
        self.tally = Tally()
        self.renderers = TemplateRenderers.for_workers(settings.robot.connections)
        self.db = DatabaseCalls(self.log, self.stopping)
        self.dispatcher = Dispatcher(
            self.outbox,
            self.worker_id,
            self.current,
            self.db,
            self.pauses,
            self.stopping,
            self.log,
            drain=drain,
        )
        self.shared_pauses = SharedPauses(
            AccountStates(engine),
            self.pauses,
            self.db,
            self.worker_id,
            self.log,
            self.dispatcher.wake.set,
        )
        self.group_commit: GroupCommit | AsyncGroupCommit
        if engine.dialect.name == "postgresql":
            dsn = libpq_dsn(engine.url)
            self.group_commit = AsyncGroupCommit(self.outbox, self.worker_id, dsn, self.log)
        else:
            self.group_commit = GroupCommit(
                lambda outcomes: self.outbox.finish_many(self.worker_id, outcomes), self.log
            )
        self.workers = [
            Worker(
                self.dispatcher,
                self.current,
                self.group_commit,
                self.pauses,
                self.shared_pauses,
                self.metrics,
                self.tally,
                self.renderers,
                self.log,
            )
            for _ in range(settings.robot.connections)
        ]
        self.jobs = Jobs(
            self.outbox,
            self.worker_id,
            self.current,
            self.dispatcher,
            self.db,
            self.shared_pauses,
            self.metrics,
            self.open_connections,
            self.stopping,
            self.log,
        )

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        return self.setup.settings

    def current(self) -> Setup:
        """The setup in force (a SIGHUP may have replaced it since the last call)."""
        return self.setup

    async def run(self) -> int:
        """Run until stopped (or, with drain, until nothing is due). Returns the exit code."""
        loop = asyncio.get_running_loop()
        # A database thread gives up the GIL around each statement and must win it back from
        # the event loop; the default 5 ms interval made every such hand-over slow.
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_settings)
        scheduler = self.jobs.scheduler(loop, drain=self.drain)
        workers = [
            asyncio.create_task(worker.run(), name=f"connection-{n}")
            for n, worker in enumerate(self.workers)
        ]
        if self.settings.metrics.listen:
            host, port = self.metrics.serve(self.settings.metrics.listen)
            self.metrics_url = f"http://{host}:{port}/metrics"
            self.log.info("metrics.listening", url=self.metrics_url)
        await self.jobs.housekeeping()  # once at start, then hourly
        await self.jobs.measure()
        await self.shared_pauses.read()  # accounts an operator paused
        dispatcher = asyncio.create_task(self._dispatch(), name="dispatcher")
        listener = None
        if self.outbox.engine.dialect.name == "postgresql":
            listener = asyncio.create_task(
                listen(
                    self.outbox.engine.url, self.dispatcher.on_new_rows, self.log, self.stopping
                ),
                name="listener",
            )
        watch = None
        if self.supervisor is not None:
            watch = asyncio.create_task(self._watch_supervisor(), name="supervisor-watch")
        scheduler.start()
        notify("READY=1")
        if self.settings.robot.redirect_to:
            self.log.warning(
                "robot.redirecting",
                redirect_to=self.settings.robot.redirect_to,
                detail="staging: every message goes to this address instead of its recipients",
            )
        self.log.info(
            "robot.started",
            connections=self.settings.robot.connections,
            grace_minutes=self.settings.robot.grace_minutes,
            rate=self.settings.robot.rate,
            drain=self.drain,
        )
        try:
            done, _ = await asyncio.wait(
                [dispatcher, *workers], return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                if task.exception() is not None:  # a crashed side task stops the daemon
                    self.log.error(
                        "robot.crashed", task=task.get_name(), error=repr(task.exception())
                    )
                    self.stop()
                    raise task.exception()  # type: ignore[misc]
        finally:
            notify("STOPPING=1")
            scheduler.shutdown(wait=False)
            self.metrics.close()
            self.stop()
            side = [dispatcher, *workers, *(task for task in (listener, watch) if task)]
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            await self.renderers.close()
            await self.group_commit.close()  # outcomes still being committed
            await self.dispatcher.release_the_rest()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.db.close()
        self.log.info("robot.stopped", **self.tally.counts)
        return 1 if self.drain and self.tally.faults else 0

    async def _dispatch(self) -> None:
        """The dispatcher; once it returns (stopping, or a drain is done) the robot stops."""
        await self.dispatcher.run()
        self.stop()

    async def _watch_supervisor(self) -> None:
        """Stop once the supervisor is gone (its children are then adopted by another
        process): the fallback of the SIGTERM Linux sends, and the only way elsewhere."""
        while not self.stopping.is_set():
            if os.getppid() != self.supervisor:
                self.log.error("supervisor.gone", supervisor=self.supervisor)
                self.stop()
                return
            try:
                await asyncio.wait_for(self.stopping.wait(), SUPERVISOR_LOOK_SECONDS)
            except TimeoutError:
                pass

    def stop(self) -> None:
        """Claim nothing more; workers finish the message on their wire and exit."""
        if not self.stopping.is_set():
            self.log.info("robot.stopping")
            self.stopping.set()
            self.group_commit.stopping()
            self.dispatcher.stop(len(self.workers))
        self.dispatcher.wake.set()
        self.dispatcher.room.set()

    def reload_settings(self) -> None:
        """SIGHUP: read robot.ini again; keep the old settings if the new ones are invalid."""
        if self.reload is None:
            return
        try:
            new = Setup.of(self.reload())
        except ConfigError as exc:
            self.log.error("config.reload_refused", reason=str(exc))
            return
        old = self.settings
        if new.settings.database.url != old.database.url:
            self.log.warning("config.reload_database_ignored", reason="restart to change it")
        if new.settings.robot.connections != old.robot.connections:
            self.log.warning("config.reload_connections_ignored", reason="restart to change it")
        self.setup = new
        robot = new.settings.robot
        self.outbox.grace_seconds = robot.grace_minutes * 60
        self.outbox.lease_seconds = robot.lease_seconds
        self.outbox.max_body_bytes = int(robot.max_body_mb * MIB)
        self.outbox.max_attachment_bytes = int(new.settings.attachments.max_mb * MIB)
        self.log.info("config.reloaded", path=new.settings.path)
        self.dispatcher.wake.set()

    def open_connections(self) -> dict[str, int]:
        """Open relay connections by account, for the metrics."""
        found = dict.fromkeys(self.settings.accounts, 0)
        for worker in self.workers:
            for name, is_open in worker.relay.open_connections().items():
                found[name] = found.get(name, 0) + is_open
        return found
