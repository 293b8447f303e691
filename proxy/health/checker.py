"""Active health checks: know a vendor is sick before the clients do.

Passive failover costs the first victims of an outage a failed attempt and its latency.
A background loop per deployment (shared by every request and every group that uses the
deployment) probes it every `interval_s`, with jitter, through the deployment's own
vendor adapter. Rise/fall hysteresis turns probe results into the `healthy` flag routing
reads: `unhealthy_threshold` consecutive failures take a deployment out of rotation,
`healthy_threshold` consecutive passes bring it back.

A passing probe also ends waits that only existed because the vendor seemed down: it
clears an `unreachable` cooldown ("short, until a probe passes"), and after
`healthy_threshold` passes that all began after the breaker opened it cuts the open
breaker's wait short (see `_BREAKER_AFTER_PASS`).

Probes never delay readiness: loops start in the background and a deployment is healthy
until probes say otherwise.

With a shared state backend one replica probes each deployment for the whole cluster:
the holder of the deployment's probe lease. Its verdict (`healthy`) is published as the
`health` field group and applied by every replica, so probes do not multiply by replica
count. The others keep asking for the lease at the probe interval and take over within
`_lease_ttl` when the holder stops renewing (crash, partition); while the backend is down
every replica probes for itself (duplicated probes are better than none).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.config import HealthCheckConfig
from proxy.core.outcomes import POLICIES, Outcome, OutcomeClass
from proxy.health.breaker import BreakerState
from proxy.health.deployment import DeploymentState
from proxy.metrics import Metrics
from proxy.state.base import Lease
from proxy.vendors.base import ProbeUnsupported, VendorAdapter

__all__ = ["HealthChecker", "ProbeStatus", "Verdict"]

log = logging.getLogger("llmproxy")


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NEUTRAL = "neutral"


# What a probe outcome says about health. Only the classes that count toward the breaker
# (the vendor is down, erroring, overloaded or not answering) fail a probe. A probe that
# was rate limited, refused for quota or credentials, or 404ed says nothing about whether
# the vendor serves: those have cooldowns of their own, driven by real traffic.
VERDICTS: Mapping[OutcomeClass, Verdict] = {
    cls: (Verdict.FAIL if policy.counts_toward_breaker else Verdict.NEUTRAL)
    for cls, policy in POLICIES.items()
} | {OutcomeClass.SUCCESS: Verdict.PASS}

# Where passing probes move an open breaker. Listing models proves the vendor answers, not
# that this model completes, so the breaker goes half-open and the next request is its one
# trial; a passing one-token completion is proof enough to close it.
_BREAKER_AFTER_PASS: Mapping[str, BreakerState] = {
    "models": BreakerState.HALF_OPEN,
    "completion": BreakerState.CLOSED,
}

LeaseFactory = Callable[[str, float], Lease]


def _lease_ttl(cfg: HealthCheckConfig) -> float:
    """How long a probe lease outlives its last renewal: the holder renews before each
    probe, so the longest gap is one probe's timeout plus the longest jittered wait."""
    return 2.0 * (cfg.interval_s * (1.0 + cfg.jitter) + cfg.timeout_s)


_PROBE_CRASHED = Outcome(OutcomeClass.SERVER_ERROR, None, None, "the probe itself crashed")


@dataclass(slots=True)
class ProbeStatus:
    """One deployment's probe history, for /admin/status."""

    config: HealthCheckConfig
    passes: int = 0  # consecutive
    failures: int = 0  # consecutive
    checks: int = 0
    last_at: float | None = None  # wall-clock time of the last finished probe
    last_result: str | None = None  # outcome class of the last probe
    last_message: str | None = None
    last_latency_s: float | None = None
    disabled: str | None = None  # why probing stopped (unsupported probe kind)
    prober: str = "this replica"  # or "a peer replica": who holds the probe lease
    pass_starts: deque[float] = field(default_factory=deque)  # starts of the current passes

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "probe": cfg.probe,
            "interval_s": cfg.interval_s,
            "consecutive_passes": self.passes,
            "consecutive_failures": self.failures,
            "checks": self.checks,
            "last_probe_at": (
                None
                if self.last_at is None
                else datetime.fromtimestamp(self.last_at, UTC).isoformat(timespec="milliseconds")
            ),
            "last_result": self.last_result,
            "last_message": self.last_message,
            "last_latency_ms": (
                None if self.last_latency_s is None else round(self.last_latency_s * 1000, 2)
            ),
            "disabled": self.disabled,
            "prober": self.prober,
        }


