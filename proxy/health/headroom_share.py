"""A deployment's rate-limit headroom spent by every replica together, in grants.

Headroom belongs to the vendor account, not to the replica: two replicas that each see
"20 requests left" must not send 20 each. Asking Redis before every request would cost
half of a request's CPU budget (README, "Scaling out"), so, as client limits do
(proxy/limits/shared.py), a replica takes *grants* in chunks and spends them locally:

- The backend keeps the cluster's newest figures of each deployment (an answer's figures
  are as of the moment its request was sent; the newest wins, whichever replica got it)
  and each replica's *claim*: what it may spend beyond those figures, i.e. its requests
  sent after them and not answered yet plus the grants it holds. A replica is granted at
  most what the figures leave after every claim.
- A request goes to a deployment only if this replica's own view has room (the newest
  figures it knows, minus its own reservations) *and* it holds grants for it. The grants
  are spent as it is sent. A request that finds none skips the deployment (no headroom,
  for this replica) and the next chunk is fetched in the background: no request waits.
- Every grant call re-states this replica's claim from its own books (figures it knows,
  reservations since then), so claims shrink as answers come in, and carries its newest
  figures (the backend keeps them if they are newer) and brings back the cluster's.

Tolerance (the README documents it): a claim lapses `HEADROOM_CLAIM_TTL_S` after its
replica last asked (a crashed replica's grants free up by themselves), and grants at hand
are dropped after `GRANT_TTL_S`; an answer slower than that to a request sent after the
newest figures, with no other answer meanwhile, is forgotten by the others early. While the
backend is down a replica assumes `1 / replicas` of each figure.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from proxy.health.headroom import KIND_INDEX, Headroom, Need
from proxy.state.base import BucketClaim, HeadroomReport, StateBackend, StateBackendDown
from proxy.vendors.ratelimit import KINDS, Bucket

__all__ = ["GRANT_TTL_S", "RETRY_S", "HeadroomShare"]

log = logging.getLogger("llmproxy.state")

GRANT_TTL_S = (
    5.0  # grants not spent within this long are dropped (the backend's claim lapses later)
)
RETRY_S = 0.05  # after a refused or failed grant call, wait this long before the next one


def _to_wall(mono: float) -> float:
    return mono - time.monotonic() + time.time()


def _to_mono(wall: float) -> float:
    return wall - time.time() + time.monotonic()


class HeadroomShare:
    """This replica's grants of one deployment's headroom (`Headroom.share`)."""

    __slots__ = ("_fetch", "_held", "_next_at", "_taken_at", "backend", "deployment", "divisor")

    def __init__(self, backend: StateBackend, deployment: str) -> None:
        self.backend = backend
        self.deployment = deployment
        self.divisor = 1
        self._held = [0.0] * len(KINDS)
        self._taken_at = -math.inf
        self._next_at = -math.inf
        self._fetch: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ Share

    def grants(self, now: float) -> list[float] | None:
        backend = self.backend
        if not backend.up:
            self.divisor = max(1, backend.replicas)
            return None
        if now - self._taken_at > GRANT_TTL_S:
            held = self._held
            for i in range(len(held)):
                held[i] = 0.0
        return self._held

    def want(self, headroom: Headroom, now: float, need: Need) -> None:
        self._start(headroom, now, need)

    def took(self, headroom: Headroom, now: float, need: Need) -> None:
        if not self.backend.up:
            return
        held = self._held
        low = False
        prompt, completion = need
        for lim in headroom.limits:
            if lim.left(now) is None:
                continue
            i = lim.index
            amount = lim.need(prompt, completion)
            held[i] = max(0.0, held[i] - amount)
            if held[i] < 2 * amount:
                low = True
        if low:  # the next requests would find too little: fetch before they ask
            self._start(headroom, now, need)

    # ------------------------------------------------------------------ fetching

    def _start(self, headroom: Headroom, now: float, need: Need) -> None:
        if now < self._next_at or (self._fetch is not None and not self._fetch.done()):
            return
        report = self._report(headroom, now, need)
        self._fetch = asyncio.get_running_loop().create_task(self._take(headroom, report))

    def _report(self, headroom: Headroom, now: float, need: Need) -> HeadroomReport:
        """This replica's figures and claims: what it asks the backend."""
        by_kind = {lim.kind: lim for lim in headroom.limits}
        replicas = max(1, self.backend.replicas)
        prompt, completion = need
        claims = []
        for kind in KINDS:
            i = KIND_INDEX[kind]
            lim = by_kind.get(kind)
            held = math.ceil(self._held[i]) if now - self._taken_at <= GRANT_TTL_S else 0
            claim = headroom.pending(i) + held
            if lim is None:
                claims.append(BucketClaim(kind, None, None, None, claim, 0, 0))
                continue
            amount = lim.need(prompt, completion)
            left = lim.left(now)
            # Chunks of a quarter of this replica's share of what is left, as client
            # limits take theirs: few round trips, little held back from the others.
            chunk = max(1, int((left or 0.0) / (4 * replicas)))
            claims.append(
                BucketClaim(
                    kind,
                    lim.remaining,
                    lim.limit,
                    None if lim.reset_at is None else _to_wall(lim.reset_at),
                    claim,
                    max(chunk, amount),
                    amount,
                )
            )
        asof = _to_wall(headroom.asof) if headroom.limits else 0.0
        return HeadroomReport(asof, tuple(claims))

    async def _take(self, headroom: Headroom, report: HeadroomReport) -> None:
        try:
            grant = await self.backend.headroom(self.deployment, report)
        except StateBackendDown:
            self._next_at = time.monotonic() + RETRY_S
            return
        except Exception:  # the backend handles its own errors: this is a bug
            log.exception("taking headroom grants for %s failed", self.deployment)
            self._next_at = time.monotonic() + RETRY_S
            return
        now = time.monotonic()
        self.divisor = 1
        if now - self._taken_at > GRANT_TTL_S:
            self._held = [0.0] * len(KINDS)
        held = self._held
        short = False
        for claim, granted in zip(report.buckets, grant.granted, strict=True):
            held[KIND_INDEX[claim.kind]] += granted
            short = short or (claim.need > 0 and granted < claim.need)
        self._taken_at = now
        if short:
            self._next_at = now + RETRY_S
        if grant.asof > report.asof:  # a peer's answer is newer than this replica's figures
            self._adopt(headroom, grant.asof, report, grant.figures, now)

    def _adopt(
        self,
        headroom: Headroom,
        asof_wall: float,
        report: HeadroomReport,
        figures: tuple[tuple[float | None, float | None, float | None], ...],
        now: float,
    ) -> None:
        asof = _to_mono(asof_wall)
        if asof <= headroom.asof:
            return
        wall = time.time()
        buckets: list[Bucket] = [
            (claim.kind, remaining, limit, None if reset is None else max(0.0, reset - wall))
            for claim, (remaining, limit, reset) in zip(report.buckets, figures, strict=True)
            if remaining is not None
        ]
        if buckets:
            headroom.adopt(buckets, asof, now, peer=True)
