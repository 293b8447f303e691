"""A client's cluster-wide per-minute limits (`rpm`, `tpm`), taken from the shared backend in chunks.

A Redis round trip costs more CPU than the rest of a proxied request (docs/performance.md),
so no request awaits one in the common case: a replica takes *grants* from the shared sliding
window a chunk at a time (one round trip for several requests) and hands them out
locally without awaiting; when the last one is handed out, the next chunk is fetched in
the background, and only a request that finds none left waits for it (one round trip,
shared by every request waiting at that moment).

The tolerance, what the README documents: the shared window counts a grant when it is
taken, not when it is used, so

- a replica's unused grants are counted anyway: the cluster may admit fewer than `limit`
  (at most `chunk` fewer per replica), and they are dropped after `GRANT_TTL_S`;
- a grant used up to `GRANT_TTL_S` after it was taken is counted in a slightly earlier
  window: any 60 s span admits at most `limit + replicas x chunk`, plus what the sliding
  window's estimate lets through (it assumes the previous minute's hits were spread evenly).

`chunk` is `limit / (4 x replicas)` (at least 1): 60 rpm on three replicas takes 5 at a time.
While the backend is down, grants come from this replica's share (`limit / replicas`).

Tokens (`tpm`) are reserved as an estimate and settled with the vendor's figure: what a
request did not use goes back to this replica's grants, and what it used beyond its
estimate is a deficit repaid from the next chunk, so the shared window ends up counting
the real usage (give or take grants that expired unused).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from proxy.state.base import StateBackend

__all__ = ["GRANT_TTL_S", "SharedWindow"]

log = logging.getLogger("llmproxy.state")

GRANT_TTL_S = 5.0  # grants not used within this long are dropped
WINDOW_S = 60.0


class SharedWindow:
    """This replica's grants against one client's cluster-wide per-minute limit (requests or tokens)."""

    __slots__ = ("_fetch", "available", "backend", "key", "limit", "retry_after_s", "taken_at")

    def __init__(self, backend: StateBackend, key: str, limit: int) -> None:
        self.backend = backend
        self.key = key
        self.limit = limit
        self.available = 0.0  # negative: used beyond the grants (a deficit the next chunk repays)
        self.taken_at = 0.0
        self.retry_after_s = 0.0  # when the shared window last refused: its retry hint
        self._fetch: asyncio.Task[None] | None = None

    def chunk(self) -> int:
        return max(1, self.limit // (4 * self.backend.replicas))

    def fits(self, now: float, amount: float = 1) -> bool:
        """`amount` is at hand in grants (call `ready` first so they have been fetched if possible)."""
        if self.available > 0 and now - self.taken_at > GRANT_TTL_S:
            self.available = 0.0
        return self.available >= amount

    def take(self, amount: float = 1) -> None:
        self.available -= amount
        if self.available <= 0:
            self._start(0)  # the next chunk is on its way before the next request asks

    def settle(self, reserved: float, actual: float) -> None:
        """A request's real usage replaces its reservation (tokens)."""
        self.available += reserved - actual

    async def ready(self, amount: float = 1) -> None:
        """Wait (one round trip) only if `amount` is not at hand."""
        if self.fits(time.monotonic(), amount):
            return
        await asyncio.shield(self._start(amount))

    def _start(self, amount: float) -> asyncio.Task[None]:
        task = self._fetch
        if task is None or task.done():
            # A chunk, or what this request lacks if more (plus any deficit, repaid).
            want = max(self.chunk(), math.ceil(amount - self.available))
            task = self._fetch = asyncio.get_running_loop().create_task(self._take_chunk(want))
        return task

    async def _take_chunk(self, want: int) -> None:
        try:
            result = await self.backend.hit(self.key, self.limit, WINDOW_S, want, partial=True)
        except Exception:  # backends fall back locally on their own errors: this is a bug
            log.exception("taking a chunk of %s from the state backend failed", self.key)
            self.retry_after_s = 1.0
            return
        now = time.monotonic()
        if result.granted:
            self.fits(now)  # drop expired grants first
            self.available += result.granted
            self.taken_at = now
            self.retry_after_s = 0.0
        else:
            self.retry_after_s = result.retry_after_s
