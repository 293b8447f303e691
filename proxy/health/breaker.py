"""Per-deployment circuit breaker on pybreaker's state machine, made safe for asyncio.

pybreaker wraps *synchronous* calls; its half-open state lets through whatever calls
arrive while it is half-open. An upstream attempt is an awaitable that may take seconds,
so under concurrency every request would become a "trial". This wrapper keeps pybreaker
as the state machine (storage, counters, listeners, transitions) and adds what asyncio
needs: an explicit permit, of which exactly one is handed out while half-open.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import pybreaker

__all__ = ["BreakerState", "DeploymentBreaker", "Permit"]


class BreakerState(IntEnum):
    """Values of the `llmproxy_breaker_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        """ "closed", "half-open" or "open": the name in logs and /admin/status."""
        return self.name.lower().replace("_", "-")


_STATES = {
    pybreaker.STATE_CLOSED: BreakerState.CLOSED,
    pybreaker.STATE_HALF_OPEN: BreakerState.HALF_OPEN,
    pybreaker.STATE_OPEN: BreakerState.OPEN,
}


class Permit(IntEnum):
    """What `DeploymentBreaker.acquire` granted."""

    DENIED = 0
    NORMAL = 1  # closed: an ordinary attempt
    TRIAL = 2  # the single half-open trial
    FORCED = 3  # routing had nothing better (every deployment was unusable)


class _VendorFailure(Exception):
    """Raised inside pybreaker's call() to record one vendor-blamed failure."""


def _fail() -> None:
    raise _VendorFailure


def _ok() -> None:
    return None


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: DeploymentBreaker) -> None:
        self.owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.owner._on_state_change(_STATES[new_state.name])


class DeploymentBreaker:
    """One deployment's breaker. Counts only vendor-blamed failures (the router decides which).

    `state` is cached from pybreaker's listener so the hot path reads an attribute, not
    pybreaker's storage and datetime arithmetic.
    """

    __slots__ = (
        "_cb",
        "_clean",
        "_on_change",
        "_opened_at",
        "_trial_out",
        "drained",
        "reset_timeout_s",
        "state",
    )

    def __init__(
        self,
        name: str,
        fail_max: int,
        reset_timeout_s: float,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.reset_timeout_s = reset_timeout_s
        self.state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._trial_out = False
        # Closed with no failures counted: a success has nothing to record.
        self._clean = True
        # Forced open by an admin (a drained vendor): no trial after reset_timeout_s, no
        # closing on a success; only forcing it closed again ends it.
        self.drained = False
        self._on_change = on_change
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            name=name,
            listeners=[_Listener(self)],
            throw_new_error_on_trip=False,
        )

    @property
    def fail_counter(self) -> int:
        return int(self._cb.fail_counter)

    def reconfigure(self, fail_max: int, reset_timeout_s: float) -> None:
        """Apply new limits without losing the current state (config reload)."""
        self._cb.fail_max = fail_max
        self._cb.reset_timeout = reset_timeout_s
        self.reset_timeout_s = reset_timeout_s

    def _on_state_change(self, state: BreakerState) -> None:
        self._clean = False
        if state is BreakerState.OPEN:
            self._opened_at = time.monotonic()
        if state is not BreakerState.HALF_OPEN:
            self._trial_out = False
        self.state = state
        if self._on_change is not None:
            self._on_change(state)

    @property
    def opened_at(self) -> float:
        """Monotonic time the breaker last opened (0 if it never did)."""
        return self._opened_at

    def adopt(self, state: BreakerState, opened_at: float) -> None:
        """Take a state decided elsewhere (a peer replica), opened at `opened_at` (monotonic).

        The listener still fires on a real transition, so logs and gauges follow; a trial
        this replica has out is forgotten, as on any transition.
        """
        if state is not self.state:
            self.force(state)
        if state is BreakerState.OPEN:
            self._opened_at = opened_at

    def open_until(self) -> float:
        """Monotonic time at which an open breaker may let a trial through (0 if not open)."""
        if self.drained:
            return float("inf")
        return self._opened_at + self.reset_timeout_s if self.state is BreakerState.OPEN else 0.0

    def would_admit(self, now: float) -> bool:
        """Whether `acquire` would grant a permit now; routing uses it to build a plan."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return not self.drained and now >= self._opened_at + self.reset_timeout_s
        return not self._trial_out

    def acquire(self, now: float) -> Permit:
        """Ask to send one attempt. Half-open hands out exactly one trial at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit.NORMAL
        if state is BreakerState.OPEN:
            if self.drained or now < self._opened_at + self.reset_timeout_s:
                return Permit.DENIED
            self._cb.half_open()
        if self._trial_out:
            return Permit.DENIED
        self._trial_out = True
        return Permit.TRIAL

    def record(self, permit: Permit, *, success: bool | None) -> None:
        """Record an attempt's verdict: True (vendor answered), False (vendor-blamed), None (neutral).

        Neutral outcomes (rate limits, quota, the client's own errors...) say nothing about
        flakiness: they release a trial permit without closing or opening the breaker.
        """
        if permit is Permit.TRIAL:
            self._trial_out = False
        if success is None or permit is Permit.DENIED or self.drained:
            return
        if success and permit is Permit.NORMAL and self._clean:
            return  # the common case: nothing to reset, skip pybreaker's locked call
        self._clean = False
        if permit is Permit.FORCED or (
            permit is Permit.NORMAL and self.state is not BreakerState.CLOSED
        ):
            # Outside pybreaker's protocol: a forced attempt bypassed the breaker, or the
            # breaker tripped while this attempt was in flight. A success still proves the
            # deployment works; a failure adds nothing to a breaker that is already open.
            if success and self.state is not BreakerState.CLOSED:
                self._cb.close()
            return
        with contextlib.suppress(_VendorFailure, pybreaker.CircuitBreakerError):
            self._cb.call(_ok if success else _fail)
        self._clean = self.state is BreakerState.CLOSED and self._cb.fail_counter == 0

    def release(self, permit: Permit) -> None:
        """The attempt never reached the vendor (e.g. cancelled before sending)."""
        if permit is Permit.TRIAL:
            self._trial_out = False

    def force(self, state: BreakerState) -> None:
        """Admin override: drain a deployment (open, until forced closed) or bring it back (closed)."""
        self.drained = state is BreakerState.OPEN
        if state is BreakerState.OPEN:
            self._cb.open()
        elif state is BreakerState.CLOSED:
            self._cb.close()
        else:
            self._cb.half_open()
