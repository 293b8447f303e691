"""The attempt loop: plan the candidates of a model group, try them in order, fail over.

One request makes at most `failover.max_attempts` attempts within one overall deadline.
Each attempt may wait for its first byte at most min(first_byte_s, time left / attempts
left), so a stalling vendor cannot eat the whole budget and the next one still gets its
turn. What happens after each failure is decided by the outcome's class policy (the
table in `classify.py`), never by ad-hoc checks here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from proxy.config import Config, ModelGroupConfig
from proxy.health.breaker import Permit
from proxy.health.deployment import DeploymentState
from proxy.metrics import Metrics
from proxy.routing.classify import FailoverRule, FinalError, Outcome, OutcomeClass, aggregate
from proxy.routing.strategies import STRATEGIES, Member, Strategy
from proxy.vendors.base import AttemptFailed, UpstreamCall, UpstreamResponse, VendorAdapter

__all__ = ["AllFailed", "Attempt", "ModelGroup", "Router", "Served", "Trace"]


@dataclass(slots=True)
class Attempt:
    deployment: str
    outcome_class: str
    latency_s: float
    status: int | None = None


@dataclass(slots=True)
class Trace:
    """What a request did upstream, for the x-proxy-attempts header and the access log."""

    attempts: list[Attempt] = field(default_factory=list)

    def header(self) -> str:
        """`x-proxy-attempts`: each deployment tried, in order, with its outcome class."""
        return ", ".join(f"{a.deployment}={a.outcome_class}" for a in self.attempts)


class ModelGroup:
    """A model group at run time: its members' live state and its strategy."""

    __slots__ = ("config", "fallback", "members", "name", "strategy")

    def __init__(
        self, config: ModelGroupConfig, deployments: Mapping[str, DeploymentState]
    ) -> None:
        self.name = config.name
        self.config = config
        self.members: tuple[Member, ...] = tuple(
            (deployments[m.deployment], m.weight) for m in config.members
        )
        self.strategy: Strategy = STRATEGIES[config.strategy]()
        self.fallback = config.context_window_fallback


class AllFailed(Exception):
    """No attempt succeeded; `error` is the aggregated answer for the client."""

    def __init__(self, error: FinalError, trace: Trace) -> None:
        super().__init__(error.message)
        self.error = error
        self.trace = trace


class Served:
    """A successful attempt whose response is about to be (or being) relayed."""

    __slots__ = (
        "_done",
        "_router",
        "deployment",
        "group",
        "permit",
        "response",
        "started",
        "ttfb_s",
    )

    def __init__(
        self,
        router: Router,
        group: ModelGroup,
        deployment: DeploymentState,
        permit: Permit,
        response: UpstreamResponse,
        started: float,
        ttfb_s: float,
    ) -> None:
        self._router = router
        self.group = group
        self.deployment = deployment
        self.permit = permit
        self.response = response
        self.started = started
        self.ttfb_s = ttfb_s
        self._done = False

    def finish(self, failure: Outcome | None = None) -> None:
        """The relay ended: cleanly (`failure` None) or broken off after the commit point."""
        if self._done:
            return
        self._done = True
        self.response.close()
        self._router._finish(self, failure)


# The deadline expired before an attempt could start.
_DEADLINE = Outcome(
    OutcomeClass.TIMEOUT, None, None, "the request deadline expired before another attempt"
)


