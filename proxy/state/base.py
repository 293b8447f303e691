"""The state backend interface: what replicas share, and the primitives shared limits need.

A backend carries three kinds of state, each with the semantics that fits it:

- **Records**: a hash per deployment made of field groups (`breaker`, `cooldown`, ...).
  A `Change` replaces one group of one deployment; the newest change wins everywhere (its
  wall-clock timestamp, then the replica id as a tie-break), so replaying a change is
  harmless and replicas converge whatever order they hear things in. Changes are pushed
  to peers, who fold them into their in-process `DeploymentState`: routing never awaits
  the backend.
- **Counters**: `add()` is buffered and applied exactly once (batches carry an id the
  backend remembers), so usage accounted during an outage is flushed, not lost, and a
  retried flush is not counted twice. `hit()` is an atomic sliding-window rate limit.
- **Leases**: one holder for the whole cluster ("one prober per deployment").
- **Remembered values**: small strings kept for a while under a key (which deployment
  produced a Responses API response id). `remember()` never blocks: the value is kept in
  process at once and shared in the background; `recall()` answers from the process, and
  asks the shared backend only for a key this replica has not seen.

`memory` implements all of it in process (one replica: nothing to share); `redis` shares it.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "Change",
    "Lease",
    "RateLimit",
    "StateBackend",
    "StateBackendDown",
    "replica_id",
    "sliding_window",
]


class StateBackendDown(Exception):
    """The shared backend cannot be reached now; callers fall back to local state."""


def replica_id() -> str:
    """A name for this process that is unique in the cluster and readable in logs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Change:
    """One field group of one deployment's record, as last written by one replica."""

    deployment: str
    group: str
    fields: Mapping[str, str]
    ts: float  # wall-clock seconds when the change was made: the newest wins
    origin: str  # the replica that made it

    def newer_than(self, ts: float, origin: str) -> bool:
        return (self.ts, self.origin) > (ts, origin)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The answer of `StateBackend.hit`, in the units of OpenAI's x-ratelimit-* headers."""

    allowed: bool
    limit: int
    remaining: int  # left in the window after this hit
    retry_after_s: float  # 0 when allowed; else when `cost` would next be admitted
    reset_s: float  # until the window is fully replenished
    granted: int = 0  # what was counted: `cost`, or with `partial` as much of it as fitted


def sliding_window(
    now_ms: int,
    window_ms: int,
    limit: int,
    cost: int,
    state: tuple[int, int, int] | None,
    partial: bool = False,
) -> tuple[RateLimit, tuple[int, int, int]]:
    """One admission against a sliding-window counter; the in-process twin of `redis.HIT_LUA`.

    `state` is (window index, count in that window, count in the window before). The
    estimate weighs the previous window by how much of it still overlaps the sliding
    window: at most `limit` are admitted in any window-long span, give or take the
    estimate's assumption that the previous window's hits were spread evenly. `partial`
    counts as much of `cost` as fits (at least 1 is asked for): a replica taking a chunk.
    """
    idx = now_ms // window_ms
    w_idx, cur, prev = state if state is not None else (idx, 0, 0)
    if w_idx == idx - 1:
        prev, cur = cur, 0
    elif w_idx < idx - 1:
        prev, cur = 0, 0
    elapsed = now_ms - idx * window_ms
    weight = 1.0 - elapsed / window_ms
    if partial:
        cost = max(1, min(cost, math.floor(limit - (prev * weight + cur))))
    allowed = prev * weight + cur + cost <= limit
    if allowed:
        cur += cost
    estimate = prev * weight + cur
    retry_ms = 0.0
    if not allowed:
        room = limit - cur - cost
        if cost > limit:
            retry_ms = float(window_ms)
        elif room >= 0:  # the previous window's share must decay a little more
            retry_ms = max(0.0, window_ms * (1.0 - room / prev) - elapsed)
        else:  # wait for the next window, then for this one's share to decay
            retry_ms = (window_ms - elapsed) + max(0.0, window_ms * (1.0 - (limit - cost) / cur))
    reset_ms = (2 * window_ms - elapsed) if cur else ((window_ms - elapsed) if prev else 0)
    result = RateLimit(
        allowed,
        limit,
        max(0, math.floor(limit - estimate)),
        retry_ms / 1000.0,
        reset_ms / 1000.0,
        cost if allowed else 0,
    )
    return result, (idx, cur, prev)


class Lease(ABC):
    """One holder for the whole cluster: call `acquire` every so often (well within `ttl_s`).

    `acquire` takes the lease, or renews it if this replica holds it, and says whether this
    replica holds it now. A holder that stops renewing (crash, partition) loses it after
    `ttl_s`, and another replica takes over.
    """

    def __init__(self, name: str, ttl_s: float) -> None:
        self.name = name
        self.ttl_s = ttl_s

    @abstractmethod
    async def acquire(self) -> bool: ...

    @abstractmethod
    async def release(self) -> None: ...


OnChange = Callable[[Change], object]
OnConnect = Callable[[], Awaitable[None]]
OnUp = Callable[[bool], None]


class StateBackend(ABC):
    """Where replicas meet. One per process, started and closed with the gateway."""

    shared: bool = False  # False: one process, nothing to publish or reconcile

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.up = True
        self.replicas = 1  # live replicas seen recently (for per-replica shares of limits)
        self._on_change: OnChange | None = None
        self._on_connect: OnConnect | None = None
        self._on_up: OnUp | None = None

    def share(self, limit: int) -> int:
        """This replica's share of a cluster-wide limit when it cannot ask the others: at least 1,
        so a Redis outage never locks a paying client out."""
        return max(1, math.floor(limit / self.replicas))

    def bind(self, on_change: OnChange, on_connect: OnConnect, on_up: OnUp) -> None:
        """Who to tell: a peer's change arrived; (re)connected, reconcile now; up/down."""
        self._on_change = on_change
        self._on_connect = on_connect
        self._on_up = on_up

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            if self._on_up is not None:
                self._on_up(up)

    async def start(self) -> None:
        """Connect (or keep trying in the background); never fails start-up for an outage."""

    async def close(self) -> None:
        """Flush what can be flushed within a short time, then disconnect."""

    def publish(self, change: Change) -> None:
        """Send a local change to peers. Never blocks; written in the background."""

    async def write(self, changes: Iterable[Change]) -> None:
        """Write changes now (reconciliation); raises StateBackendDown when unreachable."""

    async def snapshot(self, deployments: Iterable[str]) -> dict[str, dict[str, Change]]:
        """The shared record of each deployment: {deployment: {group: Change}}."""
        return {}

    @abstractmethod
    async def hit(
        self, key: str, limit: int, window_s: float, cost: int = 1, partial: bool = False
    ) -> RateLimit:
        """Count `cost` against `key` if it fits in `limit` per sliding `window_s`
        (`partial`: as much of it as fits, at least 1; `granted` says how much)."""

    @abstractmethod
    def add(self, key: str, field: str, amount: int) -> None:
        """Add to a counter, exactly once, eventually (buffered; survives an outage)."""

    @abstractmethod
    async def counters(self, key: str) -> dict[str, int]:
        """A counter hash, including this replica's not yet flushed additions."""

    @abstractmethod
    def lease(self, name: str, ttl_s: float) -> Lease: ...

    @abstractmethod
    def remember(self, key: str, value: str, ttl_s: float) -> None:
        """Keep `value` under `key` for `ttl_s` seconds, for every replica (never blocks)."""

    @abstractmethod
    async def recall(self, key: str) -> str | None:
        """What `remember` kept under `key`, here or on a peer replica; None if nothing
        (or if the shared backend cannot be asked now)."""
