"""Rate-limit headroom per deployment: what its vendor said is left, minus what is on its way.

Vendors that meter an account (OpenAI, Azure, Anthropic, Groq, Mistral) say on every
answer, success or not, how many requests and tokens are left until each reset
(`proxy.vendors.ratelimit`). Routing skips a deployment whose headroom cannot take a
request (`Router.plan`), instead of spending an attempt and a failover to hear the 429.

The accounting. An answer's figures hold as of the moment its request reached the
vendor. Requests sent after that one and not answered yet are not in them, so each attempt
*reserves* what it may cost (one request; the client limits' token estimate) from the
moment it is sent until its answer's headers arrive, and a bucket's headroom is the newest
answer's figure minus the reservations of the requests sent after that answer's request.
Answers are ordered by when their requests were sent: a slow answer about an old request
never overwrites a fresher figure. A bucket is full again (its limit, when the vendor
gives it) at its reset, until the next answer says otherwise; a bucket without a reset
never decides routing (when it refills is unknown), it is only shown.

Unknown is not zero: before the first header, and for vendors that send none, routing is
what it always was. With a shared state backend the reservations count cluster-wide
(`proxy.health.headroom_share`).

Hot path: `fits` is a few float operations per reported bucket and allocates nothing;
`reserve`/`answered` are a dict insert and pop per attempt, plus reading the headers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from proxy.core.usage import estimate_tokens
from proxy.vendors.ratelimit import KINDS, Bucket, read_buckets

__all__ = ["KIND_INDEX", "Headroom", "Need", "Share", "capacity_ratio", "request_need"]

Need = tuple[int, int]  # (prompt tokens, completion tokens) a request may use

# What one request takes from each kind of bucket, as weights of (1 request, prompt
# tokens, completion tokens): the `tokens` bucket meters both, Anthropic's input and
# output buckets one each.
_USES: Mapping[str, tuple[int, int, int]] = {
    "requests": (1, 0, 0),
    "tokens": (0, 1, 1),
    "input_tokens": (0, 1, 0),
    "output_tokens": (0, 0, 1),
}
KIND_INDEX: Mapping[str, int] = {kind: i for i, kind in enumerate(KINDS)}
if set(_USES) != set(KINDS):  # pragma: no cover - a kind added to one table only
    raise RuntimeError("proxy.health.headroom._USES must cover every rate-limit kind")

_NEVER = -math.inf


# What a request may cost in tokens, (prompt, completion): the estimate client limits reserve
# (body / 4 + `max_tokens`), so a request is never routed on a smaller figure than it is
# admitted on.
request_need = estimate_tokens


class Share(Protocol):
    """This replica's part of a deployment's headroom cluster-wide (headroom_share.py)."""

    #: The part of a vendor figure this replica may assume while it cannot ask the others.
    divisor: int

    def grants(self, now: float) -> list[float] | None:
        """Grants at hand per kind (`KINDS` order), or None while the backend is down."""

    def want(self, headroom: Headroom, now: float, need: Need) -> None:
        """Grants are short for `need`: fetch more in the background (never awaited)."""

    def took(self, headroom: Headroom, now: float, need: Need) -> None:
        """A request of `need` was just sent on grants."""


class _Limit:
    """One bucket as the newest answer reported it (monotonic times)."""

    __slots__ = ("index", "kind", "limit", "remaining", "reset_at", "w_in", "w_out", "w_req")

    def __init__(self, bucket: Bucket, now: float) -> None:
        kind, self.remaining, self.limit, reset_in = bucket
        self.kind = kind
        self.index = KIND_INDEX[kind]
        self.w_req, self.w_in, self.w_out = _USES[kind]
        self.reset_at = None if reset_in is None else now + reset_in

    def left(self, now: float) -> float | None:
        """What the vendor had left as of the answer, or at its reset the limit; None: this
        bucket cannot decide routing (no reset given, or full again at an unknown limit)."""
        reset_at = self.reset_at
        if reset_at is None:
            return None
        return self.remaining if now < reset_at else self.limit

    def need(self, prompt: int, completion: int) -> int:
        return self.w_req + self.w_in * prompt + self.w_out * completion


class Headroom:
    """The headroom of one deployment, shared by every model group that routes to it."""

    __slots__ = (
        "_flight",
        "_seq",
        "asof",
        "limits",
        "peer",
        "pend_in",
        "pend_out",
        "pend_req",
        "share",
    )

    def __init__(self) -> None:
        # The newest answer's buckets (empty: unknown) and when its request was sent.
        self.limits: tuple[_Limit, ...] = ()
        self.asof = _NEVER
        self.peer = False  # the figures came from a peer replica's answer
        # Attempts not answered yet: ticket -> (sent at, prompt, completion), in send order.
        self._flight: dict[int, tuple[float, int, int]] = {}
        self._seq = 0
        # The reservations of those sent after `asof` (what the figures do not count yet).
        self.pend_req = 0
        self.pend_in = 0
        self.pend_out = 0
        self.share: Share | None = None

    # ------------------------------------------------------------------ routing

    def fits(self, now: float, need: Need) -> bool:
        """Whether every bucket that can decide has room for one more request of `need`."""
        prompt, completion = need
        share = self.share
        divisor = 1
        grants = None
        if share is not None:
            grants = share.grants(now)
            if grants is None:
                divisor = share.divisor
        for lim in self.limits:  # `left` and `need` inlined: this runs for every request
            reset_at = lim.reset_at
            if reset_at is None:
                continue
            left = lim.remaining if now < reset_at else lim.limit
            if left is None:
                continue
            w_req, w_in, w_out = lim.w_req, lim.w_in, lim.w_out
            amount = w_req + w_in * prompt + w_out * completion
            pending = w_req * self.pend_req + w_in * self.pend_in + w_out * self.pend_out
            if left / divisor - pending < amount:
                return False
            if grants is not None and grants[lim.index] < amount:
                assert share is not None
                share.want(self, now, need)
                return False
        return True

    def ready_at(self, now: float, need: Need) -> float:
        """When the buckets that are short for `need` reset (the soonest-free deployment is
        tried first when every one of a group is short)."""
        prompt, completion = need
        at = now
        for lim in self.limits:
            left = lim.left(now)
            if left is None or lim.reset_at is None:
                continue
            pending = (
                lim.w_req * self.pend_req + lim.w_in * self.pend_in + lim.w_out * self.pend_out
            )
            if left - pending < lim.need(prompt, completion):
                at = max(at, lim.reset_at)
        return at

    # ------------------------------------------------------------------ attempts

    def reserve(self, now: float, need: Need) -> int:
        """An attempt is being sent: hold its share until its answer; returns its ticket."""
        self._seq += 1
        ticket = self._seq
        prompt, completion = need
        self._flight[ticket] = (now, prompt, completion)
        if now > self.asof:
            self.pend_req += 1
            self.pend_in += prompt
            self.pend_out += completion
        share = self.share
        if share is not None and self.limits:
            share.took(self, now, need)
        return ticket

    def release(self, ticket: int) -> tuple[float, int, int] | None:
        """The attempt ended without an answer (cancelled, nothing sent): drop its reservation."""
        entry = self._flight.pop(ticket, None)
        if entry is not None and entry[0] > self.asof:
            self.pend_req -= 1
            self.pend_in -= entry[1]
            self.pend_out -= entry[2]
        return entry

    def answered(self, ticket: int, headers: Mapping[str, str], now: float) -> None:
        """An answer's headers arrived (success or failure): the vendor counts the request
        now, and its figures replace older ones."""
        entry = self.release(ticket)
        if entry is None or not headers:
            return
        sent_at = entry[0]
        if sent_at <= self.asof:
            return  # about an older request than the figures held: stale
        buckets = read_buckets(headers)
        if buckets is not None:
            self.adopt(buckets, sent_at, now, peer=False)

    def adopt(self, buckets: list[Bucket], asof: float, now: float, *, peer: bool) -> None:
        """Hold `buckets`, the figures of an answer to a request sent at `asof` (monotonic)."""
        limits = self.limits
        if len(limits) == len(buckets):
            # The same buckets as the last answer's, as nearly always: updated in place.
            for lim, (kind, remaining, limit, reset_in) in zip(limits, buckets, strict=True):
                if lim.kind != kind:  # another vendor family now (a reload changed it)
                    self.limits = tuple(_Limit(b, now) for b in buckets)
                    break
                lim.remaining = remaining
                lim.limit = limit
                lim.reset_at = None if reset_in is None else now + reset_in
        else:
            self.limits = tuple(_Limit(b, now) for b in buckets)
        self.asof = asof
        self.peer = peer
        req = tokens_in = tokens_out = 0
        if self._flight:
            for sent_at, prompt, completion in reversed(self._flight.values()):
                if sent_at <= asof:
                    break  # sent in order: the rest are older still
                req += 1
                tokens_in += prompt
                tokens_out += completion
        self.pend_req, self.pend_in, self.pend_out = req, tokens_in, tokens_out

    def forget(self) -> None:
        """Back to unknown (reservations in flight stay, and count against the next figures)."""
        self.limits = ()

    def pending(self, index: int) -> int:
        """Reservations not counted by the figures held, for the kind at `KINDS[index]`."""
        w_req, w_in, w_out = _USES[KINDS[index]]
        return w_req * self.pend_req + w_in * self.pend_in + w_out * self.pend_out

    # ------------------------------------------------------------------ ops

    def remaining(self) -> Iterator[tuple[str, float]]:
        """The vendor's figures as reported (llmproxy_upstream_ratelimit_remaining)."""
        for lim in self.limits:
            yield lim.kind, lim.remaining

    def capacity(self, now: float) -> Iterator[tuple[str, float, float]]:
        """(kind, left now, limit) of every bucket whose limit is known."""
        for lim in self.limits:
            left = lim.left(now)
            if lim.limit is None or left is None:
                continue
            yield lim.kind, max(0.0, left - self.pending(lim.index)), lim.limit

    def status(self, now: float) -> dict[str, Any] | None:
        """The `headroom` of a deployment in GET /admin/status (None: unknown)."""
        if not self.limits:
            return None
        buckets: dict[str, Any] = {}
        for lim in self.limits:
            left = lim.left(now)
            pending = self.pending(lim.index)
            buckets[lim.kind] = {
                "remaining": lim.remaining,
                "limit": lim.limit,
                "reset_in_s": None
                if lim.reset_at is None
                else round(max(0.0, lim.reset_at - now), 3),
                "reserved": pending,
                "left": None if left is None else max(0.0, left - pending),
            }
        return {
            "as_of_s": round(max(0.0, now - self.asof), 3),
            "source": "a peer replica" if self.peer else "this replica",
            "buckets": buckets,
            "summary": ", ".join(_summary(kind, b) for kind, b in buckets.items()),
        }


