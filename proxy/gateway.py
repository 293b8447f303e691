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
from proxy.health.deployment import DeploymentState
from proxy.limits import Limits, UsageLedger
from proxy.limits.ledger import utc_day
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
        self.ledger = UsageLedger(config.state.sqlite_path)
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
        self.limits = Limits(config, self.metrics, self.ledger)

    def _breaker_changed(self, dep_id: str, state: BreakerState) -> None:
        log.warning(
            "breaker %s for deployment %s",
            state.name.lower().replace("_", "-"),
            dep_id,
            extra={"event": "breaker_state", "deployment": dep_id, "state": state.name.lower()},
        )

    def _gauge_snapshot(self) -> Iterator[tuple[str, int, bool, float]]:
        import time

        now = time.monotonic()
        for dep in self.deployments.values():
            yield dep.id, int(dep.breaker.state), dep.healthy, dep.cooldown_left(now)

    async def start(self) -> None:
        import time

        await self.ledger.open(utc_day(time.time()))
        self.limits.load()
        self.limits.log_mode()
        if self.config.server.admin_key_sha256 is None:
            log.warning(
                "no admin key configured (server.admin_key or server.admin_key_sha256): the "
                "admin API answers loopback clients only",
                extra={"event": "admin_loopback_only"},
            )
        for adapter in self.adapters.values():
            await adapter.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        for adapter in self.adapters.values():
            await adapter.close()
        await self.ledger.close()
