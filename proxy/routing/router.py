"""The attempt loop: plan the candidates of a model group, try them in order, fail over.

One request makes at most `failover.max_attempts` attempts within one overall deadline.
Each attempt may wait for its first byte at most min(first_byte_s, time left / attempts
left), so a stalling vendor cannot eat the whole budget and the next one still gets its
turn. What happens after each failure is decided by the outcome's class policy (the
table in `classify.py`), never by ad-hoc checks here.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.config import Config, ModelGroupConfig
from proxy.core.errors import Unsupported
from proxy.core.outcomes import (
    BreakerVerdict,
    FailoverRule,
    FinalError,
    Outcome,
    OutcomeClass,
    aggregate,
)
from proxy.health.breaker import Permit
from proxy.health.deployment import DeploymentState
from proxy.metrics import Metrics
from proxy.routing.strategies import STRATEGIES, Member, Strategy
from proxy.vendors.base import AttemptFailed, UpstreamCall, UpstreamResponse, VendorAdapter

if TYPE_CHECKING:
    from proxy.tracing.spans import AttemptSpan, RequestSpan

__all__ = ["HEDGE_LOST", "AllFailed", "Attempt", "ModelGroup", "Router", "Served", "Trace"]


@dataclass(slots=True)
class Attempt:
    deployment: str
    outcome_class: str
    latency_s: float
    status: int | None = None
    # For an attempt that got no answer (no status): what failed and in which phase, e.g.
    # "timed out while connecting: TimeoutError". Built by the classifier from the
    # exception's class and the phase only, so it holds no URL, key or prompt text.
    detail: str | None = None


@dataclass(slots=True)
class Trace:
    """What a request did upstream, for the x-proxy-attempts header and the access log."""

    attempts: list[Attempt] = field(default_factory=list)
    # The request's OpenTelemetry span when its generation traces (`proxy.tracing`): each
    # attempt gets a child span.
    span: RequestSpan | None = None

    def header(self) -> str:
        """`x-proxy-attempts`: each deployment tried, in order, with its outcome class."""
        return ", ".join(f"{a.deployment}={a.outcome_class}" for a in self.attempts)


class ModelGroup:
    """A model group at run time: its members' live state and its strategy."""

    __slots__ = (
        "config",
        "fallback",
        "hedge_after_s",
        "members",
        "name",
        "preference",
        "strategy",
    )

    def __init__(
        self, config: ModelGroupConfig, deployments: Mapping[str, DeploymentState]
    ) -> None:
        self.name = config.name
        self.config = config
        self.members: tuple[Member, ...] = tuple(
            (deployments[m.deployment], m.weight) for m in config.members
        )
        self.strategy: Strategy = STRATEGIES[config.strategy](config, self.members)
        self.preference = _preference(config)
        self.fallback = config.context_window_fallback
        ms = config.hedge_after_ms
        self.hedge_after_s = None if ms is None else ms / 1000.0


