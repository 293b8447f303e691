"""One small object per client limit: whether a request fits, and taking its share.

Admission (`proxy.limits.admission`) runs a client's checks in `LIMITS` order, refuses at
the first that does not fit (each refusal says what the limit is, what is left and when to
retry), and only when every one fits takes every reservation: nothing awaits in between,
so the check-then-take of one request cannot interleave with another's. A client gets the
checks of the limits it has, built once (`checks_for`), so a limit it lacks costs nothing.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

if TYPE_CHECKING:
    from proxy.limits.admission import ClientState

__all__ = ["LIMITS", "Asked", "LimitCheck", "Refusal", "checks_for", "go_duration"]

# The refusal reasons (the `reason` label of llmproxy_client_limit_rejections_total and the
# error `code`), in the order admission checks them, with their names in messages.
LIMITS: Mapping[str, str] = {
    "loop_detected": "identical requests (loop_max_repeats per loop_window_s)",
    "max_concurrent": "concurrent requests (max_concurrent)",
    "rpm": "requests per minute (rpm)",
    "tpm": "tokens per minute (tpm)",
    "tokens_per_day": "tokens per UTC day (tokens_per_day)",
    "budget_usd_per_day": "USD per UTC day (budget_usd_per_day)",
}

# Fields that do not change what a request asks the model (loop detection ignores them;
# Codex's `client_metadata` names the turn, which changes when the question does not).
_LOOP_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "client_metadata"})
# A client's loop history is swept of expired bodies when it grows past this.
LOOP_SWEEP_AT = 4096


@dataclass(slots=True)
class Asked:
    """What one request asks of its client's limits."""

    body: Mapping[str, Any]
    now: float
    tokens: float  # prompt estimate + completion cap (the daily and budget reservations)
    reserve_tokens: float  # the same, at most the tpm bucket's capacity
    cost: float  # USD, at the group's worst-case prices
    until_midnight: float  # seconds to the end of the UTC day (daily limits reset then)
    loop_key: bytes = b""


@dataclass(frozen=True, slots=True)
class Refusal:
    detail: str  # after "over its limit on <limit>: "
    wait_s: float
    retry: bool = True  # False: an SDK's automatic retry cannot help (x-should-retry)


class LimitCheck(ABC):
    """One limit of one client."""

    __slots__ = ()
    reason: ClassVar[str]

    @abstractmethod
    def present(self, state: ClientState) -> bool:
        """Whether `state`'s client has this limit."""

    @abstractmethod
    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        """Why this request does not fit now, or None."""

    @abstractmethod
    def take(self, state: ClientState, asked: Asked) -> None:
        """Reserve this request's share (every check has passed)."""


class _Loops(LimitCheck):
    __slots__ = ()
    reason = "loop_detected"

    def present(self, state: ClientState) -> bool:
        return state.loops is not None

    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        if not asked.tokens:  # a token count, polling a stored response: rpm bounds those
            return None
        lim = state.config.limits
        assert state.loops is not None and lim.loop_max_repeats is not None
        asked.loop_key = _loop_digest(asked.body)
        seen = state.loops.get(asked.loop_key)
        if seen is None:
            return None
        horizon = asked.now - lim.loop_window_s
        while seen and seen[0] <= horizon:
            seen.popleft()
        if len(seen) < lim.loop_max_repeats:
            return None
        wait = seen[0] + lim.loop_window_s - asked.now
        return Refusal(
            f"This exact request was sent {len(seen)} times in the last "
            f"{lim.loop_window_s:g}s (loop_max_repeats {lim.loop_max_repeats}): it looks like "
            "an agent stuck in a loop. Change the request, or wait "
            f"{human(wait)} until the oldest repeat leaves the window.",
            wait,
            retry=False,
        )

    def take(self, state: ClientState, asked: Asked) -> None:
        loops = state.loops
        assert loops is not None
        if not asked.tokens:
            return
        if len(loops) >= state.loop_sweep_at:
            horizon = asked.now - state.config.limits.loop_window_s
            for key in [k for k, seen in loops.items() if not seen or seen[-1] <= horizon]:
                del loops[key]
            # Amortised: the next sweep waits until the history has doubled again.
            state.loop_sweep_at = max(LOOP_SWEEP_AT, 2 * len(loops))
        loops.setdefault(asked.loop_key, deque()).append(asked.now)


class _Concurrency(LimitCheck):
    __slots__ = ()
    reason = "max_concurrent"

    def present(self, state: ClientState) -> bool:
        return state.config.limits.max_concurrent is not None

    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        limit = state.config.limits.max_concurrent
        assert limit is not None
        if state.in_flight < limit:
            return None
        return Refusal(
            f"limit {limit} requests in flight at once, all taken; retry when one of them "
            "has finished.",
            1.0,
        )

    def take(self, state: ClientState, asked: Asked) -> None:
        return None  # admission counts every admitted request in flight


class _Rpm(LimitCheck):
    __slots__ = ()
    reason = "rpm"

    def present(self, state: ClientState) -> bool:
        return state.rpm is not None

    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        rpm = state.rpm
        assert rpm is not None
        rpm.refill(asked.now)
        if rpm.fits(1):
            return None
        wait = rpm.wait_s(1)
        return Refusal(
            f"limit {state.config.limits.rpm}, remaining {rpm.remaining()}; retry after "
            f"{human(wait)} (back to full in {human(rpm.reset_s())}).",
            wait,
        )

    def take(self, state: ClientState, asked: Asked) -> None:
        assert state.rpm is not None
        state.rpm.reserve(1)
        state.rpm.settle(1, 1)


