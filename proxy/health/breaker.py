"""Per-deployment circuit breaker: a small state machine made for asyncio.

closed -> open after `fail_max` consecutive vendor-blamed failures; open -> half-open once
`reset_timeout_s` has passed and a request asks; half-open hands out exactly one trial,
whose success closes the breaker and whose failure opens it again.

Why not pybreaker (which earlier versions wrapped): it guards *synchronous* calls and
records an outcome by raising through `call()`; its half-open state admits every call
that arrives while it is half-open, where an upstream attempt is an awaitable that takes
seconds, so under concurrency every request would become a trial; and it times the open
state with wall-clock datetimes, which jump with NTP. Keeping it meant a second clock and
a cached copy of its state beside it. This machine has one clock (monotonic), one state,
explicit permits, and its transitions are plain method calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

__all__ = ["BreakerState", "DeploymentBreaker", "Permit"]


class BreakerState(IntEnum):
    """Values of the `llmproxy_breaker_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        """ "closed", "half_open" or "open": the value in logs, /admin/status, the shared
        state record and the CLI (the gauge has the number)."""
        return self.name.lower()


class Permit(IntEnum):
    """What `DeploymentBreaker.acquire` granted."""

    DENIED = 0
    NORMAL = 1  # closed: an ordinary attempt
    TRIAL = 2  # the single half-open trial
    FORCED = 3  # routing had nothing better (every deployment was unusable)


class DeploymentBreaker:
    """One deployment's breaker. Counts only vendor-blamed failures (the outcome table says
    which); `on_change` is called with the new state on every transition."""

    __slots__ = (
        "_on_change",
        "_trial_out",
        "drained",
        "fail_max",
        "failures",
        "opened_at",
        "reset_timeout_s",
        "state",
    )

    def __init__(
        self,
        fail_max: int,
        reset_timeout_s: float,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.fail_max = fail_max
        self.reset_timeout_s = reset_timeout_s
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive vendor-blamed failures while closed
        self.opened_at = 0.0  # monotonic time it last opened (0: never)
        self._trial_out = False
        # Forced open by an admin (a drained vendor): no trial after reset_timeout_s, no
        # closing on a success; only forcing it closed again ends it.
        self.drained = False
        self._on_change = on_change

    @property
    def fail_counter(self) -> int:
        return self.failures

    def reconfigure(self, fail_max: int, reset_timeout_s: float) -> None:
        """Apply new limits without losing the current state (config reload)."""
        self.fail_max = fail_max
        self.reset_timeout_s = reset_timeout_s

    def _to(self, state: BreakerState, now: float | None = None) -> None:
        self._trial_out = False
        if state is BreakerState.OPEN:
            self.opened_at = time.monotonic() if now is None else now
        if state is not BreakerState.HALF_OPEN:
            self.failures = 0
        if state is not self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def open_until(self) -> float:
        """Monotonic time at which an open breaker may let a trial through (0 if not open)."""
        if self.drained:
            return float("inf")
        return self.opened_at + self.reset_timeout_s if self.state is BreakerState.OPEN else 0.0

    def would_admit(self, now: float) -> bool:
        """Whether `acquire` would grant a permit now; routing uses it to build a plan."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return not self.drained and now >= self.opened_at + self.reset_timeout_s
        return not self._trial_out

    def acquire(self, now: float) -> Permit:
        """Ask to send one attempt. Half-open hands out exactly one trial at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit.NORMAL
        if state is BreakerState.OPEN:
            if self.drained or now < self.opened_at + self.reset_timeout_s:
                return Permit.DENIED
            self._to(BreakerState.HALF_OPEN)
        if self._trial_out:
            return Permit.DENIED
        self._trial_out = True
        return Permit.TRIAL

    def record(self, permit: Permit, *, success: bool | None) -> None:
        """Record an attempt's verdict: True (the vendor answered), False (vendor-blamed
        failure), None (says nothing about flakiness: a trial permit is just given back)."""
        if permit is Permit.TRIAL:
            self._trial_out = False
        if success is None or permit is Permit.DENIED or self.drained:
            return
        state = self.state
        if permit is Permit.TRIAL and state is BreakerState.HALF_OPEN:
            self._to(BreakerState.CLOSED if success else BreakerState.OPEN)
        elif permit is Permit.NORMAL and state is BreakerState.CLOSED:
            if success:
                self.failures = 0
            else:
                self.failures += 1
                if self.failures >= self.fail_max:
                    self._to(BreakerState.OPEN)
        elif success and state is not BreakerState.CLOSED:
            # A forced attempt (it bypassed the breaker) or one that was in flight when the
            # breaker tripped: its success still proves the deployment works. Its failure
            # adds nothing to a breaker that is already open.
            self._to(BreakerState.CLOSED)

    def release(self, permit: Permit) -> None:
        """The attempt never reached the vendor (cancelled, or it could not be made)."""
        if permit is Permit.TRIAL:
            self._trial_out = False

    def force(self, state: BreakerState) -> None:
        """Admin override: drain a deployment (open, until forced closed) or bring it back."""
        self.drained = state is BreakerState.OPEN
        self._to(state)

    def adopt(self, state: BreakerState, opened_at: float, drained: bool) -> None:
        """Take a state decided by a peer replica (opened at `opened_at`, monotonic here).

        A breaker a peer opened for failures lets this replica run its own trial after
        `reset_timeout_s`; a drained one stays out until the admin brings it back."""
        self.drained = drained
        if state is not self.state:
            self._to(state, opened_at)
        elif state is BreakerState.OPEN:
            self.opened_at = opened_at
