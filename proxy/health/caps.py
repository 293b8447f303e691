"""Per-deployment capacity caps (`max_concurrent`, `rpm`, `tpm`) that routing respects.

A vendor answers a deployment pushed past its own limits with a 429 and a cooldown; the
caps let an operator who knows those limits skip the deployment *before* it says no.
Requests and tokens per minute use a sliding-window counter (two fixed one-minute
windows, the previous weighted by how much of it still overlaps the last 60 s): O(1) per
request, at most a few percent off a true sliding log.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DeploymentCaps", "SlidingWindow"]

WINDOW_S = 60.0


class SlidingWindow:
    """An approximate count of events over the last minute."""

    __slots__ = ("current", "previous", "start")

    def __init__(self) -> None:
        self.start = float("-inf")
        self.current = 0
        self.previous = 0

    def _roll(self, now: float) -> None:
        elapsed = now - self.start
        if elapsed < WINDOW_S:
            return
        if elapsed < 2 * WINDOW_S:
            self.previous, self.start = self.current, self.start + WINDOW_S
        else:  # idle for two windows or more (or never used): start afresh
            self.previous, self.start = 0, now
        self.current = 0

    def used(self, now: float) -> float:
        self._roll(now)
        overlap = 1.0 - (now - self.start) / WINDOW_S
        return self.previous * overlap + self.current

    def add(self, now: float, n: int = 1) -> None:
        self._roll(now)
        self.current += n

    def free_in(self, now: float, limit: int) -> float:
        """Seconds until `used` falls below `limit` if nothing more is added."""
        self._roll(now)
        if self.current >= limit:  # wait for this window to become the (decaying) previous one
            return self.start + WINDOW_S - now + WINDOW_S * (1.0 - limit / self.current)
        if self.previous == 0:
            return 0.0
        # previous * (1 - t / W) + current < limit  <=>  t > W * (1 - (limit - current) / previous)
        t = WINDOW_S * (1.0 - (limit - self.current) / self.previous)
        return max(0.0, self.start + t - now)


class DeploymentCaps:
    """The caps of one deployment; `None` for a cap means unlimited."""

    __slots__ = ("max_concurrent", "requests", "rpm", "tokens", "tpm")

    def __init__(self, max_concurrent: int | None, rpm: int | None, tpm: int | None) -> None:
        self.max_concurrent = max_concurrent
        self.rpm = rpm
        self.tpm = tpm
        self.requests = SlidingWindow()
        self.tokens = SlidingWindow()

    def admits(self, now: float, in_flight: int) -> bool:
        """Whether one more attempt fits under every cap."""
        if self.max_concurrent is not None and in_flight >= self.max_concurrent:
            return False
        if self.rpm is not None and self.requests.used(now) >= self.rpm:
            return False
        return self.tpm is None or self.tokens.used(now) < self.tpm

    def free_in(self, now: float) -> float:
        """Seconds until the per-minute caps admit again (a concurrency slot can free any time)."""
        waits = [0.0]
        if self.rpm is not None:
            waits.append(self.requests.free_in(now, self.rpm))
        if self.tpm is not None:
            waits.append(self.tokens.free_in(now, self.tpm))
        return max(waits)

    def started(self, now: float) -> None:
        """One attempt was sent to the deployment."""
        if self.rpm is not None:
            self.requests.add(now)

    def spent(self, now: float, tokens: int) -> None:
        """Tokens the vendor reported for a finished attempt."""
        if self.tpm is not None and tokens:
            self.tokens.add(now, tokens)

    def status(self, now: float, in_flight: int) -> dict[str, Any]:
        return {
            "max_concurrent": self.max_concurrent,
            "rpm": self.rpm,
            "rpm_used": round(self.requests.used(now), 1) if self.rpm is not None else None,
            "tpm": self.tpm,
            "tpm_used": round(self.tokens.used(now), 1) if self.tpm is not None else None,
            "at_cap": not self.admits(now, in_flight),
        }