def _count(value: float | None) -> str:
    if value is None:
        return "?"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}"


def _summary(kind: str, bucket: Mapping[str, Any]) -> str:
    """ "tokens 31k/40k left, reset in 12.5 s": one bucket for the dashboard and the CLI."""
    left = bucket["left"] if bucket["left"] is not None else bucket["remaining"]
    text = f"{kind} {_count(left)}/{_count(bucket['limit'])} left"
    reset = bucket["reset_in_s"]
    return text + (f", reset in {reset:.1f} s" if reset is not None else ", reset unknown")


def capacity_ratio(headrooms: Iterable[Headroom], now: float) -> float:
    """The share of a group's rate-limit capacity left now (llmproxy_model_group_headroom_ratio).

    Per kind, what is left over the limits of the deployments that report one; the scarcest
    kind counts. 1 while any deployment has reported no limit: its capacity is unknown, which
    is not a shortage (e.g. a fallback that has not been needed yet).
    """
    left: dict[str, float] = {}
    total: dict[str, float] = {}
    for headroom in headrooms:
        known = False
        for kind, room, limit in headroom.capacity(now):
            known = True
            left[kind] = left.get(kind, 0.0) + room
            total[kind] = total.get(kind, 0.0) + limit
        if not known:
            return 1.0
    return min((left[k] / total[k] for k in total if total[k] > 0), default=1.0)
