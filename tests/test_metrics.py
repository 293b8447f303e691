"""/metrics: the contract names, types and labels of DESIGN.md, parsed as Prometheus parses them."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.fakes import FakeOpenAI, Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config

EXPECTED = {
    "llmproxy_requests": ("counter", {"model_group", "status"}),
    "llmproxy_request_duration_seconds": ("histogram", {"model_group"}),
    "llmproxy_time_to_first_byte_seconds": ("histogram", {"model_group"}),
    "llmproxy_upstream_attempts": ("counter", {"deployment", "outcome_class"}),
    "llmproxy_upstream_duration_seconds": ("histogram", {"deployment"}),
    "llmproxy_failovers": ("counter", {"model_group", "from_deployment", "reason"}),
    "llmproxy_breaker_state": ("gauge", {"deployment"}),
    "llmproxy_deployment_healthy": ("gauge", {"deployment"}),
    "llmproxy_deployment_cooldown_seconds": ("gauge", {"deployment"}),
    "llmproxy_tokens": ("counter", {"deployment", "kind"}),
    "llmproxy_in_flight_requests": ("gauge", set()),
    "llmproxy_model_group_usable_deployments": ("gauge", {"model_group"}),
    "llmproxy_upstream_ratelimit_remaining": ("gauge", {"deployment", "kind"}),
    "llmproxy_build_info": ("gauge", {"version", "python"}),
    "llmproxy_client_limit_rejections": ("counter", {"client", "reason"}),
    "llmproxy_client_budget_used_ratio": ("gauge", {"client", "limit"}),
    "llmproxy_config_reloads": ("counter", {"result"}),
    "llmproxy_health_checks": ("counter", {"deployment", "outcome_class"}),
    "llmproxy_hedges": ("counter", {"model_group", "result"}),
    "llmproxy_state_backend_up": ("gauge", set()),
    "llmproxy_stream_aborts": ("counter", {"model_group", "deployment", "outcome_class"}),
}


async def test_metric_names_types_and_labels(
    pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    a, _, proxy = pair
    client = proxy.client()
    messages = [{"role": "user", "content": "hi"}]
    a.set_fault(
        Fault(
            headers={"x-ratelimit-remaining-requests": "41", "x-ratelimit-remaining-tokens": "9000"}
        )
    )
    await client.chat.completions.create(model="smart", messages=messages)  # type: ignore[arg-type]
    a.set_fault(Fault.preset("rate_limited", retry_after_s=30))
    await client.chat.completions.create(model="smart", messages=messages)  # type: ignore[arg-type]
    a.chunk_delay_s = 0.05  # the first chunk is relayed alone, then the stream is cut
    proxy.gateway.deployments["a/model-a"].clear_cooldown()
    a.set_fault(Fault.preset("drop_midstream"))
    with pytest.raises(openai.APIError):
        async for _ in await client.chat.completions.create(
            model="smart", messages=messages, stream=True
        ):  # type: ignore[arg-type]
            pass
    families = {f.name: f for f in text_string_to_metric_families(await proxy.metrics_text())}
    for name, (kind, labels) in EXPECTED.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)

    def value(name: str, **labels: str) -> float:
        for s in families[name].samples:
            if s.labels == labels and s.name == name + (
                "_total" if families[name].type == "counter" else ""
            ):
                return s.value
        raise AssertionError((name, labels))

    assert value("llmproxy_requests", model_group="smart", status="200") == 3
    assert (
        value("llmproxy_upstream_attempts", deployment="a/model-a", outcome_class="rate_limited")
        == 1
    )
    assert (
        value(
            "llmproxy_failovers",
            model_group="smart",
            from_deployment="a/model-a",
            reason="rate_limited",
        )
        == 1
    )
    assert (
        value(
            "llmproxy_stream_aborts",
            model_group="smart",
            deployment="a/model-a",
            outcome_class="server_error",
        )
        == 1
    )
    assert value("llmproxy_breaker_state", deployment="a/model-a") == 0
    assert value("llmproxy_in_flight_requests") == 0
    assert (
        value("llmproxy_upstream_ratelimit_remaining", deployment="a/model-a", kind="requests")
        == 41
    )
    assert (
        value("llmproxy_upstream_ratelimit_remaining", deployment="a/model-a", kind="tokens")
        == 9000
    )
    assert value("llmproxy_tokens", deployment="a/model-a", kind="prompt") >= 1


async def test_unknown_model_names_never_become_label_values(
    pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    import aiohttp

    _, _, proxy = pair
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            body = {"model": f"client-invented-{i}", "messages": [{"role": "user", "content": "x"}]}
            async with s.post(f"{proxy.url}/v1/chat/completions", json=body) as r:
                assert r.status == 404
    text = await proxy.metrics_text()
    assert "client-invented" not in text
    assert 'llmproxy_requests_total{model_group="_unknown_",status="404"} 5.0' in text


def test_lean_metrics_expose_exactly_what_prometheus_client_would() -> None:
    """The per-request series are plain numbers rendered at scrape time; a scrape must not
    be able to tell them from prometheus_client's own types (alerts and dashboards parse it)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from proxy.metrics import _LATENCY_BUCKETS, LeanCounter, LeanGauge, LeanHistogram
    from proxy.metrics import _LeanCollector as LeanCollector

    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 2.5, 299.0, 300.0, 301.0, 1e9]
    ref, lean = CollectorRegistry(), CollectorRegistry()
    counter = Counter("x_requests", "Requests.", ["group", "status"], registry=ref)
    histogram = Histogram("x_seconds", "Time.", ["group"], buckets=_LATENCY_BUCKETS, registry=ref)
    gauge = Gauge("x_left", "Left.", ["dep", "kind"], registry=ref)
    in_flight = Gauge("x_in_flight", "In flight.", registry=ref)
    lc = LeanCounter("x_requests", "Requests.", ("group", "status"))
    lh = LeanHistogram("x_seconds", "Time.", ("group",), _LATENCY_BUCKETS)
    lg = LeanGauge("x_left", "Left.", ("dep", "kind"))
    lf = LeanGauge("x_in_flight", "In flight.")
    lean.register(LeanCollector((lc, lh, lg, lf)))
    for i, v in enumerate(values):
        group = "a" if i % 3 else "b"
        counter.labels(group, "200").inc()
        lc.inc((group, "200"))
        histogram.labels(group).observe(v)
        lh.observe((group,), v)
        gauge.labels("d", "tokens").set(v)
        lg.set(("d", "tokens"), v)
        in_flight.inc()
        lf.inc()
    in_flight.dec()
    lf.dec()
    counter.labels("b", "429").inc(2.5)
    lc.inc(("b", "429"), 2.5)
    assert generate_latest(lean).decode().splitlines() == [
        line for line in generate_latest(ref).decode().splitlines() if "_created" not in line
    ]


