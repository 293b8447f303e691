"""Prometheus metrics. The names and labels are a contract: alert rules depend on them.

Label values are bounded: model groups and deployments come from the config, outcome
classes from a fixed table, statuses are HTTP codes. A client's unknown model name is
never a label value (it becomes `UNKNOWN_GROUP`), nor is a path the proxy has no route
for (its requests count under `NO_ROUTE`).

The metrics every request touches (requests, durations, attempts, in-flight, tokens,
vendor rate-limit budgets) are plain numbers in dicts, rendered by a collector at scrape
time: prometheus_client's own types take a lock and run several checks per update, about
a tenth of a request's CPU on a path that aims at a quarter millisecond. They are updated
and scraped on the event loop's thread only. The rest use prometheus_client's types.

Every series an alert rule or a dashboard panel reads exists from start-up at 0
(`Metrics.declare`, called again by each reload for the deployments, groups and clients
it adds). A labelled counter born at its first increment is born at 1, and Prometheus'
`increase()` and `rate()` see nothing in a series that appears at 1: the alert for a first
event (a vendor's quota running out, one failed reload) would never fire.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.core.version import VERSION

__all__ = ["NO_ROUTE", "UNKNOWN_GROUP", "DeploymentGauges", "Metrics", "PoolGauges", "SeriesPlan"]

UNKNOWN_GROUP = "_unknown_"
# The `model_group` of requests to a path (or a method) the proxy does not serve.
NO_ROUTE = "_no_route_"
NO_ROUTE_STATUSES = ("404", "405")

# `*_created` series double the scrape size and no alert or dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets from 5 ms to 5 min: LLM calls span four orders of magnitude.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
# A free connection is a wait of 0; a saturated pool makes requests wait up to pool_wait_s.
_POOL_WAIT_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class LeanCounter:
    """A labelled counter: label values -> total."""

    __slots__ = ("doc", "labelnames", "name", "values")

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def declare(self, labels: tuple[str, ...]) -> None:
        """Make the series exist at 0 (a no-op for one that exists)."""
        self.values.setdefault(labels, 0.0)

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class LeanGauge:
    """A labelled gauge: label values -> value (`set`), or one value (`inc`/`dec`)."""

    __slots__ = ("doc", "labelnames", "name", "value", "values")

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}
        self.value = 0.0  # the unlabelled gauge's

    def set(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] = value

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1

    def family(self) -> Metric:
        if not self.labelnames:
            return GaugeMetricFamily(self.name, self.doc, value=self.value)
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class _Observations:
    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets  # per bucket, not cumulative
        self.sum = 0.0


class LeanHistogram:
    """A labelled histogram with fixed buckets (the last is +Inf)."""

    __slots__ = ("bounds", "children", "doc", "labelnames", "les", "name")

    def __init__(
        self, name: str, doc: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = labelnames
        self.bounds = (*buckets, float("inf"))
        self.les = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self.children: dict[tuple[str, ...], _Observations] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = _Observations(len(self.bounds))
        child.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        child.sum += value

    def declare(self, labels: tuple[str, ...]) -> None:
        """Make the series (every bucket, _sum, _count) exist at 0."""
        if labels not in self.children:
            self.children[labels] = _Observations(len(self.bounds))

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, child in self.children.items():
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self.les, child.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(labels, buckets, child.sum)
        return family


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """The label values of the series that exist from start-up (or from a reload) at 0.

    Built from the config and the outcome table (`Gateway`), so every label set stays
    bounded: groups and their deployments, clients and the refusals they can get, classes
    from a fixed table.
    """

    groups: Mapping[str, Sequence[str]]  # model group -> the ids of its deployments
    deployments: Sequence[str]
    clients: Mapping[str, Sequence[str]]  # client -> the `reason`s it can be refused for
    attempt_classes: Sequence[str]  # every `outcome_class` of an upstream attempt
    failover_reasons: Sequence[str]  # the classes a request fails over on
    failure_classes: Sequence[str]  # the classes a stream abort or an unserved request has


class _LeanCollector(Collector):
    def __init__(self, metrics: Iterable[LeanCounter | LeanGauge | LeanHistogram]) -> None:
        self._metrics = tuple(metrics)

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield metric.family()


class DeploymentGauges(Collector):
    """Gauges read from live deployment state at scrape time (cooldowns count down by themselves)."""

    def __init__(
        self,
        snapshot: Callable[[], Iterable[tuple[str, int, bool, float]]],
        groups: Callable[[], Iterable[tuple[str, int]]],
    ) -> None:
        # snapshot yields (deployment id, breaker state 0/1/2, healthy, cooldown seconds left);
        # groups yields (model group, how many of its deployments are in service now).
        self._snapshot = snapshot
        self._groups = groups

    def collect(self) -> Iterator[Metric]:
        breaker = GaugeMetricFamily(
            "llmproxy_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"],
        )
        healthy = GaugeMetricFamily(
            "llmproxy_deployment_healthy",
            "1 if the deployment is considered healthy, else 0.",
            labels=["deployment"],
        )
        cooldown = GaugeMetricFamily(
            "llmproxy_deployment_cooldown_seconds",
            "Seconds left before a cooling deployment is routed to again (0 when not cooling).",
            labels=["deployment"],
        )
        usable = GaugeMetricFamily(
            "llmproxy_model_group_usable_deployments",
            "Deployments of the group in service now: healthy, not cooling, breaker closed "
            "(a half-open breaker's one trial does not make a deployment usable).",
            labels=["model_group"],
        )
        for dep_id, state, ok, left in self._snapshot():
            breaker.add_metric([dep_id], state)
            healthy.add_metric([dep_id], 1.0 if ok else 0.0)
            cooldown.add_metric([dep_id], left)
        for group, count in self._groups():
            usable.add_metric([group], count)
        yield breaker
        yield healthy
        yield cooldown
        yield usable


class PoolGauges(Collector):
    """Each native vendor's connection pool, read at scrape time: how close it is to its limit."""

    def __init__(self, snapshot: Callable[[], Iterable[tuple[str, tuple[int, int, int, int]]]]):
        # snapshot yields (vendor, (connections in use, idle, requests waiting, limit))
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        # Without describe() the registry would call collect() at registration, before start-up.
        yield GaugeMetricFamily(
            "llmproxy_upstream_pool_connections", "", labels=["vendor", "state"]
        )
        yield GaugeMetricFamily("llmproxy_upstream_pool_waiting", "", labels=["vendor"])
        yield GaugeMetricFamily("llmproxy_upstream_pool_limit", "", labels=["vendor"])

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "llmproxy_upstream_pool_connections",
            "Connections in a native vendor's pool: in_use (a request's, or connecting) or idle.",
            labels=["vendor", "state"],
        )
        waiting = GaugeMetricFamily(
            "llmproxy_upstream_pool_waiting",
            "Requests waiting for a free connection (the pool is at its limit).",
            labels=["vendor"],
        )
        limit = GaugeMetricFamily(
            "llmproxy_upstream_pool_limit",
            "Most connections the vendor's pool keeps open (max_connections).",
            labels=["vendor"],
        )
        for vendor, (in_use, idle, queued, most) in self._snapshot():
            connections.add_metric([vendor, "in_use"], in_use)
            connections.add_metric([vendor, "idle"], idle)
            waiting.add_metric([vendor], queued)
            limit.add_metric([vendor], most)
        yield connections
        yield waiting
        yield limit