class _SharedRpm(LimitCheck):
    __slots__ = ()
    reason = "rpm"

    def present(self, state: ClientState) -> bool:
        return state.shared_rpm is not None

    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        shared = state.shared_rpm
        assert shared is not None
        if shared.fits(asked.now):
            return None
        wait = shared.retry_after_s or 1.0
        return Refusal(
            f"limit {state.config.limits.rpm} across all replicas, all taken; retry after "
            f"{human(wait)}.",
            wait,
        )

    def take(self, state: ClientState, asked: Asked) -> None:
        assert state.shared_rpm is not None
        state.shared_rpm.take()


class _Tpm(LimitCheck):
    __slots__ = ()
    reason = "tpm"

    def present(self, state: ClientState) -> bool:
        return state.tpm is not None

    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        tpm = state.tpm
        assert tpm is not None
        tpm.refill(asked.now)
        if tpm.fits(asked.reserve_tokens):
            return None
        wait = tpm.wait_s(asked.reserve_tokens)
        return Refusal(
            f"limit {state.config.limits.tpm}, remaining {tpm.remaining()}, this request "
            f"reserves about {int(asked.reserve_tokens)} (prompt estimate + max_tokens); "
            f"retry after {human(wait)} (back to full in {human(tpm.reset_s())}).",
            wait,
        )

    def take(self, state: ClientState, asked: Asked) -> None:
        assert state.tpm is not None
        state.tpm.reserve(asked.reserve_tokens)


class _SharedTpm(LimitCheck):
    __slots__ = ()
    reason = "tpm"

    def present(self, state: ClientState) -> bool:
        return state.shared_tpm is not None

    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        shared = state.shared_tpm
        assert shared is not None
        if shared.fits(asked.now, asked.reserve_tokens):
            return None
        wait = shared.retry_after_s or 1.0
        return Refusal(
            f"limit {state.config.limits.tpm} across all replicas, this request reserves about "
            f"{int(asked.reserve_tokens)} (prompt estimate + max_tokens) and fewer are left; "
            f"retry after {human(wait)}.",
            wait,
        )

    def take(self, state: ClientState, asked: Asked) -> None:
        assert state.shared_tpm is not None
        state.shared_tpm.take(asked.reserve_tokens)


class _DailyTokens(LimitCheck):
    __slots__ = ()
    reason = "tokens_per_day"

    def present(self, state: ClientState) -> bool:
        return state.tokens_day is not None

    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        counter = state.tokens_day
        assert counter is not None
        if counter.fits(asked.tokens):
            return None
        return _daily_refusal(
            self.reason, counter.limit, counter.used + counter.held, asked.tokens, asked
        )

    def take(self, state: ClientState, asked: Asked) -> None:
        assert state.tokens_day is not None
        state.tokens_day.reserve(asked.tokens)


class _DailyBudget(LimitCheck):
    __slots__ = ()
    reason = "budget_usd_per_day"

    def present(self, state: ClientState) -> bool:
        return state.budget is not None

    def refusal(self, state: ClientState, asked: Asked) -> Refusal | None:
        counter = state.budget
        assert counter is not None
        if counter.fits(asked.cost):
            return None
        return _daily_refusal(
            self.reason, counter.limit, counter.used + counter.held, asked.cost, asked
        )

    def take(self, state: ClientState, asked: Asked) -> None:
        assert state.budget is not None
        state.budget.reserve(asked.cost)


def _daily_refusal(reason: str, limit: float, used: float, amount: float, asked: Asked) -> Refusal:
    wait = asked.until_midnight
    return Refusal(
        f"limit {amount_text(reason, limit)}, used or in flight today "
        f"{amount_text(reason, used)}, this request reserves about "
        f"{amount_text(reason, amount)}; it resets at 00:00 UTC, in {human(wait)}.",
        wait,
    )


# Every kind of check, in the order admission runs them.
_CHECKS: tuple[LimitCheck, ...] = (
    _Loops(),
    _Concurrency(),
    _Rpm(),
    _SharedRpm(),
    _Tpm(),
    _SharedTpm(),
    _DailyTokens(),
    _DailyBudget(),
)


def checks_for(state: ClientState) -> tuple[LimitCheck, ...]:
    """The checks of the limits `state`'s client has, in `LIMITS` order."""
    return tuple(check for check in _CHECKS if check.present(state))


def _check_order() -> None:
    """Fail at import if a check's reason is not a limit, or the checks run out of order."""
    order = [list(LIMITS).index(check.reason) for check in _CHECKS]
    if order != sorted(order):
        raise RuntimeError("limit checks must run in LIMITS order")


_check_order()


def _loop_digest(body: Mapping[str, Any]) -> bytes:
    """The request's identity for loop detection: its fields in canonical order, minus the
    ones that do not change what is asked."""
    canonical = orjson.dumps(
        {k: v for k, v in body.items() if k not in _LOOP_IGNORED}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.blake2b(canonical, digest_size=16).digest()


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds * 1000) / 1000
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    s = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{s}s"
    if minutes:
        return f"{int(minutes)}m{s}s"
    return f"{s}s"


def human(seconds: float) -> str:
    return go_duration(max(seconds, 0.0))


def amount_text(reason: str, value: float) -> str:
    return f"${value:.4f}" if reason == "budget_usd_per_day" else str(math.ceil(value))
