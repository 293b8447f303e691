"""Vendors' rate-limit headers (VENDOR_WIRE_FORMATS.md section 3): what is left, of what, until when.

OpenAI, Azure OpenAI, Groq and Mistral send `x-ratelimit-*` headers whose resets are Go
durations relative to the answer ("6m0s", "12ms"); Anthropic sends
`anthropic-ratelimit-*` headers whose resets are RFC 3339 timestamps. `read_buckets` turns
either into one neutral list of `Bucket`s, the classifier reads retry hints from the same
table, and routing keeps what the vendor said (proxy/health/headroom.py).

It runs on every answer, so it looks up a handful of header names and parses only the
values present; the common reset shapes skip the regular expression.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final

__all__ = [
    "KINDS",
    "RATE_LIMIT_HEADERS",
    "Bucket",
    "HeaderNames",
    "parse_go_duration",
    "parse_rfc3339",
    "read_buckets",
]

# The buckets a vendor may meter: the `kind` label of llmproxy_upstream_ratelimit_remaining.
KINDS: Final = ("requests", "tokens", "input_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class HeaderNames:
    """One vendor family's headers for one bucket."""

    kind: str
    remaining: str
    limit: str
    reset: str
    absolute_reset: bool  # True: an RFC 3339 timestamp (Anthropic); False: a Go duration


def _family(kind: str, pattern: str, absolute_reset: bool) -> HeaderNames:
    """The names `pattern` makes with its `{field}` as remaining, limit and reset."""
    remaining, limit, reset = (pattern.format(field=f) for f in ("remaining", "limit", "reset"))
    return HeaderNames(kind, remaining, limit, reset, absolute_reset)


RATE_LIMIT_HEADERS: tuple[HeaderNames, ...] = (
    _family("requests", "x-ratelimit-{field}-requests", False),
    _family("tokens", "x-ratelimit-{field}-tokens", False),
    _family("requests", "anthropic-ratelimit-requests-{field}", True),
    _family("tokens", "anthropic-ratelimit-tokens-{field}", True),
    _family("input_tokens", "anthropic-ratelimit-input-tokens-{field}", True),
    _family("output_tokens", "anthropic-ratelimit-output-tokens-{field}", True),
)


# A bucket as an answer reports it: (kind, remaining, limit, seconds until its reset); the
# limit is None when the vendor does not say (Azure), the reset when it gives none that
# parses. A plain tuple: one is built per bucket per answer, and a NamedTuple costs several
# times as much to build.
Bucket = tuple[str, float, float | None, float | None]

# The table as plain tuples, for the loop every answer runs.
_FAMILIES: Final = tuple(
    (h.kind, h.remaining, h.limit, h.reset, h.absolute_reset) for h in RATE_LIMIT_HEADERS
)
_INF: Final = math.inf


_GO_UNITS: Mapping[str, float] = MappingProxyType(
    {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}
)
_GO_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_GO_UNIT = r"(?:ns|us|µs|μs|ms|h|m|s)"  # "ms" before "m"
_GO_FULL_RE: Final = re.compile(rf"(?:{_GO_NUM}{_GO_UNIT})+")
_GO_PART_RE: Final = re.compile(rf"({_GO_NUM})({_GO_UNIT})")


def _plain_number(s: str) -> float | None:
    """`s` as a non-negative decimal ("1.5", "20"), or None (no sign, exponent or "inf")."""
    if not s or not s.replace(".", "", 1).isdigit():
        return None
    return float(s)


def parse_go_duration(s: str) -> float | None:
    """Seconds in a Go `time.Duration` string ("6m0s", "1h2m3.5s", "12ms", "9m38.016s").

    OpenAI and Groq send their `x-ratelimit-reset-*` headers and "try again in" hints in this
    format. Returns None for anything that is not a whole, non-negative duration (so a garbage
    header never turns into a zero cooldown). Trailing sentence punctuation is tolerated
    because the value is also cut out of prose ("Please try again in 4.77s.").
    """
    if not isinstance(s, str) or len(s) > 64:
        return None
    s = s.strip().rstrip(".,;")
    if s == "0":
        return 0.0
    # The shapes of nearly every header ("1s", "59.4s", "120ms") without the regex.
    if s.endswith("ms"):
        value = _plain_number(s[:-2])
        if value is not None:
            return value / 1000.0
    elif s.endswith("s"):
        value = _plain_number(s[:-1])
        if value is not None:
            return value
    if not s or _GO_FULL_RE.fullmatch(s) is None:
        return None
    total = sum(float(num) * _GO_UNITS[unit] for num, unit in _GO_PART_RE.findall(s))
    return total if math.isfinite(total) else None


def parse_rfc3339(raw: str) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp ("2025-08-21T12:40:59Z", fractions allowed)."""
    if not isinstance(raw, str) or len(raw) > 64:
        return None
    try:
        at = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    try:
        return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def _reset_duration(raw: str) -> float | None:
    """A reset header's Go duration: the plain "1.5s" / "120ms" without the regex, else
    `parse_go_duration`."""
    try:
        if raw.endswith("ms"):
            value = float(raw[:-2]) / 1000.0
        elif raw.endswith("s") and raw[-2:-1].isdigit():
            value = float(raw[:-1])
        else:
            return parse_go_duration(raw)
    except ValueError:
        return parse_go_duration(raw)
    return value if 0.0 <= value < math.inf else None


def _count(raw: str | None) -> float | None:
    if raw is None or len(raw) > 32:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    # Azure's Responses surface has been seen sending -1: not a count.
    return value if value >= 0 and math.isfinite(value) else None


# Limits and resets repeat from one answer to the next (a limit for months, an Anthropic
# reset for a window, OpenAI's "6ms" and "0s" all day): parsed once. Bounded: emptied
# when it grows past this.
_CACHE_MAX = 256
_limits: dict[str, float | None] = {}
_resets_in: dict[str, float | None] = {}
_resets_at: dict[str, float | None] = {}


def _cached(
    cache: dict[str, float | None], raw: str, parse: Callable[[str], float | None]
) -> float | None:
    try:
        return cache[raw]
    except KeyError:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        value = cache[raw] = parse(raw)
        return value


def read_buckets(headers: Mapping[str, str], now_wall: float | None = None) -> list[Bucket] | None:
    """The rate limits an answer reports (header names lower-case), or None if it reports none.

    `now_wall` (epoch seconds, default now) turns Anthropic's absolute resets into seconds
    from now.
    """
    found: list[Bucket] | None = None
    get = headers.get
    for kind, remaining_name, limit_name, reset_name, absolute in _FAMILIES:
        raw = get(remaining_name)
        if raw is None:  # most vendors, most headers: nothing else to do
            continue
        try:
            remaining = float(raw)
        except ValueError:
            continue
        if not 0.0 <= remaining < _INF:  # -1 (Azure's Responses surface), nan, inf: no count
            continue
        raw = get(limit_name)
        limit = None if raw is None else _cached(_limits, raw, _count)
        raw = get(reset_name)
        reset: float | None = None
        if raw is not None:
            if absolute:
                at = _cached(_resets_at, raw, parse_rfc3339)
                if at is not None:
                    reset = max(0.0, at - (time.time() if now_wall is None else now_wall))
            else:
                reset = _cached(_resets_in, raw, _reset_duration)
        if found is None:
            found = [(kind, remaining, limit, reset)]
        else:
            found.append((kind, remaining, limit, reset))
    return found
