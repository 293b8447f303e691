"""The embedded backend: one process, so every replica-wide question has a local answer.

Breaker and cooldown changes stay in the process's `DeploymentState` (there are no peers
to tell); counters, rate limits and leases are plain dicts with the same semantics as the
Redis backend, so the code above them does not care which one it runs on.
"""

from __future__ import annotations

import time
from collections import defaultdict

from proxy.state.base import Lease, RateLimit, StateBackend, sliding_window

__all__ = ["MemoryBackend"]


class _LocalLease(Lease):
    """In one process the single replica always holds every lease."""

    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class MemoryBackend(StateBackend):
    shared = False

    def __init__(self, origin: str) -> None:
        super().__init__(origin)
        self._windows: dict[str, tuple[int, int, int]] = {}
        self._counters: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )

    async def hit(
        self, key: str, limit: int, window_s: float, cost: int = 1, partial: bool = False
    ) -> RateLimit:
        return self.hit_now(key, limit, window_s, cost, partial)

    def hit_now(
        self, key: str, limit: int, window_s: float, cost: int = 1, partial: bool = False
    ) -> RateLimit:
        """`hit` without awaiting (also the Redis backend's fallback during an outage)."""
        result, self._windows[key] = sliding_window(
            int(time.time() * 1000),
            max(1, int(window_s * 1000)),
            limit,
            cost,
            self._windows.get(key),
            partial,
        )
        return result

    def add(self, key: str, field: str, amount: int) -> None:
        self._counters[key][field] += amount

    async def counters(self, key: str) -> dict[str, int]:
        return dict(self._counters.get(key, {}))

    def lease(self, name: str, ttl_s: float) -> Lease:
        return _LocalLease(name, ttl_s)
