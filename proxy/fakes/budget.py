"""A vendor account's rate limit: requests and tokens per window, reported and enforced.

Real vendors meter an account (OpenAI per organization and model, Anthropic per
organization) and say on every answer how much is left until when: OpenAI and Azure in
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with Go-duration resets
("1.5s"), Anthropic in `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`
with RFC 3339 resets. A request over the budget gets the vendor's 429 with `retry-after`.

The meter uses fixed windows, `window_s` long, from the first request: a window's
requests and tokens are counted when each request is admitted (as OpenAI charges its
prompt plus `max_tokens` up front) and the budget is whole again when the window ends.
Resets are rounded up (to the millisecond, and Anthropic's to the second, the precision
of its headers), so a client that trusts them never comes back early.

Pure logic with an injectable clock: the fakes (`FakeVendor.budget`) and the benchmark's
lean upstream (bench/upstream.py) use the same meter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["BUDGET_STYLES", "Budget", "BudgetMeter"]

#: Header families a meter can speak: OpenAI's (also Azure's) and Anthropic's.
BUDGET_STYLES = ("openai", "anthropic")


@dataclass(frozen=True, slots=True)
class Budget:
    """What an account may spend per window; None leaves that bucket unmetered."""

    requests: int | None = None
    tokens: int | None = None
    window_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("requests", "tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0 or null, got {value!r}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget | None:
        """The JSON of ``POST /_fake/budget``; ``{}`` (or null limits) means unmetered."""
        unknown = set(data) - {"requests", "tokens", "window_s"}
        if unknown:
            raise ValueError(f"unknown budget field(s) {sorted(unknown)}")
        budget = cls(**data)
        return None if budget.requests is None and budget.tokens is None else budget

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "tokens": self.tokens, "window_s": self.window_s}


class BudgetMeter:
    """The running count of one account's budget."""

    __slots__ = (
        "_clock",
        "_start",
        "_wall",
        "admitted",
        "budget",
        "refused",
        "style",
        "used_requests",
        "used_tokens",
    )

    def __init__(
        self,
        budget: Budget,
        style: str | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if style is not None and style not in BUDGET_STYLES:
            raise ValueError(f"unknown budget header style {style!r}; known: {BUDGET_STYLES}")
        self.budget = budget
        self.style = style  # None: enforced, not reported (Gemini sends no such headers)
        self._clock = clock
        self._wall = wall
        self._start: float | None = None
        self.used_requests = 0
        self.used_tokens = 0
        self.admitted = 0
        self.refused = 0  # 429s the budget answered

    def _roll(self, now: float) -> float:
        """Start of the current window (whole windows from the first request)."""
        start = self._start
        window = self.budget.window_s
        if start is None:
            start = now
        elif now >= start + window:
            start += math.floor((now - start) / window) * window
            self.used_requests = self.used_tokens = 0
        self._start = start
        return start

    def admit(self, tokens: int) -> float | None:
        """Count a request costing `tokens`; None if admitted, else seconds until it would be."""
        now = self._clock()
        start = self._roll(now)
        b = self.budget
        over = (b.requests is not None and self.used_requests + 1 > b.requests) or (
            b.tokens is not None and self.used_tokens + tokens > b.tokens
        )
        if over:
            self.refused += 1
            return start + b.window_s - now
        self.used_requests += 1
        self.used_tokens += tokens
        self.admitted += 1
        return None

    def reset_in(self) -> float:
        """Seconds until the budget is whole again (rounded up to the millisecond)."""
        now = self._clock()
        start = self._roll(now)
        return math.ceil(max(0.0, start + self.budget.window_s - now) * 1000) / 1000

    def headers(self) -> dict[str, str]:
        """The rate-limit headers of an answer given now."""
        if self.style is None:
            return {}
        reset = self.reset_in()
        b = self.budget
        buckets = (
            ("requests", b.requests, self.used_requests),
            ("tokens", b.tokens, self.used_tokens),
        )
        out: dict[str, str] = {}
        if self.style == "openai":
            text = f"{reset:.3f}".rstrip("0").rstrip(".") + "s"
            for name, limit, used in buckets:
                if limit is not None:
                    out[f"x-ratelimit-limit-{name}"] = str(limit)
                    out[f"x-ratelimit-remaining-{name}"] = str(max(0, limit - used))
                    out[f"x-ratelimit-reset-{name}"] = text
        else:
            at = datetime.fromtimestamp(math.ceil(self._wall() + reset), UTC)
            stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            for name, limit, used in buckets:
                if limit is not None:
                    out[f"anthropic-ratelimit-{name}-limit"] = str(limit)
                    out[f"anthropic-ratelimit-{name}-remaining"] = str(max(0, limit - used))
                    out[f"anthropic-ratelimit-{name}-reset"] = stamp
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state, for ``/_fake/stats``."""
        return {
            **self.budget.to_dict(),
            "style": self.style,
            "used_requests": self.used_requests,
            "used_tokens": self.used_tokens,
            "admitted": self.admitted,
            "refused": self.refused,
        }
