"""Routing strategies: given the usable deployments of a group, the order to try them in.

A strategy only orders; which deployments are usable (breaker, cooldown, health, caps)
is the router's business, so every strategy gets failover for free: the rest of the
order is the failover sequence. `order` runs once per request on the hot path, over a
handful of members: no allocation beyond the result, no I/O.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from proxy.config import ModelGroupConfig
from proxy.health.deployment import DeploymentState
from proxy.vendors.base import UpstreamCall

__all__ = [
    "STRATEGIES",
    "CacheAffinity",
    "LeastBusy",
    "LeastLatency",
    "Member",
    "Priority",
    "Strategy",
    "Weighted",
    "affinity_key",
]

Member = tuple[DeploymentState, float]  # a deployment and its weight in this group


class Strategy(ABC):
    """Orders a group's usable members. One instance per model group (it may keep state)."""

    def __init__(self, config: ModelGroupConfig, members: Sequence[Member]) -> None:
        """`members` are all of the group's members, in config order."""

    @abstractmethod
    def order(
        self, members: Sequence[Member], call: UpstreamCall, now: float
    ) -> list[DeploymentState]:
        """`members` are the usable ones, in config order; return the attempt order."""


class Priority(Strategy):
    """Ordered failover: the first usable deployment in config order takes all traffic."""

    def order(
        self, members: Sequence[Member], call: UpstreamCall, now: float
    ) -> list[DeploymentState]:
        return [dep for dep, _ in members]


class Weighted(Strategy):
    """Smooth weighted round-robin (nginx's): spreads traffic by weight without bursts.

    Each pick adds every member's weight to its running score, takes the highest and
    subtracts the total from it. With weights 5:1:1 the sequence is a a b a c a a, not
    a a a a a b c. The remaining members follow by weight as failover candidates.
    """

    def __init__(self, config: ModelGroupConfig, members: Sequence[Member]) -> None:
        self._score: dict[str, float] = {}

    def order(
        self, members: Sequence[Member], call: UpstreamCall, now: float
    ) -> list[DeploymentState]:
        if len(members) <= 1:
            return [dep for dep, _ in members]
        score = self._score
        total = 0.0
        best: DeploymentState | None = None
        best_score = float("-inf")
        for dep, weight in members:
            s = score.get(dep.id, 0.0) + weight
            score[dep.id] = s
            total += weight
            if s > best_score:
                best, best_score = dep, s
        assert best is not None
        score[best.id] = best_score - total
        rest = sorted((m for m in members if m[0] is not best), key=lambda m: -m[1])
        return [best, *(dep for dep, _ in rest)]


