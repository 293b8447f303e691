"""The running proxy's state: config, deployments, vendor adapters, router and metrics.

One `Gateway` lives for the whole process. Its deployment states (breakers, cooldowns,
latency) are keyed by deployment id so that a config generation that keeps a deployment
keeps its state too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.config import Config, ConfigError, VendorConfig, load_config
from proxy.core.outcomes import POLICIES, FailoverRule, OutcomeClass
from proxy.health.breaker import BreakerState
from proxy.health.checker import HealthChecker
from proxy.health.deployment import DeploymentState
from proxy.health.sync import StateSync
from proxy.http1 import PoolState
from proxy.limits import Limits, UsageLedger
from proxy.limits.admission import UNKNOWN_CLIENT
from proxy.limits.checks import LIMITS
from proxy.limits.ledger import utc_day
from proxy.metrics import Metrics, SeriesPlan
from proxy.routing.router import HEDGE_LOST, ModelGroup, Router
from proxy.state import StateBackend, StateBackendDown, make_backend
from proxy.tracing import SpanDrops, start_tracing
from proxy.vendors import make_adapter
from proxy.vendors.base import VendorAdapter

if TYPE_CHECKING:
    from proxy.tracing.export import Tracing

__all__ = ["Gateway", "Generation"]

log = logging.getLogger("llmproxy")

USAGE_REFRESH_S = 1.0  # how often a replica reads the cluster's usage today (shared backend)
RETIRE_PROBES_S = 2.0  # how long stopping a retired generation's probes may take


@dataclass(frozen=True, slots=True, eq=False)
class Generation:
    """One config generation: everything a request needs, fixed for the request's life.

    A request takes `gateway.current` once, when it arrives, and reads only that until its
    answer is settled; a reload builds a new generation and swaps it in, so an in-flight
    request never pairs an old model group with a new router. Deployment states (breakers,
    cooldowns, latency) are shared by the generations that have the deployment.
    """

    config: Config
    groups: Mapping[str, ModelGroup]
    router: Router
    limits: Limits
    adapters: Mapping[str, VendorAdapter]
    tracing: Tracing | None = None  # None: this generation's requests are not traced


# Label values of the series born at 0 (proxy/metrics.py), from the outcome table.
_FAILURE_CLASSES = tuple(
    c for c in OutcomeClass if c not in (OutcomeClass.SUCCESS, OutcomeClass.CLIENT_CANCELLED)
)
_FAILOVER_REASONS = tuple(
    c
    for c, policy in POLICIES.items()
    if policy.fail_over in (FailoverRule.YES, FailoverRule.CONTEXT_FALLBACK)
)
_CLIENT_REASONS = (*LIMITS, "model_not_allowed")
_UNKNOWN_CLIENT_REASONS = ("missing_key", "invalid_key")


def _credentials(vendor: VendorConfig) -> tuple[object, ...]:
    """What a vendor authenticates with (a key may also be sent as a configured header)."""
    return vendor.api_key, tuple(sorted(vendor.headers.items()))


def series_plan(config: Config) -> SeriesPlan:
    """Every series of `config`'s deployments, groups and clients that alerts and panels read."""
    clients: dict[str, tuple[str, ...]] = {c.name: _CLIENT_REASONS for c in config.clients or ()}
    if config.clients is not None:
        clients[UNKNOWN_CLIENT] = _UNKNOWN_CLIENT_REASONS
    return SeriesPlan(
        groups={name: [m.deployment for m in g.members] for name, g in config.models.items()},
        deployments=list(config.deployments),
        clients=clients,
        attempt_classes=(*OutcomeClass, HEDGE_LOST),
        failover_reasons=_FAILOVER_REASONS,
        failure_classes=_FAILURE_CLASSES,
    )


