"""Keeps each replica's in-process deployment state in step with its peers'.

Routing reads `DeploymentState` without awaiting anything. This module turns a local
change of that state into a `Change` for the backend to publish, and folds peers'
changes back in. What travels is a table of field groups (data, not code paths): each
group says how to read its fields off a `DeploymentState` and how to apply them. A new
shared signal is one more row.

Times travel as wall-clock seconds (monotonic clocks are per process) and are turned
back into this process's monotonic time on arrival.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.health.breaker import BreakerState
from proxy.health.deployment import DeploymentState
from proxy.state.base import Change, StateBackend

__all__ = ["GROUPS", "FieldGroup", "StateSync"]

log = logging.getLogger("llmproxy.state")


def _to_wall(mono: float) -> float:
    return mono - time.monotonic() + time.time() if mono > 0 else 0.0


def _to_mono(wall: float) -> float:
    return wall - time.time() + time.monotonic() if wall > 0 else 0.0


@dataclass(frozen=True, slots=True)
class FieldGroup:
    """One part of a deployment's state that replicas share, and its wire fields."""

    name: str
    read: Callable[[DeploymentState], dict[str, str]]
    apply: Callable[[DeploymentState, Mapping[str, str]], None]


def _read_breaker(dep: DeploymentState) -> dict[str, str]:
    b = dep.breaker
    opened = _to_wall(b.opened_at) if b.state is BreakerState.OPEN else 0.0
    return {
        "state": b.state.label,
        "opened_at": repr(opened),
        "drained": "1" if b.drained else "0",
    }


def _apply_breaker(dep: DeploymentState, fields: Mapping[str, str]) -> None:
    dep.breaker.adopt(
        BreakerState[fields["state"].upper()],
        _to_mono(float(fields["opened_at"])),
        drained=fields.get("drained") == "1",
    )


def _read_cooldown(dep: DeploymentState) -> dict[str, str]:
    return {"until": repr(_to_wall(dep.cooldown_until)), "reason": dep.cooldown_reason}


def _apply_cooldown(dep: DeploymentState, fields: Mapping[str, str]) -> None:
    dep.cooldown_until = _to_mono(float(fields["until"]))
    dep.cooldown_reason = fields["reason"]


def _read_health(dep: DeploymentState) -> dict[str, str]:
    return {"healthy": "1" if dep.healthy else "0"}


def _apply_health(dep: DeploymentState, fields: Mapping[str, str]) -> None:
    healthy = {"1": True, "0": False}[fields["healthy"]]
    if healthy and not dep.healthy:
        dep.ewma_latency_s = None  # least-latency measures it afresh (as the prober does)
    dep.healthy = healthy


GROUPS: dict[str, FieldGroup] = {
    g.name: g
    for g in (
        FieldGroup("breaker", _read_breaker, _apply_breaker),
        FieldGroup("cooldown", _read_cooldown, _apply_cooldown),
        # The verdict of the replica holding the deployment's probe lease (health/checker.py).
        FieldGroup("health", _read_health, _apply_health),
    )
}


class StateSync:
    """Bridges the gateway's deployment states and a state backend.

    `versions` remembers, per (deployment, group), the (ts, origin) of the state this
    replica holds now, whether it made it or applied it: a peer's change is applied only
    if it is newer, and reconciliation writes only what is newer locally.
    """

    def __init__(
        self,
        backend: StateBackend,
        deployments: Callable[[], Mapping[str, DeploymentState]],
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.applying = False  # True while a peer's change is being applied (no echo)
        self.versions: dict[tuple[str, str], tuple[float, str]] = {}
        self._deployments = deployments
        self._on_event = on_event
        self._last_ts = 0.0

    def changed(self, dep_id: str, group: str) -> None:
        """This replica changed `group` of `dep_id`: stamp it and publish it."""
        if self.applying or not self.backend.shared:
            return
        dep = self._deployments().get(dep_id)
        if dep is None:
            return
        ts = self._last_ts = max(time.time(), self._last_ts + 1e-6)
        self.versions[(dep_id, group)] = (ts, self.backend.origin)
        self.backend.publish(
            Change(dep_id, group, GROUPS[group].read(dep), ts, self.backend.origin)
        )
        if self._on_event is not None:
            self._on_event("published")

    def apply(self, change: Change) -> bool:
        """Fold a peer's change in if it is newer than what this replica holds."""
        dep = self._deployments().get(change.deployment)
        group = GROUPS.get(change.group)
        if dep is None or group is None:
            return False  # not in this replica's config, or a field group it does not know
        key = (change.deployment, change.group)
        held = self.versions.get(key)
        if held is not None and not change.newer_than(*held):
            return False
        self.applying = True
        try:
            group.apply(dep, change.fields)
        except (KeyError, ValueError) as exc:
            log.warning(
                "ignored a malformed %s change for %s from %s: %s",
                change.group,
                change.deployment,
                change.origin,
                exc,
                extra={"event": "state_backend"},
            )
            return False
        finally:
            self.applying = False
        self.versions[key] = (change.ts, change.origin)
        if self._on_event is not None:
            self._on_event("applied")
        return True

    async def reconcile(self) -> None:
        """After (re)connecting: take what peers decided meanwhile, write what we did."""
        deployments = self._deployments()
        remote = await self.backend.snapshot(deployments)
        ours: list[Change] = []
        applied = 0
        for dep_id, dep in deployments.items():
            shared = remote.get(dep_id, {})
            for name, group in GROUPS.items():
                theirs = shared.get(name)
                held = self.versions.get((dep_id, name))
                if theirs is not None and (held is None or theirs.newer_than(*held)):
                    applied += self.apply(theirs)
                elif held is not None and (theirs is None or held > (theirs.ts, theirs.origin)):
                    # Ours, or a peer's that Redis lost (restarted empty): written with its
                    # original stamp, so replaying it anywhere changes nothing.
                    ours.append(Change(dep_id, name, group.read(dep), *held))
        if ours:
            await self.backend.write(ours)
        log.info(
            "state reconciled: %d applied from peers, %d written",
            applied,
            len(ours),
            extra={"event": "state_reconcile", "applied": applied, "written": len(ours)},
        )
