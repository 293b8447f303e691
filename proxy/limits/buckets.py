"""Token buckets and daily counters with reservations: the arithmetic of client limits.

Both know about *reservations*: an admitted request holds its estimate until it settles
with the vendor's real usage. Admission may only hand out what is not held by requests in
flight, so fifty parallel agents cannot overshoot a limit by their concurrency; a request
bigger than what is left is still admitted when nothing else is in flight, so a limit
never locks a client out for good (it overshoots by at most that one request).
"""

from __future__ import annotations

__all__ = ["Bucket", "DayCounter"]


class Bucket:
    """A per-minute limit (`rpm`, `tpm`) as a token bucket: full at `capacity`, refilled at
    capacity per 60 s. This is what OpenAI's `x-ratelimit-reset-*` headers describe: the time
    until the bucket is full again."""

    __slots__ = ("capacity", "held", "level", "overdraft", "rate", "stamp")

    def __init__(self, capacity: float, now: float, *, overdraft: bool) -> None:
        # overdraft: a reservation bigger than the level is admitted when nothing else is
        # held (token limits: one request's size is only an estimate). Request counts do not.
        self.overdraft = overdraft
        self.capacity = float(capacity)
        self.rate = self.capacity / 60.0
        self.level = self.capacity
        self.held = 0.0  # reservations of requests in flight (already taken from `level`)
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def fits(self, amount: float) -> bool:
        """Whether a reservation of `amount` may be admitted now (call `refill` first)."""
        if self.level >= amount:
            return True
        return self.overdraft and self.held <= 0 and self.level > 0

    def wait_s(self, amount: float) -> float:
        """Seconds until `fits(amount)` holds by refill alone (in-flight refunds may be sooner)."""
        # Alone (overdraft), any positive level admits.
        target = 1e-6 if self.overdraft and self.held <= 0 else min(amount, self.capacity)
        return max(0.0, (target - self.level) / self.rate)

    def reserve(self, amount: float) -> None:
        self.level -= amount
        self.held += amount

    def settle(self, reserved: float, actual: float) -> None:
        """Replace a reservation by what the request really used (it may drive the level negative)."""
        self.held -= reserved
        self.level = min(self.capacity, self.level + reserved - actual)

    def remaining(self) -> int:
        return max(0, int(self.level))

    def reset_s(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)

    def fill(self) -> None:
        self.level = self.capacity


class DayCounter:
    """A per-UTC-day limit (`tokens_per_day`, `budget_usd_per_day`): used + held <= limit."""

    __slots__ = ("held", "limit", "used")

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)
        self.used = 0.0  # settled today (since the last admin reset)
        self.held = 0.0

    def fits(self, amount: float) -> bool:
        if self.used + self.held + amount <= self.limit:
            return True
        return self.held <= 0 and self.used < self.limit

    def reserve(self, amount: float) -> None:
        self.held += amount

    def settle(self, reserved: float, actual: float) -> None:
        self.held -= reserved
        self.used += actual

    def remaining(self) -> float:
        return max(0.0, self.limit - self.used - self.held)