class Gateway:
    """Owns everything a request needs; built from a `Config`, started on the event loop.

    `current` is the generation new requests run on. A reload builds a new one (new router,
    groups, limits, adapters where vendors changed), swaps it in, and retires the old one
    in the background: its adapters close once its last request has ended.
    """

    loop: asyncio.AbstractEventLoop  # the loop it was started on (set by `start`)

    def __init__(
        self, config: Config, metrics: Metrics | None = None, state: StateBackend | None = None
    ) -> None:
        self.metrics = metrics or Metrics()
        self.deployments: dict[str, DeploymentState] = {}
        # The backend is chosen once per process: `state:` changes take effect on restart.
        self.state = state or make_backend(config.state)
        self.sync = StateSync(self.state, lambda: self.deployments, self._state_event)
        self.state.bind(self.sync.apply, self.sync.reconcile, self._state_up)
        self.metrics.state_backend_up.set(1 if self.state.up else 0)
        self.ready = False
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._to_close: list[VendorAdapter] = []  # replaced by a reload, closed once idle
        self.ledger = UsageLedger(
            config.state.sqlite_path,
            self.state,
            create_directory=config.state.sqlite_path_is_default,
        )
        self._usage_task: asyncio.Task[None] | None = None
        self.span_drops = SpanDrops()
        self.current = self._swap(
            config,
            self._states_for(config),
            {n: make_adapter(v) for n, v in config.vendors.items()},
            self._limits_for(config, None),
            start_tracing(config.tracing, self.state.origin, self.span_drops),
        )
        self.metrics.add_deployment_gauges(self._gauge_snapshot, self._group_snapshot)
        self.metrics.add_pool_gauges(self._pool_snapshot)
        self.metrics.add_tracing_counters(self.span_drops.counts)
        self.metrics.add_client_gauges(lambda: self.current.limits.budget_use())

    # The current generation's parts, for the admin API, the status page and the CLI. A
    # request reads `current` once instead, so that a reload cannot change what it sees.
    @property
    def config(self) -> Config:
        return self.current.config

    @property
    def groups(self) -> Mapping[str, ModelGroup]:
        return self.current.groups

    @property
    def router(self) -> Router:
        return self.current.router

    @property
    def limits(self) -> Limits:
        return self.current.limits

    @property
    def adapters(self) -> Mapping[str, VendorAdapter]:
        return self.current.adapters

    def _states_for(self, config: Config) -> dict[str, DeploymentState]:
        """Deployment states for `config`: surviving ids keep theirs, new ids start fresh."""
        b = config.breaker
        states: dict[str, DeploymentState] = {}
        for dep_id, dep_cfg in config.deployments.items():
            state = self.deployments.get(dep_id)
            if state is None:
                state = DeploymentState(
                    dep_cfg, b.fail_max, b.reset_timeout_s, self._breaker_changed
                )
                state.on_change = self.sync.changed
            else:
                state.config = dep_cfg
                state.breaker.reconfigure(b.fail_max, b.reset_timeout_s)
            states[dep_id] = state
        return states

    def _swap(
        self,
        config: Config,
        states: dict[str, DeploymentState],
        adapters: dict[str, VendorAdapter],
        limits: Limits,
        tracing: Tracing | None,
    ) -> Generation:
        """Build the generation for `config`, make it current, and return it."""
        self.metrics.declare(series_plan(config))
        self.deployments = states
        for adapter in adapters.values():
            adapter.bind_metrics(self.metrics)
        groups = {name: ModelGroup(g, states) for name, g in config.models.items()}
        router = Router(config, groups, adapters, self.metrics)
        generation = Generation(config, groups, router, limits, adapters, tracing)
        self.current = generation
        previous: HealthChecker | None = getattr(self, "health", None)
        self.health = HealthChecker(
            states, adapters, self.metrics, leases=self.state.lease if self.state.shared else None
        )
        if previous is not None:
            self.health.adopt(previous)
        return generation

    def _limits_for(self, config: Config, previous: Limits | None) -> Limits:
        """Client limits for `config`; clients whose settings did not change keep their live counters."""
        limits = Limits(config, self.metrics, self.ledger, state=self.state)
        if previous is not None:
            for name, state in limits.clients.items():
                old = previous.clients.get(name)
                if old is not None and old.config == state.config:
                    limits.adopt(old)
            if self.ledger.opened:
                limits.load()  # changed or new clients start from today's recorded usage
        return limits

    async def reload(self, config: Config) -> None:
        """Serve `config` from now on; in-flight requests finish on the generation they started on.

        Only building and swapping the new generation happens under the reload lock; the old
        generation (its health checker, its probe leases, the adapters it alone used) is
        retired in the background, so a reload answers at once whatever the old one is doing.
        """
        async with self._reload_lock:
            if config.state != self.config.state:
                log.warning(
                    "the state: section changed; that takes effect at the next restart",
                    extra={"event": "config_reload_partial"},
                )
            old = self.current
            adapters: dict[str, VendorAdapter] = {}
            for name, vendor in config.vendors.items():
                current = old.adapters.get(name)
                if current is not None and current.config == vendor:
                    adapters[name] = current
                else:
                    adapters[name] = make_adapter(vendor)
                    await adapters[name].start()
            new_ids = set(config.deployments) - set(self.deployments)
            rotated = [
                name
                for name, vendor in config.vendors.items()
                if name in self.config.vendors
                and _credentials(self.config.vendors[name]) != _credentials(vendor)
            ]
            tracing = old.tracing
            if config.tracing != old.config.tracing:
                # Loading the SDK (the first time tracing is turned on) takes a while: not on the loop.
                tracing = await asyncio.get_running_loop().run_in_executor(
                    None, start_tracing, config.tracing, self.state.origin, self.span_drops
                )
            old_health = self.health
            self._swap(
                config,
                self._states_for(config),
                adapters,
                self._limits_for(config, old.limits),
                tracing,
            )
            for name in rotated:
                self._credentials_rotated(name)
            if self.ready:
                self.health.start()
            if new_ids and self.state.shared and self.state.up:
                self._background(self._reconcile())  # pick up what peers know of them
            retired = [a for name, a in old.adapters.items() if adapters.get(name) is not a]
            self._to_close.extend(retired)
            retired_tracing = old.tracing if old.tracing is not tracing else None
            self._background(self._retire(old, old_health, retired, retired_tracing))
        log.info(
            "config reloaded: version %s",
            config.version,
            extra={"event": "config_reload", "result": "success", "config_version": config.version},
        )

    def _credentials_rotated(self, vendor: str) -> None:
        """A vendor's key changed: its deployments' auth_error cooldowns were about the old one."""
        cleared = [
            dep.id
            for dep in self.deployments.values()
            if dep.config.vendor == vendor and dep.cooldown_reason == OutcomeClass.AUTH_ERROR
        ]
        for dep_id in cleared:
            self.deployments[dep_id].clear_cooldown()
        log.warning(
            "the credentials of vendor %s changed; %s",
            vendor,
            f"auth_error cooldown cleared for {', '.join(cleared)}"
            if cleared
            else "no deployment of it was cooling down for auth_error",
            extra={"event": "vendor_credentials_changed", "vendor": vendor, "cleared": cleared},
        )

    async def reload_from_file(self, path: str | None = None) -> Config:
        """Validate the file first; on any error keep serving the current config and raise ConfigError."""
        source = path or self.config.source
        loop = asyncio.get_running_loop()
        try:
            config = await loop.run_in_executor(None, load_config, source)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("failure").inc()
            log.error(
                "config reload rejected, still serving version %s: %s",
                self.config.version,
                exc,
                extra={
                    "event": "config_reload",
                    "result": "failure",
                    "problems": [str(i) for i in exc.issues],
                },
            )
            raise
        await self.reload(config)
        self.metrics.config_reloads.labels("success").inc()
        return config

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _reconcile(self) -> None:
        try:
            await self.sync.reconcile()
        except Exception as exc:  # the backend's supervisor reconnects and reconciles again
            log.warning(
                "state reconcile after reload failed: %s", exc, extra={"event": "state_reconcile"}
            )

    async def _retire(
        self,
        old: Generation,
        health: HealthChecker,
        adapters: list[VendorAdapter],
        tracing: Tracing | None,
    ) -> None:
        """Retire a replaced generation: stop its probes (bounded), then close the adapters
        and the tracing only it used once its last request has ended."""
        await health.stop(RETIRE_PROBES_S)
        await old.router.drained()
        for adapter in adapters:
            self._to_close.remove(adapter)
            await adapter.close()
        if tracing is not None:
            await tracing.close()

    def _breaker_changed(self, dep_id: str, state: BreakerState) -> None:
        source = "peer" if self.sync.applying else "local"
        log.warning(
            "breaker %s for deployment %s%s",
            state.label,
            dep_id,
            " (decided by a peer replica)" if source == "peer" else "",
            extra={
                "event": "breaker_state",
                "deployment": dep_id,
                "state": state.label,
                "source": source,
            },
        )
        self.sync.changed(dep_id, "breaker")

    def _state_event(self, direction: str) -> None:
        self.metrics.state_events.labels(direction).inc()

    def _state_up(self, up: bool) -> None:
        self.metrics.state_backend_up.set(1 if up else 0)

    def _gauge_snapshot(self) -> Iterator[tuple[str, int, bool, float]]:
        now = time.monotonic()
        for dep in self.deployments.values():
            yield dep.id, int(dep.breaker.state), dep.healthy, dep.cooldown_left(now)

    def _pool_snapshot(self) -> Iterator[tuple[str, PoolState]]:
        for name, adapter in self.adapters.items():
            state = adapter.pool_state()
            if state is not None:
                yield name, state

    def _group_snapshot(self) -> Iterator[tuple[str, int]]:
        # In service, not merely admitting: a breaker that lets one trial through now and
        # then is not a deployment the group can count on (the alert on 0 must not flap).
        now = time.monotonic()
        for name, group in self.current.groups.items():
            yield name, sum(1 for dep, _ in group.members if not dep.down(now))

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.ledger.open(utc_day(time.time()))
        self._log_ledger()
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
        await self.state.start()
        if self.ledger.backend is not None:
            self._usage_task = asyncio.create_task(self._share_usage(), name="usage-refresh")
        self.health.start()  # probes run in the background: readiness does not wait on them
        self.ready = True

    def _log_ledger(self) -> None:
        if self.ledger.persistent:
            log.info(
                "usage ledger: %s",
                self.ledger.path,
                extra={"event": "ledger", "path": self.ledger.path},
            )
        elif not self.state.shared and self.config.clients is not None:
            log.warning(
                "usage is kept in memory only (state.sqlite_path: null): daily limits and the "
                "usage ledger will not survive a restart",
                extra={"event": "ledger_memory_only"},
            )

    async def _share_usage(self) -> None:
        """Keep daily limits counting the other replicas' usage (a second behind at most)."""
        while True:
            try:
                await self.ledger.refresh(utc_day(time.time()))
            except StateBackendDown:
                pass  # the last known figures stay; the backend reconnects by itself
            except Exception:  # a bug here must not stop the refreshes for good
                log.exception("refreshing the cluster's usage failed")
            else:
                self.limits.apply_shared()
            await asyncio.sleep(USAGE_REFRESH_S)

    async def close(self) -> None:
        self.ready = False
        if self._usage_task is not None:
            self._usage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._usage_task
        await self.health.stop(RETIRE_PROBES_S)
        for task in list(self._retiring):
            task.cancel()
        for adapter in [*self.adapters.values(), *self._to_close]:
            await adapter.close()
        self._to_close.clear()
        if self.current.tracing is not None:
            await self.current.tracing.close()  # the last spans, within a bound
        await self.ledger.close()
        await self.state.close()