class LeastLatency(Strategy):
    """Lowest expected latency first: the EWMA of recent attempts, scaled by load.

    The EWMA is of time to the first byte for streams and of the whole answer for JSON
    (`DeploymentState.note_latency`). Scaling it by (1 + in-flight) (Finagle's peak EWMA)
    keeps a burst from piling onto the one fastest deployment. A deployment with no
    sample yet (new, or back from an outage: its EWMA is reset then) is tried first while
    it has nothing in flight, so it is measured with one request rather than flooded.
    Every `EXPLORE_EVERY`-th request leads with a runner-up, in rotation, so the ranking
    follows deployments that became faster since they were last measured.
    """

    EXPLORE_EVERY = 20

    def __init__(self, config: ModelGroupConfig, members: Sequence[Member]) -> None:
        self._count = 0

    @staticmethod
    def _cost(member: Member) -> tuple[int, float]:
        dep = member[0]
        ewma = dep.ewma_latency_s
        if ewma is None:
            return (0, 0.0) if dep.in_flight == 0 else (2, float(dep.in_flight))
        return (1, ewma * (1 + dep.in_flight))

    def order(
        self, members: Sequence[Member], call: UpstreamCall, now: float
    ) -> list[DeploymentState]:
        ranked = [dep for dep, _ in sorted(members, key=self._cost)]
        n = len(ranked)
        if n > 1:
            self._count += 1
            if self._count % self.EXPLORE_EVERY == 0:
                explore = 1 + (self._count // self.EXPLORE_EVERY) % (n - 1)
                ranked.insert(0, ranked.pop(explore))
        return ranked


class LeastBusy(Strategy):
    """Fewest in-flight attempts (relative to weight) first; ties rotate so load spreads."""

    def __init__(self, config: ModelGroupConfig, members: Sequence[Member]) -> None:
        self._count = 0

    def order(
        self, members: Sequence[Member], call: UpstreamCall, now: float
    ) -> list[DeploymentState]:
        n = len(members)
        if n <= 1:
            return [dep for dep, _ in members]
        self._count += 1
        start = self._count % n
        rotated = [*members[start:], *members[:start]]
        rotated.sort(key=lambda m: m[0].in_flight / m[1])  # stable: ties keep the rotation
        return [dep for dep, _ in rotated]


# Bytes of prompt prefix hashed into an affinity key: enough to tell system prompts and
# opening messages apart, bounded so a megabyte prompt costs the same as a short one.
PREFIX_BYTES = 4096
_MASK64 = (1 << 64) - 1


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix(x: int) -> int:
    """splitmix64's finaliser: a uniform 64-bit value from (key hash ^ member salt)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _bounded_text(value: Any, out: list[str], budget: int, depth: int = 0) -> int:
    """Append at most `budget` characters of the text inside `value`; returns what is left."""
    if budget <= 0 or depth > 4:
        return budget
    if isinstance(value, str):
        piece = value[:budget]
        out.append(piece)
        return budget - len(piece)
    if isinstance(value, list):
        for item in value:
            budget = _bounded_text(item, out, budget, depth + 1)
            if budget <= 0:
                break
    elif isinstance(value, dict):
        for item in value.values():
            budget = _bounded_text(item, out, budget, depth + 1)
            if budget <= 0:
                break
    return budget


def _stable_prefix(parsed: dict[str, Any]) -> bytes:
    """The system prompt and first message (chat), or the prompt/input, at most PREFIX_BYTES."""
    messages = parsed.get("messages")
    if isinstance(messages, list) and messages:
        first = messages[0]
        system = isinstance(first, dict) and first.get("role") in ("system", "developer")
        head: Any = [
            m.get("content") if isinstance(m, dict) else m for m in messages[: 2 if system else 1]
        ]
    else:
        head = parsed.get("prompt", parsed.get("input"))
    out: list[str] = []
    _bounded_text(head, out, PREFIX_BYTES)
    return "\x00".join(out).encode("utf-8", "surrogatepass")[:PREFIX_BYTES]


def affinity_key(call: UpstreamCall) -> bytes:
    """What keeps a conversation on one deployment: the client's `x-session-id` header,
    else the OpenAI `user` field, else the request's stable prefix (system prompt + first
    message), which is what a vendor's prompt cache is keyed on anyway."""
    if call.session_id:
        return b"s:" + call.session_id.encode("utf-8", "surrogatepass")
    user = call.parsed.get("user")
    if isinstance(user, str) and user:
        return b"u:" + user.encode("utf-8", "surrogatepass")
    return b"p:" + _stable_prefix(call.parsed)


class CacheAffinity(Strategy):
    """Rendezvous (highest-random-weight) hashing of the affinity key over usable deployments.

    Each (key, deployment) pair gets a pseudo-random score; the highest usable one serves,
    so repeated prompts and sessions land on the deployment whose prompt cache is warm.
    Losing a deployment moves only the keys it was first for (to their second choice).
    A deployment coming back from an outage (unhealthy, cooling or breaker not closed)
    gets its keys back only after it has been usable for `affinity_hold_s`: until then it
    ranks after the settled ones, so a flapping vendor does not flap everyone's caches.
    Weights scale each deployment's share (weighted rendezvous: -w / ln(u)).
    """

    def __init__(self, config: ModelGroupConfig, members: Sequence[Member]) -> None:
        self.hold_s = config.affinity_hold_s
        self._all = tuple(dep for dep, _ in members)
        self._salt = {dep.id: _h64(dep.id.encode()) for dep, _ in members}
        self._weighted = len({w for _, w in members}) > 1
        self._down_at: dict[str, float] = {}  # deployment id -> last time it was seen down

    def order(
        self, members: Sequence[Member], call: UpstreamCall, now: float
    ) -> list[DeploymentState]:
        down_at = self._down_at
        if len(members) < len(self._all):
            usable = {dep.id for dep, _ in members}
            for dep in self._all:
                if dep.id not in usable and dep.down(now):
                    down_at[dep.id] = now
        key = _h64(affinity_key(call))
        salt = self._salt
        if self._weighted:
            scored = [
                (-w / math.log(((_mix(key ^ salt[d.id]) >> 11) + 0.5) / 2.0**53), d)
                for d, w in members
            ]
        else:
            scored = [(float(_mix(key ^ salt[d.id])), d) for d, _ in members]
        scored.sort(key=lambda s: s[0], reverse=True)
        ranked = [dep for _, dep in scored]
        if not down_at:
            return ranked
        settled: list[DeploymentState] = []
        returning: list[DeploymentState] = []
        for dep in ranked:
            since = down_at.get(dep.id)
            if since is None:
                settled.append(dep)
            elif now - since < self.hold_s:
                returning.append(dep)
            else:
                del down_at[dep.id]
                settled.append(dep)
        return settled + returning


STRATEGIES: dict[str, type[Strategy]] = {
    "priority": Priority,
    "weighted": Weighted,
    "least-latency": LeastLatency,
    "least-busy": LeastBusy,
    "cache-affinity": CacheAffinity,
}
