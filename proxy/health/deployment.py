"""Live state of one deployment: breaker, cooldown, in-flight count and latency.

This is the in-process snapshot the hot path reads to build a plan. It is owned by the
gateway and survives config reloads for deployments that exist before and after.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from proxy.config import CooldownConfig, DeploymentConfig
from proxy.core.outcomes import CooldownKind, Outcome, OutcomeClass
from proxy.health.breaker import BreakerState, DeploymentBreaker
from proxy.health.caps import DeploymentCaps

__all__ = ["DeploymentState", "cooldown_seconds"]


def _doubling(base: float, repeats: int, cap: float) -> float:
    """base, 2 x base, 4 x base ... on consecutive repeats, at most `cap`."""
    return min(base * 2.0 ** min(max(repeats - 1, 0), 16), cap)


def cooldown_seconds(outcome: Outcome, cfg: CooldownConfig, repeats: int) -> float:
    """How long to skip a deployment after `outcome` (DESIGN.md's cooldown column).

    `repeats` counts consecutive failures of the same class on this deployment, for the
    classes whose cooldown grows on repeat. A vendor's own Retry-After / reset wins where
    it says anything, except that it never shortens a quota cooldown to a few seconds.
    """
    kind = outcome.policy.cooldown
    hint = outcome.retry_after_s
    if kind is CooldownKind.NONE:
        return 0.0
    if kind is CooldownKind.QUOTA:
        return float(max(cfg.quota_exhausted_s, hint or 0.0))
    if kind is CooldownKind.RATE_LIMIT:
        if hint is not None:
            return float(hint)
        return _doubling(cfg.rate_limited_s, repeats, cfg.rate_limited_max_s) * random.uniform(
            0.8, 1.2
        )
    if kind is CooldownKind.DOUBLING:
        if hint is not None:
            return float(hint)
        return _doubling(cfg.overloaded_s, repeats, cfg.overloaded_max_s)
    if kind is CooldownKind.UNREACHABLE:
        return cfg.unreachable_s
    if kind is CooldownKind.AUTH:
        return cfg.auth_error_s
    if kind is CooldownKind.MODEL:
        return cfg.model_unavailable_s
    return 0.0  # pragma: no cover - every kind is handled above


class DeploymentState:
    """Everything routing needs to know about one deployment, readable without awaiting."""

    __slots__ = (
        "breaker",
        "caps",
        "config",
        "cooldown_reason",
        "cooldown_since",
        "cooldown_until",
        "ewma_latency_s",
        "healthy",
        "id",
        "in_flight",
        "last_class",
        "on_change",
        "repeats",
    )

    def __init__(
        self,
        config: DeploymentConfig,
        fail_max: int,
        reset_timeout_s: float,
        on_breaker_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.id = config.id
        self.config = config
        dep_id = config.id
        self.ewma_latency_s: float | None = None

        def breaker_changed(state: BreakerState) -> None:
            if state is BreakerState.CLOSED:
                self.ewma_latency_s = None  # measured again from scratch once it is back
            if on_breaker_change is not None:
                on_breaker_change(dep_id, state)

        self.breaker = DeploymentBreaker(fail_max, reset_timeout_s, breaker_changed)
        caps = (config.max_concurrent, config.rpm, config.tpm)
        self.caps = DeploymentCaps(*caps) if any(c is not None for c in caps) else None
        self.cooldown_since = 0.0
        self.cooldown_until = 0.0
        self.cooldown_reason = ""
        self.healthy = True
        self.in_flight = 0
        self.last_class = ""
        self.repeats = 0
        # Called with (deployment id, field group) when this replica changes shared state;
        # the state sync publishes it to peer replicas (proxy/health/sync.py).
        self.on_change: Callable[[str, str], None] | None = None

    def usable(self, now: float) -> bool:
        """Not cooling, healthy, under its caps, and the breaker would admit an attempt."""
        return (
            self.healthy
            and now >= self.cooldown_until
            and self.breaker.would_admit(now)
            and (self.caps is None or self.caps.admits(now, self.in_flight))
        )

    def down(self, now: float) -> bool:
        """Out of service (unhealthy, cooling, breaker not closed), as opposed to just busy."""
        return (
            not self.healthy
            or now < self.cooldown_until
            or self.breaker.state is not BreakerState.CLOSED
        )

    def under_caps(self, now: float) -> bool:
        """Caps are hard limits: even a forced attempt (nothing usable) respects them."""
        return self.caps is None or self.caps.admits(now, self.in_flight)

    def unusable_until(self, now: float) -> float:
        """When this deployment becomes usable again, for ordering the least-bad ones."""
        until = max(self.cooldown_until, self.breaker.open_until())
        return until if self.healthy else until + 1e9

    def cooldown_left(self, now: float) -> float:
        return max(0.0, self.cooldown_until - now)

    def observe(self, outcome: Outcome, latency_s: float, cfg: CooldownConfig) -> float:
        """Fold one attempt's outcome into the state; returns the cooldown applied (s)."""
        cls = outcome.cls
        self.repeats = self.repeats + 1 if cls == self.last_class else 1
        self.last_class = cls
        if cls is OutcomeClass.TIMEOUT:
            # A timeout's latency is a lower bound of the real one; other failures are not
            # latency samples (a fast refusal must not make a deployment look fast).
            self.note_latency(latency_s)
        seconds = cooldown_seconds(outcome, cfg, self.repeats)
        if seconds > 0:
            now = time.monotonic()
            until = now + seconds
            if until > self.cooldown_until:
                self.cooldown_until = until
                self.cooldown_since = now
                self.cooldown_reason = cls
                if self.on_change is not None:
                    self.on_change(self.id, "cooldown")
        return seconds

    def observe_success(self, latency_s: float) -> None:
        self.last_class = "success"
        self.repeats = 0
        self.note_latency(latency_s)

    def note_latency(self, latency_s: float) -> None:
        """Fold one latency sample (TTFB for streams) into the EWMA least-latency reads."""
        if latency_s > 0:
            prev = self.ewma_latency_s
            self.ewma_latency_s = latency_s if prev is None else prev + 0.2 * (latency_s - prev)

    def clear_cooldown(self) -> None:
        self.cooldown_until = 0.0
        self.cooldown_reason = ""
        if self.on_change is not None:
            self.on_change(self.id, "cooldown")