async def test_every_series_alerts_and_panels_read_exists_at_0_from_start_and_from_a_reload(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    """A series born at its first increment is born at 1, which increase() cannot see."""
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(
        build_config({"a": a}, "  smart: {deployments: [{vendor: a, model: m}]}\n")
    )
    text = await proxy.metrics_text()
    for series in (
        'llmproxy_upstream_attempts_total{deployment="a/m",outcome_class="quota_exhausted"} 0.0',
        'llmproxy_upstream_attempts_total{deployment="a/m",outcome_class="auth_error"} 0.0',
        'llmproxy_config_reloads_total{result="failure"} 0.0',
        'llmproxy_requests_total{model_group="smart",status="200"} 0.0',
        'llmproxy_unserved_requests_total{model_group="smart",outcome_class="rate_limited"} 0.0',
        'llmproxy_served_away_total{model_group="smart",reason="skipped"} 0.0',
        'llmproxy_failovers_total{from_deployment="a/m",model_group="smart",reason="timeout"} 0.0',
        'llmproxy_stream_aborts_total{deployment="a/m",model_group="smart",outcome_class="server_error"} 0.0',
        'llmproxy_tokens_total{deployment="a/m",kind="cached_prompt"} 0.0',
        'llmproxy_upstream_duration_seconds_count{deployment="a/m"} 0.0',
    ):
        assert series in text, series
    assert "llmproxy_client_limit_rejections_total{" not in text  # no clients: open proxy

    config = Path(proxy.config.source)
    config.write_text(
        build_config(
            {"a": a, "b": b},
            "  smart: {deployments: [{vendor: a, model: m}, {vendor: b, model: m}]}\n",
            "clients:\n  - {name: team, key_sha256: '" + "0" * 64 + "'}\n",
        )
    )
    await proxy.gateway.reload_from_file()
    text = await proxy.metrics_text()
    for series in (
        'llmproxy_upstream_attempts_total{deployment="b/m",outcome_class="quota_exhausted"} 0.0',
        'llmproxy_client_limit_rejections_total{client="team",reason="loop_detected"} 0.0',
        'llmproxy_client_limit_rejections_total{client="_unknown_",reason="invalid_key"} 0.0',
        'llmproxy_config_reloads_total{result="success"} 1.0',
    ):
        assert series in text, series
