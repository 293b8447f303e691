"""Routing strategies: given the usable deployments of a group, the order to try them in.

A strategy only orders; which deployments are usable (breaker, cooldown, health) is the
router's business, so every strategy gets failover for free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from proxy.health.deployment import DeploymentState

__all__ = ["STRATEGIES", "Member", "Priority", "Strategy", "Weighted"]

Member = tuple[DeploymentState, float]  # a deployment and its weight in this group


class Strategy(ABC):
    """Orders a group's usable members; called once per request on the hot path."""

    @abstractmethod
    def order(self, members: Sequence[Member]) -> list[DeploymentState]:
        """`members` are in config order; return the attempt order."""


class Priority(Strategy):
    """Ordered failover: the first usable deployment in config order takes all traffic."""

    def order(self, members: Sequence[Member]) -> list[DeploymentState]:
        return [dep for dep, _ in members]


class Weighted(Strategy):
    """Smooth weighted round-robin (nginx's): spreads traffic by weight without bursts.

    Each pick adds every member's weight to its running score, takes the highest and
    subtracts the total from it. With weights 5:1:1 the sequence is a a b a c a a, not
    a a a a a b c. The remaining members follow by weight as failover candidates.
    """

    def __init__(self) -> None:
        self._score: dict[str, float] = {}

    def order(self, members: Sequence[Member]) -> list[DeploymentState]:
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


STRATEGIES: dict[str, type[Strategy]] = {"priority": Priority, "weighted": Weighted}