class Router:
    """Runs requests against model groups. One per config generation; state objects are shared."""

    def __init__(
        self,
        config: Config,
        groups: Mapping[str, ModelGroup],
        adapters: Mapping[str, VendorAdapter],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.groups = groups
        self.adapters = adapters
        self.metrics = metrics
        self.clock = clock
        self.active = 0

    def plan(self, group: ModelGroup, now: float) -> tuple[list[DeploymentState], bool]:
        """Candidates in attempt order, and whether they are forced (none was usable).

        A breaker must never turn a partial outage into a total one: when every member is
        open, cooling or unhealthy, the least-bad ones are tried anyway, soonest-to-recover first.
        """
        usable = [m for m in group.members if m[0].usable(now)]
        if usable:
            return group.strategy.order(usable), False
        return sorted((m[0] for m in group.members), key=lambda d: d.unusable_until(now)), True

    async def run(
        self, group: ModelGroup, call: UpstreamCall, deadline: float, trace: Trace
    ) -> Served:
        """Try the group's candidates until one answers; raise AllFailed with the aggregated error.

        The request counts as active on this router (this config generation) until it fails
        here or its `Served` is finished, so a reload knows when the old vendors are idle.
        """
        self.active += 1
        try:
            return await self._run(group, call, deadline, trace)
        except BaseException:
            self.active -= 1
            raise

    async def drained(self, poll_s: float = 0.1) -> None:
        """Wait until no request of this generation is active any more."""
        while self.active:
            await asyncio.sleep(poll_s)

    async def _run(
        self, group: ModelGroup, call: UpstreamCall, deadline: float, trace: Trace
    ) -> Served:
        clock = self.clock
        max_attempts = self.config.failover.max_attempts
        outcomes: list[Outcome] = []
        tried_groups = {group.name}
        candidates, forced = self.plan(group, clock())
        pending_failover: tuple[str, str] | None = None
        i = 0
        while i < len(candidates) and len(trace.attempts) < max_attempts:
            dep = candidates[i]
            i += 1
            now = clock()
            left = deadline - now
            if left <= 0:
                outcomes.append(_DEADLINE)
                break
            permit = Permit.FORCED if forced else dep.breaker.acquire(now)
            if permit is Permit.DENIED:
                if i == len(candidates) and not trace.attempts and not forced:
                    # Every candidate was taken (a half-open trial raced us): fall back to least-bad.
                    candidates, forced, i = self.plan(group, now)[0], True, 0
                continue
            if pending_failover is not None:
                self.metrics.failover(group.name, *pending_failover)
                pending_failover = None
            attempts_left = min(max_attempts - len(trace.attempts), len(candidates) - i + 1)
            dep_config = self.config.deployments[dep.id]  # this generation's, even after a reload
            timeouts = dep_config.timeouts
            adapter = self.adapters[dep_config.vendor]
            dep.in_flight += 1
            try:
                response = await adapter.send(
                    dep_config,
                    call,
                    first_byte_s=min(timeouts.first_byte_s, left / attempts_left),
                    attempt_s=min(timeouts.attempt_s, left),
                )
            except AttemptFailed as failed:
                dep.in_flight -= 1
                outcome = failed.outcome
                latency = clock() - now
                self._record_failure(dep, permit, outcome, latency)
                trace.attempts.append(Attempt(dep.id, outcome.cls, latency, outcome.status))
                outcomes.append(outcome)
                rule = outcome.policy.fail_over
                if rule is FailoverRule.YES:
                    pending_failover = (dep.id, outcome.cls)
                    continue
                fallback = group.fallback
                if (
                    rule is FailoverRule.CONTEXT_FALLBACK
                    and fallback
                    and fallback not in tried_groups
                ):
                    fb_group = self.groups.get(fallback)
                    if fb_group is not None:
                        tried_groups.add(fallback)
                        self.metrics.failover(group.name, dep.id, outcome.cls)
                        group = fb_group
                        candidates, forced = self.plan(group, clock())
                        i = 0
                        continue
                break
            except BaseException:  # cancelled (client gone): the vendor is not to blame
                dep.in_flight -= 1
                dep.breaker.release(permit)
                raise
            ttfb = clock() - now
            self.metrics.ratelimit(dep.id, response.headers)
            dep.breaker.record(permit, success=True)
            dep.observe_success(ttfb)
            return Served(self, group, dep, permit, response, now, ttfb)
        if not outcomes:
            outcomes.append(_DEADLINE)
        raise AllFailed(aggregate(outcomes, model=group.name), trace)

    def _record_failure(
        self, dep: DeploymentState, permit: Permit, outcome: Outcome, latency: float
    ) -> None:
        policy = outcome.policy
        if outcome.cls is OutcomeClass.CLIENT_CANCELLED:
            dep.breaker.release(permit)
        elif policy.counts_toward_breaker:
            dep.breaker.record(permit, success=False)
        elif outcome.cls in _VENDOR_ANSWERED:
            dep.breaker.record(permit, success=True)
        else:
            dep.breaker.record(permit, success=None)
        dep.observe(outcome, latency, self.config.cooldowns)
        self.metrics.attempt(dep.id, outcome.cls, latency)

    def _finish(self, served: Served, failure: Outcome | None) -> None:
        self.active -= 1
        dep = served.deployment
        dep.in_flight -= 1
        metrics = self.metrics
        usage = served.response.usage
        if usage is not None:
            metrics.usage(dep.id, usage.prompt, usage.completion, usage.cached_prompt)
        if failure is None:
            metrics.attempt(dep.id, OutcomeClass.SUCCESS, served.ttfb_s)
            return
        if failure.cls is not OutcomeClass.CLIENT_CANCELLED:
            metrics.stream_abort(served.group.name, dep.id, failure.cls)
            if failure.policy.counts_toward_breaker:
                dep.breaker.record(Permit.NORMAL, success=False)
            dep.observe(failure, 0.0, self.config.cooldowns)
        metrics.attempt(dep.id, failure.cls, served.ttfb_s)


# Classes that prove the vendor is up and answering (the request itself was the problem).
_VENDOR_ANSWERED = frozenset(
    {OutcomeClass.CLIENT_ERROR, OutcomeClass.CONTEXT_TOO_LONG, OutcomeClass.CONTENT_FILTERED}
)