def _preference(config: ModelGroupConfig) -> tuple[float, ...]:
    """Each member's share of the group's traffic while every member is in service.

    `priority` sends everything to its first deployment; the other strategies spread it,
    by weight in the long run. A request served while members were skipped counts as
    served away from its preferred deployment by the skipped members' share.
    """
    members = config.members
    if config.strategy == "priority":
        return tuple(1.0 if i == 0 else 0.0 for i in range(len(members)))
    total = sum(m.weight for m in members)
    return tuple(m.weight / total for m in members)


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
        "span",
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
        self.span: AttemptSpan | None = None
        self._done = False

    def finish(self, failure: Outcome | None = None) -> None:
        """The relay ended: cleanly (`failure` None) or broken off after the commit point."""
        if self._done:
            return
        self._done = True
        self.response.close()
        self._router._finish(self, failure)

    def abandon(self, outcome_class: str) -> None:
        """Never relayed (another hedged attempt answered first, or the client left)."""
        if self._done:
            return
        self._done = True
        self.response.close()
        self._router._finish(self, None, abandoned_as=outcome_class)


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

    def plan(
        self, group: ModelGroup, call: UpstreamCall, now: float
    ) -> tuple[list[DeploymentState], bool]:
        """Candidates in attempt order, and whether they are forced (none was usable).

        A breaker must never turn a partial outage into a total one: when every member is
        open, cooling or unhealthy, the least-bad ones are tried anyway, soonest-to-recover first.
        """
        usable = [m for m in group.members if m[0].usable(now)]
        if usable:
            return group.strategy.order(usable, call, now), False
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
        """The attempt loop.

        Attempts run one after another, except in a group with `hedge_after_ms`: there, an
        attempt with no first byte after that long gets the next candidate started beside
        it (at most two at a time); the first to answer is relayed, the other cancelled.
        """
        walk = _Walk(self, group, call, deadline, trace)
        racing: dict[asyncio.Task[Served | Outcome | Unsupported], _Racer] = {}
        try:
            while True:
                if not racing:
                    step = walk.next()
                    if step is None:
                        break
                    if walk.group.hedge_after_s is None:  # the common case: no task needed
                        result = await self._attempt(walk, *step)
                        if isinstance(result, Served):
                            if walk.outcomes or walk.skipped:
                                walk.served_away(result)
                            return result
                        if isinstance(result, Unsupported):
                            walk.skip(result)
                        elif walk.failed(step[0], result) is _Then.STOP:
                            break
                        continue
                    racing[self._spawn(walk, step)] = _Racer(step[0], self.clock(), hedge=False)
                served, then = await self._race(walk, racing)
                if served is not None:
                    if walk.outcomes or walk.skipped:
                        walk.served_away(served)
                    return served
                if then is not _Then.CONTINUE:
                    await self._cancel(walk, racing, HEDGE_LOST)
                    if then is _Then.STOP:
                        break
        finally:
            if racing:  # the client went away (or a bug): nobody will read these answers
                await self._cancel(walk, racing, OutcomeClass.CLIENT_CANCELLED)
        outcomes = walk.outcomes
        if not outcomes and walk.unsupported:
            raise walk.unsupported[0]  # no deployment of the group can serve it as asked
        if not outcomes:
            outcomes.append(walk.capacity_outcome() or _DEADLINE)
        error = aggregate(outcomes, model=walk.group.name)
        self.metrics.unserved_request(group.name, error.cls)
        raise AllFailed(error, trace)

    async def _race(
        self, walk: _Walk, racing: dict[asyncio.Task[Served | Outcome | Unsupported], _Racer]
    ) -> tuple[Served | None, _Then]:
        """Wait for the next racing attempt to finish, hedging a lone one that is too slow."""
        hedge_s = walk.group.hedge_after_s
        timeout: float | None = None
        if len(racing) == 1 and hedge_s is not None and not walk.exhausted:
            (racer,) = racing.values()
            timeout = max(0.0, racer.started + hedge_s - self.clock())
        done, _ = await asyncio.wait(racing, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:  # no first byte within hedge_after_ms: start the next candidate too
            step = walk.next()
            if step is not None:
                racing[self._spawn(walk, step)] = _Racer(step[0], self.clock(), hedge=True)
            return None, _Then.CONTINUE
        then = _Then.CONTINUE
        # An answer wins over failures that finished in the same instant.
        for task in sorted(done, key=lambda t: not isinstance(t.result(), Served)):
            racer = racing.pop(task)
            result = task.result()
            if isinstance(result, Served):
                if racer.hedge:
                    self.metrics.hedge(walk.group.name, "won")
                await self._cancel(walk, racing, HEDGE_LOST)  # incl. a second answer just in
                return result, then
            if isinstance(result, Unsupported):
                walk.skip(result)
                continue
            if racer.hedge:
                self.metrics.hedge(walk.group.name, "failed")
            verdict = walk.failed(racer.deployment, result)
            if verdict is not _Then.CONTINUE:
                then = verdict
        return None, then

    def _spawn(self, walk: _Walk, step: _Step) -> asyncio.Task[Served | Outcome | Unsupported]:
        return asyncio.get_running_loop().create_task(self._attempt(walk, *step))

    async def _cancel(
        self,
        walk: _Walk,
        racing: dict[asyncio.Task[Served | Outcome | Unsupported], _Racer],
        outcome_class: str,
    ) -> None:
        """Cancel racing attempts (the vendor sees the disconnect) and account for them."""
        tasks = list(racing.items())
        racing.clear()
        for task, _ in tasks:
            task.cancel(outcome_class)  # the reason reaches the attempt's span
        clock = self.clock
        for task, racer in tasks:
            try:
                result: Served | Outcome | Unsupported | None = await task
            except asyncio.CancelledError:
                result = None
            if racer.hedge:
                self.metrics.hedge(
                    walk.group.name, "failed" if isinstance(result, Outcome) else "lost"
                )
            if isinstance(result, Served):
                result.abandon(outcome_class)
            elif result is None:
                dep = racer.deployment
                latency = clock() - racer.started
                dep.note_latency(latency)  # a lower bound: it had not answered by now
                walk.trace.attempts.append(Attempt(dep.id, outcome_class, latency))
                self.metrics.attempt(dep.id, outcome_class, latency)

    async def _attempt(
        self,
        walk: _Walk,
        dep: DeploymentState,
        permit: Permit,
        first_byte_s: float,
        attempt_s: float,
    ) -> Served | Outcome | Unsupported:
        """One upstream call with its bookkeeping: a Served, the failure's Outcome, or
        Unsupported when the deployment cannot serve this request (nothing was sent)."""
        clock = self.clock
        now = clock()
        dep_config = self.config.deployments[dep.id]  # this generation's, even after a reload
        adapter = self.adapters[dep_config.vendor]
        call, span = walk.call, walk.trace.span
        attempt = None
        if span is not None:
            attempt = span.attempt(dep_config, adapter.config, first_byte_s, call)
            call = attempt.call
        dep.in_flight += 1
        if dep.caps is not None:
            dep.caps.started(now)
        try:
            response = await adapter.send(
                dep_config, call, first_byte_s=first_byte_s, attempt_s=attempt_s
            )
        except Unsupported as unsupported:
            dep.in_flight -= 1
            dep.breaker.release(permit)
            walk.trace.attempts.append(
                Attempt(dep.id, UNSUPPORTED, 0.0, unsupported.status, unsupported.message)
            )
            if attempt is not None:
                attempt.unsupported(unsupported)
            return unsupported
        except AttemptFailed as failed:
            dep.in_flight -= 1
            outcome = failed.outcome
            latency = clock() - now
            cooldown_s = self._record_failure(dep, permit, outcome, latency)
            detail = outcome.message if outcome.status is None else None
            walk.trace.attempts.append(
                Attempt(dep.id, outcome.cls, latency, outcome.status, detail)
            )
            if attempt is not None:
                attempt.failed(outcome, cooldown_s)
            return outcome
        except (
            BaseException
        ) as exc:  # cancelled (client gone, or a hedge won): the vendor is not to blame
            dep.in_flight -= 1
            dep.breaker.release(permit)
            if attempt is not None:
                attempt.cancelled(_cancelled_as(exc))
            raise
        ttfb = clock() - now
        self.metrics.ratelimit(dep.id, response.headers)
        if permit is not Permit.NORMAL or response.content_type != _SSE:
            # A stream's verdict waits for its end (`_finish`): recording success at its
            # first byte would reset the breaker's count on every attempt, so a vendor
            # whose streams all break after the first event would never trip it.
            dep.breaker.record(permit, success=True)
        dep.observe_success(ttfb)
        served = Served(self, walk.group, dep, permit, response, now, ttfb)
        if attempt is not None:
            attempt.answered(ttfb, response)
            served.span = attempt
        return served

    def _record_failure(
        self, dep: DeploymentState, permit: Permit, outcome: Outcome, latency: float
    ) -> float:
        """Breaker, cooldown and metrics after a failed attempt; the cooldown applied (s)."""
        dep.breaker.record(permit, success=_VERDICT[outcome.policy.breaker])
        cooldown_s = dep.observe(outcome, latency, self.config.cooldowns)
        self.metrics.attempt(dep.id, outcome.cls, latency)
        return cooldown_s

    def _finish(
        self, served: Served, failure: Outcome | None, abandoned_as: str | None = None
    ) -> None:
        if abandoned_as is None:  # a lost hedge is not the request's end
            self.active -= 1
        dep = served.deployment
        dep.in_flight -= 1
        metrics = self.metrics
        usage = served.response.usage
        if served.span is not None:
            served.span.finished(failure, abandoned_as, usage)
        if usage is not None:
            metrics.usage(dep.id, usage.prompt, usage.completion, usage.cached_prompt)
            if dep.caps is not None:
                dep.caps.spent(self.clock(), usage.prompt + usage.completion)
        if abandoned_as is not None:
            metrics.attempt(dep.id, abandoned_as, served.ttfb_s)
            return
        if failure is None:
            if served.permit is Permit.NORMAL and served.response.content_type == _SSE:
                dep.breaker.record(Permit.NORMAL, success=True)
            metrics.attempt(dep.id, OutcomeClass.SUCCESS, served.ttfb_s)
            return
        if failure.cls is not OutcomeClass.CLIENT_CANCELLED:
            metrics.stream_abort(served.group.name, dep.id, failure.cls)
            if failure.policy.counts_toward_breaker:
                dep.breaker.record(Permit.NORMAL, success=False)
            dep.observe(failure, 0.0, self.config.cooldowns)
        metrics.attempt(dep.id, failure.cls, served.ttfb_s)


_SSE = "text/event-stream"


def _cancelled_as(exc: BaseException) -> str:
    """The outcome class of an attempt cancelled by `_cancel` (its reason travels as the
    cancellation's message); any other cancellation is the client's."""
    if isinstance(exc, asyncio.CancelledError) and exc.args and exc.args[0] == HEDGE_LOST:
        return HEDGE_LOST
    return str(OutcomeClass.CLIENT_CANCELLED)


# The breaker's `success` argument for each verdict of the outcome table.
_VERDICT: Mapping[BreakerVerdict, bool | None] = {
    BreakerVerdict.FAILURE: False,
    BreakerVerdict.SUCCESS: True,
    BreakerVerdict.NEUTRAL: None,
}


# In x-proxy-attempts (never in metrics): a candidate skipped because it cannot serve the
# request as asked (`proxy.core.errors.Unsupported`); no attempt was made.
UNSUPPORTED = "unsupported"

# The outcome class (in x-proxy-attempts and upstream_attempts_total) of a hedged attempt
# cancelled because another one answered first. Not a classification: nothing failed.
HEDGE_LOST = "hedge_lost"

_Step = tuple[DeploymentState, Permit, float, float]  # deployment, permit, first_byte_s, attempt_s


class _Then(enum.Enum):
    """What a failed attempt means for the rest of the request."""

    CONTINUE = "continue"  # fail over to the next candidate (racing attempts keep going)
    RESTART = "restart"  # moved to the context-window fallback group: drop racing attempts
    STOP = "stop"  # return the error: no other deployment would do better


@dataclass(slots=True)
class _Racer:
    deployment: DeploymentState
    started: float
    hedge: bool


class _Walk:
    """One request's way through its candidates: the plan, the attempts made, what failed."""

    __slots__ = (
        "call",
        "candidates",
        "capped_for",
        "deadline",
        "exhausted",
        "forced",
        "group",
        "i",
        "origin",
        "outcomes",
        "pending_failover",
        "router",
        "skipped",
        "started",
        "trace",
        "tried_groups",
        "unsupported",
    )

    def __init__(
        self, router: Router, group: ModelGroup, call: UpstreamCall, deadline: float, trace: Trace
    ) -> None:
        self.router = router
        self.group = self.origin = group
        self.call = call
        self.deadline = deadline
        self.trace = trace
        self.outcomes: list[Outcome] = []
        self.tried_groups = {group.name}
        self.candidates, self.forced = router.plan(group, call, router.clock())
        # The members routing left out (out of service or at a cap): nothing in the common case.
        self.skipped: tuple[DeploymentState, ...] = ()
        if self.forced or len(self.candidates) < len(group.members):
            planned = set() if self.forced else set(self.candidates)
            self.skipped = tuple(d for d, _ in group.members if d not in planned)
        self.i = 0
        self.started = 0
        self.exhausted = False
        self.pending_failover: tuple[str, str] | None = None
        self.capped_for: float | None = None  # soonest a skipped-at-cap deployment frees up
        self.unsupported: list[Unsupported] = []  # candidates that cannot serve the request

    def next(self) -> _Step | None:
        """The next attempt to make, or None when there is none (candidates, attempts or time)."""
        router = self.router
        max_attempts = router.config.failover.max_attempts
        while self.i < len(self.candidates) and self.started < max_attempts:
            dep = self.candidates[self.i]
            self.i += 1
            now = router.clock()
            left = self.deadline - now
            if left <= 0:
                self.outcomes.append(_DEADLINE)
                break
            if not dep.under_caps(now):  # caps are hard: skip it rather than earn its 429
                wait = dep.caps.free_in(now) if dep.caps is not None else 0.0
                self.capped_for = wait if self.capped_for is None else min(self.capped_for, wait)
                continue
            permit = Permit.FORCED if self.forced else dep.breaker.acquire(now)
            if permit is Permit.DENIED:
                if self.i == len(self.candidates) and not self.started and not self.forced:
                    # Every candidate was taken (a half-open trial raced us): fall back to least-bad.
                    self.candidates = router.plan(self.group, self.call, now)[0]
                    self.forced, self.i = True, 0
                continue
            if self.pending_failover is not None:
                router.metrics.failover(self.group.name, *self.pending_failover)
                self.pending_failover = None
            attempts_left = min(max_attempts - self.started, len(self.candidates) - self.i + 1)
            self.started += 1
            timeouts = router.config.deployments[dep.id].timeouts
            # Both budgets are this attempt's share of the time left: a vendor that stalls
            # before its first byte, or sends its head and then drips the body, still leaves
            # the next candidate its turn.
            share = left / attempts_left
            return (
                dep,
                permit,
                min(timeouts.first_byte_s, share),
                min(timeouts.attempt_s, share),
            )
        self.exhausted = True
        return None

    def skip(self, unsupported: Unsupported) -> None:
        """A candidate that cannot serve this request: no attempt was spent on it."""
        self.started -= 1
        self.unsupported.append(unsupported)

    def failed(self, dep: DeploymentState, outcome: Outcome) -> _Then:
        """Fold in a failed attempt; the class's failover rule says what happens next."""
        self.outcomes.append(outcome)
        rule = outcome.policy.fail_over
        if rule is FailoverRule.YES or (
            rule is FailoverRule.OPT_IN and self.group.config.failover_on_content_filter
        ):
            self.pending_failover = (dep.id, outcome.cls)
            return _Then.CONTINUE
        fallback = self.group.fallback
        if rule is FailoverRule.CONTEXT_FALLBACK and fallback and fallback not in self.tried_groups:
            router = self.router
            fb_group = router.groups.get(fallback)
            if fb_group is not None:
                self.tried_groups.add(fallback)
                router.metrics.failover(self.group.name, dep.id, outcome.cls)
                self.group = fb_group
                self.candidates, self.forced = router.plan(fb_group, self.call, router.clock())
                self.i = 0
                self.exhausted = False
                return _Then.RESTART
        return _Then.STOP

    def served_away(self, served: Served) -> None:
        """Count a request answered away from its group's preferred deployment."""
        group, metrics = self.origin, self.router.metrics
        if self.outcomes:  # an attempt failed before this one answered
            metrics.served_away_from_preferred(group.name, "failover", 1.0)
            return
        share = sum(
            pref
            for (dep, _), pref in zip(group.members, group.preference, strict=True)
            if dep in self.skipped and dep is not served.deployment
        )
        if share > 0:
            metrics.served_away_from_preferred(group.name, "skipped", share)

    def capacity_outcome(self) -> Outcome | None:
        """Nothing was attempted because every candidate was at its cap: a 429 of our own."""
        if self.capped_for is None:
            return None
        return Outcome(
            OutcomeClass.RATE_LIMITED,
            429,
            max(1.0, self.capped_for),
            f"every deployment of model group '{self.group.name}' is at its configured "
            "capacity (max_concurrent, rpm or tpm)",
        )
