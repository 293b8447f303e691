"""The running proxy's state: config, deployments, vendor adapters, router and metrics.

One `Gateway` lives for the whole process. Its deployment states (breakers, cooldowns,
latency) are keyed by deployment id so that a config generation that keeps a deployment
keeps its state too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from proxy.config import Config
from proxy.health.breaker import BreakerState
from proxy.health.checker import HealthChecker
from proxy.health.deployment import DeploymentState
from proxy.metrics import Metrics
from proxy.routing.router import ModelGroup, Router
from proxy.vendors import make_adapter
from proxy.vendors.base import VendorAdapter

__all__ = ["Gateway"]

log = logging.getLogger("llmproxy")


class Gateway:
    """Owns everything a request needs; built from a `Config`, started on the event loop."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.deployments: dict[str, DeploymentState] = {}
        self.adapters: dict[str, VendorAdapter] = {}
        self.config = config
        self.ready = False
        self._build(config)
        self.metrics.add_deployment_gauges(self._gauge_snapshot)

    def _build(self, config: Config) -> None:
        b = config.breaker
        for dep_id, dep_cfg in config.deployments.items():
            self.deployments[dep_id] = DeploymentState(
                dep_cfg, b.fail_max, b.reset_timeout_s, self._breaker_changed
            )
        self.adapters = {name: make_adapter(v) for name, v in config.vendors.items()}
        self.groups = {name: ModelGroup(g, self.deployments) for name, g in config.models.items()}
        self.router = Router(config, self.groups, self.adapters, self.metrics)
        self.health = HealthChecker(self.deployments, self.adapters, self.metrics)

    def _breaker_changed(self, dep_id: str, state: BreakerState) -> None:
        log.warning(
            "breaker %s for deployment %s",
            state.label,
            dep_id,
            extra={"event": "breaker_state", "deployment": dep_id, "state": state.name.lower()},
        )

    def _gauge_snapshot(self) -> Iterator[tuple[str, int, bool, float]]:
        import time

        now = time.monotonic()
        for dep in self.deployments.values():
            yield dep.id, int(dep.breaker.state), dep.healthy, dep.cooldown_left(now)

    async def start(self) -> None:
        for adapter in self.adapters.values():
            await adapter.start()
        self.health.start()  # probes run in the background: readiness does not wait on them
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.health.stop()
        for adapter in self.adapters.values():
            await adapter.close()
