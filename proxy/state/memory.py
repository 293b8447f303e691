"""The embedded backend: one process, so every replica-wide question has a local answer.

Breaker and cooldown changes stay in the process's `DeploymentState` (there are no peers
to tell); counters, rate limits, leases and remembered values are plain dicts with the same
semantics as the Redis backend, so the code above them does not care which one it runs on.
Remembered values are bounded (`REMEMBER_LIMIT`, the oldest forgotten first) and, like
everything here, do not survive a restart.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict

from proxy.state.base import Lease, RateLimit, StateBackend, sliding_window

__all__ = ["REMEMBER_LIMIT", "Memo", "MemoryBackend"]

#: Values one process remembers at most (about 50 MB at worst).
REMEMBER_LIMIT = 100_000


class Memo:
    """A bounded key -> value map whose entries expire; the oldest go first when full."""

    __slots__ = ("_items", "_limit")

    def __init__(self, limit: int = REMEMBER_LIMIT) -> None:
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._limit = limit

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, value: str, ttl_s: float) -> None:
        items = self._items
        items[key] = (value, time.monotonic() + ttl_s)
        items.move_to_end(key)
        if len(items) > self._limit:
            items.popitem(last=False)

    def get(self, key: str) -> str | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._items[key]
            return None
        return entry[0]


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
        self.memo = Memo()

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

    def remember(self, key: str, value: str, ttl_s: float) -> None:
        self.memo.put(key, value, ttl_s)

    async def recall(self, key: str) -> str | None:
        return self.memo.get(key)