class ClientGauges(Collector):
    """How much of each client's daily budgets is used, read at scrape time (alerts warn before 429s)."""

    def __init__(self, snapshot: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        # snapshot yields (client name, limit name, used / limit)
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        # Without describe() the registry would call collect() at registration, before start-up.
        yield GaugeMetricFamily("llmproxy_client_budget_used_ratio", "", labels=["client", "limit"])

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "llmproxy_client_budget_used_ratio",
            "Share of a client's daily limit (tokens_per_day, budget_usd_per_day) used today.",
            labels=["client", "limit"],
        )
        for client, limit, ratio in self._snapshot():
            used.add_metric([client, limit], ratio)
        yield used


class ListenerGauges(Collector):
    """The front door's connections, read at scrape time from the listener."""

    def __init__(self, snapshot: Callable[[], tuple[int, int, int, int]]) -> None:
        # snapshot: (fast-lane connections, aiohttp-lane connections, refused, timed out)
        self._snapshot = snapshot

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "llmproxy_client_connections", "Open client connections, by lane.", labels=["lane"]
            ),
            CounterMetricFamily(
                "llmproxy_client_connections_refused",
                "Client connections refused at server.max_connections.",
            ),
            CounterMetricFamily(
                "llmproxy_client_request_timeouts",
                "Client connections closed for a head or body slower than "
                "server.header_timeout_s / server.body_timeout_s.",
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        fast, aiohttp_lane, refused, timeouts = self._snapshot()
        connections, refusals, slow = self._families()
        connections.add_metric(["fast"], fast)
        connections.add_metric(["aiohttp"], aiohttp_lane)
        refusals.add_metric([], refused)
        slow.add_metric([], timeouts)
        yield from (connections, refusals, slow)


class TracingCounters(Collector):
    """Spans that never reached the tracing collector, read at scrape time (`proxy.tracing`)."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        # counts: reason -> spans dropped so far (every reason, 0 included)
        self._counts = counts

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("llmproxy_tracing_spans_dropped", "", labels=["reason"])

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "llmproxy_tracing_spans_dropped",
            "Trace spans lost on the way to the collector: the export queue was full "
            "(queue_full) or a batch was not delivered (export_failed).",
            labels=["reason"],
        )
        for reason, count in self._counts().items():
            dropped.add_metric([reason], count)
        yield dropped


class Metrics:
    """All of the proxy's metrics, on a registry of its own (several proxies can share a process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = LeanCounter(
            "llmproxy_requests",
            "Client requests by model group and final HTTP status.",
            ("model_group", "status"),
        )
        for status in NO_ROUTE_STATUSES:  # from start-up, so a first stray client is seen
            self.requests.declare((NO_ROUTE, status))
        self.request_duration = LeanHistogram(
            "llmproxy_request_duration_seconds",
            "Client request duration, to the last byte.",
            ("model_group",),
            _LATENCY_BUCKETS,
        )
        self.ttfb = LeanHistogram(
            "llmproxy_time_to_first_byte_seconds",
            "Time from request to the first byte sent to the client.",
            ("model_group",),
            _LATENCY_BUCKETS,
        )
        self.attempts = LeanCounter(
            "llmproxy_upstream_attempts",
            "Upstream attempts by deployment and outcome class.",
            ("deployment", "outcome_class"),
        )
        self.upstream_duration = LeanHistogram(
            "llmproxy_upstream_duration_seconds",
            "Upstream attempt duration (to the first byte for streams).",
            ("deployment",),
            _LATENCY_BUCKETS,
        )
        self.failovers = Counter(
            "llmproxy_failovers",
            "Requests moved on from a deployment to the next candidate.",
            ["model_group", "from_deployment", "reason"],
            registry=r,
        )
        self.stream_aborts = Counter(
            "llmproxy_stream_aborts",
            "Streams that failed after their first byte reached the client (ended with an error event).",
            ["model_group", "deployment", "outcome_class"],
            registry=r,
        )
        self.tokens = LeanCounter(
            "llmproxy_tokens", "Tokens reported by vendors.", ("deployment", "kind")
        )
        self.pool_wait = LeanHistogram(
            "llmproxy_upstream_pool_wait_seconds",
            "Time an upstream request waited for a free connection in its vendor's pool "
            "(0 when one was free).",
            ("vendor",),
            _POOL_WAIT_BUCKETS,
        )
        self.unserved = LeanCounter(
            "llmproxy_unserved_requests",
            "Requests no deployment served (every candidate failed, or none could be tried), "
            "by the outcome class of the error the client got.",
            ("model_group", "outcome_class"),
        )
        self.served_away = LeanCounter(
            "llmproxy_served_away",
            "Requests served by a deployment other than the group's preferred one: after a "
            "failed attempt (failover), or because the preferred one was out of service "
            "(skipped; for strategies that spread traffic, its share of the weight).",
            ("model_group", "reason"),
        )
        self.in_flight = LeanGauge("llmproxy_in_flight_requests", "Client requests being served.")
        self.ratelimit_remaining = LeanGauge(
            "llmproxy_upstream_ratelimit_remaining",
            "Requests/tokens left in the vendor's current rate-limit window, from its response headers.",
            ("deployment", "kind"),
        )
        r.register(
            _LeanCollector(
                (
                    self.requests,
                    self.request_duration,
                    self.ttfb,
                    self.attempts,
                    self.upstream_duration,
                    self.tokens,
                    self.pool_wait,
                    self.unserved,
                    self.served_away,
                    self.in_flight,
                    self.ratelimit_remaining,
                )
            )
        )
        self.build_info = Info("llmproxy_build", "Proxy version and runtime.", registry=r)
        self.build_info.info(_build_info())
        self.client_limit_rejections = Counter(
            "llmproxy_client_limit_rejections",
            "Requests refused by client admission (unknown key, model not allowed, a limit, a loop).",
            ["client", "reason"],
            registry=r,
        )
        self.health_checks = Counter(
            "llmproxy_health_checks",
            "Active health probes by deployment and outcome class (success when it passed).",
            ["deployment", "outcome_class"],
            registry=r,
        )
        self.hedges = Counter(
            "llmproxy_hedges",
            "Hedged attempts (started because the previous one had no first byte after "
            "hedge_after_ms) by result: won (it answered first), lost (cancelled: an earlier "
            "attempt answered first), failed.",
            ["model_group", "result"],
            registry=r,
        )
        self.config_reloads = Counter(
            "llmproxy_config_reloads",
            "Config reloads by result.",
            ["result"],
            registry=r,
        )
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
        self.state_backend_up = Gauge(
            "llmproxy_state_backend_up",
            "1 if the shared state backend (Redis) is reachable, else 0 (always 1 for memory).",
            registry=r,
        )
        self.state_events = Counter(
            "llmproxy_state_events",
            "Deployment state changes shared between replicas: published by this one, applied from peers.",
            ["direction"],
            registry=r,
        )
        for direction in ("published", "applied"):
            self.state_events.labels(direction)
        self._children: dict[tuple[Any, ...], Any] = {}

    def declare(self, plan: SeriesPlan) -> None:
        """Create at 0 every series an alert or a dashboard panel reads (module docstring).

        Series that exist stay as they are: a reload keeps its counts.
        """
        for dep in plan.deployments:
            self.upstream_duration.declare((dep,))
            for cls in plan.attempt_classes:
                self.attempts.declare((dep, cls))
            for kind in TOKEN_KINDS:
                self.tokens.declare((dep, kind))
        for group, members in plan.groups.items():
            self.requests.declare((group, "200"))
            self.request_duration.declare((group,))
            self.ttfb.declare((group,))
            for reason in SERVED_AWAY_REASONS:
                self.served_away.declare((group, reason))
            for cls in plan.failure_classes:
                self.unserved.declare((group, cls))
            for dep in members:
                for reason in plan.failover_reasons:
                    self._child(self.failovers, group, dep, reason)
                for cls in plan.failure_classes:
                    self._child(self.stream_aborts, group, dep, cls)
        for client, reasons in plan.clients.items():
            for reason in reasons:
                self._child(self.client_limit_rejections, client, reason)

    def add_deployment_gauges(
        self,
        snapshot: Callable[[], Iterable[tuple[str, int, bool, float]]],
        groups: Callable[[], Iterable[tuple[str, int]]],
    ) -> None:
        self.registry.register(DeploymentGauges(snapshot, groups))

    def add_client_gauges(self, snapshot: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        self.registry.register(ClientGauges(snapshot))

    def add_pool_gauges(
        self, snapshot: Callable[[], Iterable[tuple[str, tuple[int, int, int, int]]]]
    ) -> None:
        self.registry.register(PoolGauges(snapshot))

    def pool_wait_observer(self, vendor: str) -> Callable[[float], None]:
        """What a vendor's pool calls with each request's wait for a connection; the
        vendor's series exists from now on, at zero."""
        labels = (vendor,)
        histogram = self.pool_wait
        histogram.declare(labels)
        observe = histogram.observe
        return lambda seconds: observe(labels, seconds)

    def add_listener_gauges(self, snapshot: Callable[[], tuple[int, int, int, int]]) -> None:
        self.registry.register(ListenerGauges(snapshot))

    def add_tracing_counters(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(TracingCounters(counts))

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(self, group: str, status: int, duration_s: float) -> None:
        self.requests.inc((group, _STATUS.get(status) or str(status)))
        self.request_duration.observe((group,), duration_s)

    def unrouted(self, status: int) -> None:
        """A request for a path or method the proxy does not serve (no duration: nothing ran)."""
        self.requests.inc((NO_ROUTE, _STATUS.get(status) or str(status)))

    def first_byte(self, group: str, seconds: float) -> None:
        self.ttfb.observe((group,), seconds)

    def attempt(self, deployment: str, outcome_class: str, duration_s: float) -> None:
        self.attempts.inc((deployment, outcome_class))
        self.upstream_duration.observe((deployment,), duration_s)

    def failover(self, group: str, from_deployment: str, reason: str) -> None:
        self._child(self.failovers, group, from_deployment, reason).inc()

    def health_check(self, deployment: str, outcome_class: str) -> None:
        self._child(self.health_checks, deployment, outcome_class).inc()

    def hedge(self, group: str, result: str) -> None:
        self._child(self.hedges, group, result).inc()

    def stream_abort(self, group: str, deployment: str, outcome_class: str) -> None:
        self._child(self.stream_aborts, group, deployment, outcome_class).inc()

    def unserved_request(self, group: str, outcome_class: str) -> None:
        self.unserved.inc((group, outcome_class))

    def served_away_from_preferred(self, group: str, reason: str, share: float) -> None:
        self.served_away.inc((group, reason), share)

    def usage(self, deployment: str, prompt: int, completion: int, cached_prompt: int) -> None:
        if prompt:
            self.tokens.inc((deployment, "prompt"), prompt)
        if completion:
            self.tokens.inc((deployment, "completion"), completion)
        if cached_prompt:
            self.tokens.inc((deployment, "cached_prompt"), cached_prompt)

    def ratelimit(self, deployment: str, headers: Mapping[str, str]) -> None:
        """Record the vendor's remaining budget so ops see a quota running out before the 429s."""
        for header, kind in RATELIMIT_HEADERS:
            value = headers.get(header)
            if value is not None:
                try:
                    remaining = float(value)
                except ValueError:
                    continue
                self.ratelimit_remaining.set((deployment, kind), remaining)

    def limit_rejection(self, client: str, reason: str) -> None:
        self._child(self.client_limit_rejections, client, reason).inc()


_STATUS = {code: str(code) for code in range(100, 600)}

RELOAD_RESULTS = ("success", "failure")  # the `result` of llmproxy_config_reloads_total
TOKEN_KINDS = ("prompt", "completion", "cached_prompt")  # the `kind` of llmproxy_tokens_total
SERVED_AWAY_REASONS = ("failover", "skipped")  # the `reason` of llmproxy_served_away_total

# Response header -> `kind` label of llmproxy_upstream_ratelimit_remaining (VENDOR_WIRE_FORMATS.md section 3).
RATELIMIT_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-ratelimit-remaining-requests", "requests"),
    ("x-ratelimit-remaining-tokens", "tokens"),
    ("anthropic-ratelimit-requests-remaining", "requests"),
    ("anthropic-ratelimit-tokens-remaining", "tokens"),
    ("anthropic-ratelimit-input-tokens-remaining", "input_tokens"),
    ("anthropic-ratelimit-output-tokens-remaining", "output_tokens"),
)


def _build_info() -> dict[str, str]:
    import platform

    return {"version": VERSION, "python": platform.python_version()}
