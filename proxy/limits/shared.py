"""A client's cluster-wide request limit (`rpm`), taken from the shared backend in chunks.

Awaiting Redis on every request would cost about half of the proxy's per-request CPU
budget (README, "Scaling out"). So a replica takes *grants* from the shared sliding
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
"""

from __future__ import annotations

import asyncio
import time

from proxy.state.base import StateBackend

__all__ = ["GRANT_TTL_S", "SharedWindow"]

GRANT_TTL_S = 5.0  # grants not used within this long are dropped
WINDOW_S = 60.0


class SharedWindow:
    """This replica's grants against one client's cluster-wide per-minute limit."""

    __slots__ = ("_fetch", "available", "backend", "key", "limit", "retry_after_s", "taken_at")

    def __init__(self, backend: StateBackend, key: str, limit: int) -> None:
        self.backend = backend
        self.key = key
        self.limit = limit
        self.available = 0
        self.taken_at = 0.0
        self.retry_after_s = 0.0  # when the shared window last refused: its retry hint
        self._fetch: asyncio.Task[None] | None = None

    def chunk(self) -> int:
        return max(1, self.limit // (4 * self.backend.replicas))

    def fits(self, now: float) -> bool:
        """A grant is at hand (call `ready` first so one has been fetched if possible)."""
        if self.available and now - self.taken_at > GRANT_TTL_S:
            self.available = 0
        return self.available > 0

    def take(self) -> None:
        self.available -= 1
        if self.available == 0:
            self._start()  # the next chunk is on its way before the next request asks

    async def ready(self) -> None:
        """Wait (one round trip) only if no grant is at hand."""
        if self.fits(time.monotonic()):
            return
        task = self._start()
        await asyncio.shield(task)

    def _start(self) -> asyncio.Task[None]:
        task = self._fetch
        if task is None or task.done():
            task = self._fetch = asyncio.get_running_loop().create_task(self._take_chunk())
        return task

    async def _take_chunk(self) -> None:
        result = await self.backend.hit(self.key, self.limit, WINDOW_S, self.chunk(), partial=True)
        now = time.monotonic()
        if result.granted:
            if not self.fits(now):
                self.available = 0
            self.available += result.granted
            self.taken_at = now
            self.retry_after_s = 0.0
        else:
            self.retry_after_s = result.retry_after_s
