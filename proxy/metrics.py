"""Prometheus metrics. The names and labels are a contract: alert rules depend on them.

Label values are bounded: model groups and deployments come from the config, outcome
classes from a fixed table, statuses are HTTP codes. A client's unknown model name is
never a label value (it becomes `UNKNOWN_GROUP`).

Label children are cached in plain dicts: `Counter.labels()` takes a lock and builds a
tuple each call, which is measurable on a path that aims at a quarter millisecond.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["UNKNOWN_GROUP", "DeploymentGauges", "Metrics"]

UNKNOWN_GROUP = "_unknown_"

# `*_created` series double the scrape size and no alert or dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets from 5 ms to 5 min: LLM calls span four orders of magnitude.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class DeploymentGauges(Collector):
    """Gauges read from live deployment state at scrape time (cooldowns count down by themselves)."""

    def __init__(
        self,
        snapshot: Callable[[], Iterable[tuple[str, int, bool, float]]],
        groups: Callable[[], Iterable[tuple[str, int]]],
    ) -> None:
        # snapshot yields (deployment id, breaker state 0/1/2, healthy, cooldown seconds left);
        # groups yields (model group, how many of its deployments routing would use now).
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
            "Deployments of the group that routing would use now (not open, cooling or unhealthy).",
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


class Metrics:
    """All of the proxy's metrics, on a registry of its own (several proxies can share a process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "llmproxy_requests",
            "Client requests by model group and final HTTP status.",
            ["model_group", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "llmproxy_request_duration_seconds",
            "Client request duration, to the last byte.",
            ["model_group"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "llmproxy_time_to_first_byte_seconds",
            "Time from request to the first byte sent to the client.",
            ["model_group"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "llmproxy_upstream_attempts",
            "Upstream attempts by deployment and outcome class.",
            ["deployment", "outcome_class"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "llmproxy_upstream_duration_seconds",
            "Upstream attempt duration (to the first byte for streams).",
            ["deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
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
        self.tokens = Counter(
            "llmproxy_tokens",
            "Tokens reported by vendors.",
            ["deployment", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "llmproxy_in_flight_requests", "Client requests being served.", registry=r
        )
        self.ratelimit_remaining = Gauge(
            "llmproxy_upstream_ratelimit_remaining",
            "Requests/tokens left in the vendor's current rate-limit window, from its response headers.",
            ["deployment", "kind"],
            registry=r,
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
        self._children: dict[tuple[Any, ...], Any] = {}

    def add_deployment_gauges(
        self,
        snapshot: Callable[[], Iterable[tuple[str, int, bool, float]]],
        groups: Callable[[], Iterable[tuple[str, int]]],
    ) -> None:
        self.registry.register(DeploymentGauges(snapshot, groups))

    def add_client_gauges(self, snapshot: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        self.registry.register(ClientGauges(snapshot))

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(self, group: str, status: int, duration_s: float) -> None:
        self._child(self.requests, group, str(status)).inc()
        self._child(self.request_duration, group).observe(duration_s)

    def first_byte(self, group: str, seconds: float) -> None:
        self._child(self.ttfb, group).observe(seconds)

    def attempt(self, deployment: str, outcome_class: str, duration_s: float) -> None:
        self._child(self.attempts, deployment, outcome_class).inc()
        self._child(self.upstream_duration, deployment).observe(duration_s)

    def failover(self, group: str, from_deployment: str, reason: str) -> None:
        self._child(self.failovers, group, from_deployment, reason).inc()

    def health_check(self, deployment: str, outcome_class: str) -> None:
        self._child(self.health_checks, deployment, outcome_class).inc()

    def hedge(self, group: str, result: str) -> None:
        self._child(self.hedges, group, result).inc()

    def stream_abort(self, group: str, deployment: str, outcome_class: str) -> None:
        self._child(self.stream_aborts, group, deployment, outcome_class).inc()

    def usage(self, deployment: str, prompt: int, completion: int, cached_prompt: int) -> None:
        if prompt:
            self._child(self.tokens, deployment, "prompt").inc(prompt)
        if completion:
            self._child(self.tokens, deployment, "completion").inc(completion)
        if cached_prompt:
            self._child(self.tokens, deployment, "cached_prompt").inc(cached_prompt)

    def ratelimit(self, deployment: str, headers: Mapping[str, str]) -> None:
        """Record the vendor's remaining budget so ops see a quota running out before the 429s."""
        for header, kind in RATELIMIT_HEADERS:
            value = headers.get(header)
            if value is not None:
                try:
                    remaining = float(value)
                except ValueError:
                    continue
                self._child(self.ratelimit_remaining, deployment, kind).set(remaining)

    def limit_rejection(self, client: str, reason: str) -> None:
        self._child(self.client_limit_rejections, client, reason).inc()


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
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("llm-failover-proxy")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        ours = "unknown"
    return {"version": ours, "python": platform.python_version()}