class HealthChecker:
    """The probe loops of every deployment whose `health_check.enabled` is true."""

    def __init__(
        self,
        deployments: Mapping[str, DeploymentState],
        adapters: Mapping[str, VendorAdapter],
        metrics: Metrics,
        rng: random.Random | None = None,
        leases: LeaseFactory | None = None,
    ) -> None:
        self.deployments = deployments
        self.adapters = adapters
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.probes: dict[str, ProbeStatus] = {
            dep_id: ProbeStatus(dep.config.health_check)
            for dep_id, dep in deployments.items()
            if dep.config.health_check.enabled
        }
        self._tasks: list[asyncio.Task[None]] = []
        # Set by `stop`: a loop whose cancel was lost (redis-py can swallow one that arrives
        # during a command: redis/redis-py#2028, #2551) still ends at its next turn.
        self._stopped = False
        self._leases = leases
        self._held: dict[str, Lease] = {}  # probe leases this replica holds now

    def adopt(self, previous: HealthChecker) -> None:
        """After a reload: deployments whose health_check settings did not change keep their counts."""
        for dep_id, status in previous.probes.items():
            mine = self.probes.get(dep_id)
            if mine is not None and mine.config == status.config:
                self.probes[dep_id] = status

    def start(self) -> None:
        """Start one loop per checked deployment; returns at once (readiness never waits on probes)."""
        loop = asyncio.get_running_loop()
        for dep_id in self.probes:
            self._tasks.append(loop.create_task(self._loop(dep_id), name=f"health:{dep_id}"))

    async def stop(self, timeout_s: float) -> None:
        """Stop the probe loops and give their leases back, within `timeout_s` in all.

        A loop is cancelled, never awaited without a bound: one stuck in a probe or a lease
        call that ignores its cancel must not hold up a reload or a shutdown. Leases are
        released (so a peer, or this replica's next generation, takes over at once) as far
        as the time allows; one left unreleased expires by its TTL.
        """
        self._stopped = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        deadline = asyncio.get_running_loop().time() + timeout_s
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        held, self._held = self._held, {}
        releases = [asyncio.ensure_future(lease.release()) for lease in held.values()]
        if releases:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            _, pending = await asyncio.wait(releases, timeout=left)
            for task in pending:
                task.cancel()
        for task in (*tasks, *releases):
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning(
                    "stopping a health check loop failed: %r",
                    task.exception(),
                    extra={"event": "health_check_stop"},
                )

    async def _loop(self, dep_id: str) -> None:
        status = self.probes[dep_id]
        cfg = status.config
        jitter = cfg.jitter
        # The first probe comes soon (a vendor that is down at start-up is found quickly),
        # spread over a fraction of the interval so deployments do not all probe at once.
        await asyncio.sleep(self.rng.uniform(0.0, jitter * cfg.interval_s))
        lease = None if self._leases is None else self._leases(f"probe:{dep_id}", _lease_ttl(cfg))
        while not self._stopped:
            if (lease is None or await self._holds(dep_id, lease)) and not await self.check(dep_id):
                return
            await asyncio.sleep(cfg.interval_s * self.rng.uniform(1.0 - jitter, 1.0 + jitter))

    async def _holds(self, dep_id: str, lease: Lease) -> bool:
        """Take or renew `dep_id`'s probe lease; whether this replica probes it now."""
        status = self.probes[dep_id]
        if not await lease.acquire():
            self._held.pop(dep_id, None)
            status.prober = "a peer replica"
            return False
        self._held[dep_id] = lease
        if status.prober != "this replica":
            # Taking over from a peer: the shared verdict stands; our own counts are stale.
            status.prober = "this replica"
            status.passes = status.failures = 0
            status.pass_starts.clear()
        return True

    async def check(self, dep_id: str) -> bool:
        """Probe once and apply the verdict; False when this deployment cannot be probed."""
        dep = self.deployments[dep_id]
        status = self.probes[dep_id]
        adapter = self.adapters[dep.config.vendor]
        started = time.monotonic()
        try:
            outcome = await adapter.probe(dep.config, status.config.probe, status.config.timeout_s)
        except ProbeUnsupported as exc:
            status.disabled = str(exc)
            log.warning(
                "health checks of deployment %s stopped: %s",
                dep_id,
                exc,
                extra={"event": "health_check_disabled", "deployment": dep_id},
            )
            return False
        except Exception:  # a bug in a probe must not take the vendor out of rotation
            log.exception("health probe of deployment %s crashed", dep_id)
            outcome = _PROBE_CRASHED
        cls = OutcomeClass.SUCCESS if outcome is None else outcome.cls
        status.checks += 1
        status.last_at = time.time()
        status.last_latency_s = time.monotonic() - started
        status.last_result = str(cls)
        status.last_message = None if outcome is None else outcome.message
        self.metrics.health_check(dep_id, cls)
        verdict = VERDICTS[cls] if outcome is not _PROBE_CRASHED else Verdict.NEUTRAL
        if verdict is Verdict.PASS:
            self._passed(dep, status, started)
        elif verdict is Verdict.FAIL:
            self._failed(dep, status)
        return True

    def _passed(self, dep: DeploymentState, status: ProbeStatus, started: float) -> None:
        cfg = status.config
        status.failures = 0
        status.passes += 1
        status.pass_starts.append(started)
        while len(status.pass_starts) > cfg.healthy_threshold:
            status.pass_starts.popleft()
        if dep.cooldown_reason == OutcomeClass.UNREACHABLE and started >= dep.cooldown_since:
            dep.clear_cooldown()
        if not dep.healthy and status.passes >= cfg.healthy_threshold:
            dep.healthy = True
            dep.ewma_latency_s = None  # least-latency measures it afresh
            self._log_transition(dep, "healthy", status)
            self._share(dep)
        breaker = dep.breaker
        if (
            breaker.state is BreakerState.OPEN
            and len(status.pass_starts) >= cfg.healthy_threshold
            and status.pass_starts[0] >= breaker.opened_at
        ):
            target = _BREAKER_AFTER_PASS[cfg.probe]
            log.info(
                "health probes pass: breaker of deployment %s moved to %s early",
                dep.id,
                target.label,
                extra={"event": "health_breaker", "deployment": dep.id},
            )
            breaker.force(target)

    def _failed(self, dep: DeploymentState, status: ProbeStatus) -> None:
        status.passes = 0
        status.pass_starts.clear()
        status.failures += 1
        if dep.healthy and status.failures >= status.config.unhealthy_threshold:
            dep.healthy = False
            self._log_transition(dep, "unhealthy", status)
            self._share(dep)

    @staticmethod
    def _share(dep: DeploymentState) -> None:
        """Publish this prober's verdict to peer replicas (proxy/health/sync.py)."""
        if dep.on_change is not None:
            dep.on_change(dep.id, "health")

    def _log_transition(self, dep: DeploymentState, state: str, status: ProbeStatus) -> None:
        log.warning(
            "deployment %s is %s (last probe: %s)",
            dep.id,
            state,
            status.last_message or status.last_result,
            extra={"event": "health_state", "deployment": dep.id, "state": state},
        )

    def status(self, dep_id: str) -> dict[str, Any] | None:
        """The probe history of a deployment, or None if it is not health checked."""
        probe = self.probes.get(dep_id)
        return None if probe is None else probe.to_dict()
