"""The robot's side of account_state: it writes the pauses it makes after a transport fault
(and clears them once the account sends again), only when the state changes, and reads every
poll_seconds which accounts an operator paused or resumed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from robot.daemon.database import DatabaseCalls
from robot.daemon.pauses import AccountPauses
from robot.outbox.account_states import AccountStates
from robot.outbox.schema import PauseKind


class SharedPauses:
    """Keeps account_state and the robot's AccountPauses in step."""

    def __init__(
        self,
        states: AccountStates,
        pauses: AccountPauses,
        db: DatabaseCalls,
        robot: str,
        log: Any,
        wake: Callable[[], None],
    ) -> None:
        self.states = states
        self.pauses = pauses
        self.db = db
        self.robot = robot
        self.log = log
        self.wake = wake
        self.written: dict[str, float] = {}  # fault pauses this robot wrote: when (monotonic)

    async def fault(self, account: str, reason: str, seconds: float) -> None:
        """Say that `account` is paused for `seconds` after a fault (a failed write is
        logged: the pause holds in this robot all the same)."""
        done = await self.db.logged("account_state", self._write_fault, account, reason, seconds)
        if done:
            self.written[account] = time.monotonic()

    def _write_fault(self, account: str, reason: str, seconds: float) -> bool:
        self.states.fault(account, self.robot, reason, seconds)
        return True

    async def sent_again(self, account: str) -> None:
        """`account` sent after a run of faults: its fault pause is over."""
        self.written.pop(account, None)
        await self.db.logged("account_state", self.states.clear_fault, account)

    async def read(self) -> None:
        """Read account_state: the accounts an operator paused (their rows are released
        untried, and not claimed), and those resumed since the last read (their fault
        pause in this robot, if any, ends now)."""
        began = time.monotonic()
        found = await self.db.logged("account_state", self.states.states)
        if found is None:
            return
        by_operator = {
            name: state.describe()
            for name, state in found.items()
            if state.by_operator and state.paused
        }
        before = self.pauses.operator_paused()
        new = [name for name in by_operator if name not in before]
        resumed = self.pauses.read_operator_pauses(by_operator, began)
        for name in new:
            self.log.warning("account.paused_by_operator", account=name, state=by_operator[name])
        for name, written_at in list(self.written.items()):
            state = found.get(name)
            if written_at < began and (state is None or state.kind is not PauseKind.FAULT):
                del self.written[name]
                if state is None and self.pauses.lift(name):
                    resumed.append(name)
        for name in resumed:
            self.log.info("account.resumed", account=name)
        if resumed:
            self.wake()
