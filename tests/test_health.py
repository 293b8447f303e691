"""Active health checks: probes alone take a dead vendor out of rotation and bring it back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from proxy.fakes import FakeOpenAI, Fault
from proxy.health.breaker import BreakerState
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config, two_deployments

MESSAGES = [{"role": "user", "content": "hello"}]
INTERVAL_S = 0.1
JITTER = 0.1
FAST_CHECKS = (
    f"health_check: {{interval_s: {INTERVAL_S}, timeout_s: 0.5, unhealthy_threshold: 2, "
    f"healthy_threshold: 2, jitter: {JITTER}}}\n"
)


async def wait_for(condition: Callable[[], bool], limit_s: float = 5.0) -> float:
    """Poll until `condition` holds; returns how long it took (fails the test at `limit_s`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"condition not met within {limit_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def chat(proxy: RunningProxy) -> tuple[str, str]:
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    return raw.headers["x-proxy-deployment"], raw.headers["x-proxy-attempts"]


async def status(proxy: RunningProxy, **headers: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proxy.url}/admin/status", headers=headers) as r,
    ):
        return r.status, await r.json()


@pytest.fixture
async def checked(
    fakes: FakeFactory, proxies: ProxyFactory
) -> tuple[FakeOpenAI, FakeOpenAI, RunningProxy]:
    """Group `smart` = [a, b] (priority) with fast health checks."""
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments(), FAST_CHECKS))
    return a, b, proxy


async def test_probes_alone_take_a_refusing_vendor_out_and_bring_it_back(
    checked: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    a, b, proxy = checked
    dep = proxy.gateway.deployments["a/model-a"]
    await wait_for(lambda: a.stats.model_list_requests >= 1)  # probing has begun
    await a.apply_fault(Fault.preset("refuse"))
    took = await wait_for(lambda: not dep.healthy)
    # Two failing probes: at most 2 x interval (+ jitter), with room for a slow CI machine.
    assert took < 2 * INTERVAL_S * (1 + JITTER) + 0.5
    assert a.stats.total_requests == 0 and b.stats.total_requests == 0  # no client traffic
    assert 'llmproxy_deployment_healthy{deployment="a/model-a"} 0.0' in await proxy.metrics_text()

    for _ in range(5):  # no client request goes to the unhealthy deployment
        assert await chat(proxy) == ("b/model-b", "b/model-b=success")
    metrics = await proxy.metrics_text()
    attempts_to_a = [
        line
        for line in metrics.splitlines()
        if line.startswith('llmproxy_upstream_attempts_total{deployment="a/model-a"')
    ]
    assert attempts_to_a and all(line.endswith(" 0.0") for line in attempts_to_a)
    assert 'deployment="a/model-a",outcome_class="unreachable"} ' in metrics  # the probes

    passes_before = proxy.gateway.health.probes["a/model-a"].checks
    await a.unrefuse()
    await wait_for(lambda: dep.healthy)
    probe = proxy.gateway.health.probes["a/model-a"]
    assert probe.passes >= 2 and probe.checks >= passes_before + 2  # healthy_threshold passes
    assert await chat(proxy) == ("a/model-a", "a/model-a=success")


async def test_probes_spend_no_tokens(checked: tuple[FakeOpenAI, FakeOpenAI, RunningProxy]) -> None:
    a, b, _ = checked
    await wait_for(lambda: a.stats.model_list_requests >= 3 and b.stats.model_list_requests >= 3)
    for fake in (a, b):
        assert fake.stats.total_requests == 0
        assert fake.stats.tokens == {"prompt": 0, "completion": 0, "cached": 0}


async def test_readiness_does_not_wait_for_probes(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    await a.apply_fault(Fault.preset("black_hole"))  # a probe of `a` never answers
    extra = "health_check: {interval_s: 30, timeout_s: 20}\n"
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments(), extra))
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/health/ready") as r:
        assert r.status == 200


async def test_passing_probe_clears_unreachable_cooldown_and_ends_the_breaker_wait(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    extra = FAST_CHECKS + "breaker: {fail_max: 1, reset_timeout_s: 600}\n"
    extra += "cooldowns: {unreachable_s: 600}\n"
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments(), extra))
    dep = proxy.gateway.deployments["a/model-a"]
    await a.apply_fault(Fault.preset("refuse"))
    assert await chat(proxy) == ("b/model-b", "a/model-a=unreachable, b/model-b=success")
    assert dep.breaker.state is BreakerState.OPEN and dep.cooldown_reason == "unreachable"
    await a.unrefuse()
    # Long before the 600 s cooldown and breaker timeout, passing probes end both waits:
    # the cooldown goes at the first pass, the breaker turns half-open after two.
    await wait_for(lambda: dep.breaker.state is BreakerState.HALF_OPEN)
    assert dep.cooldown_left(time.monotonic()) == 0
    # The next request is the breaker's trial; it succeeds and closes it.
    assert await chat(proxy) == ("a/model-a", "a/model-a=success")
    assert dep.breaker.state is BreakerState.CLOSED


async def test_completion_probe_per_deployment_and_failures_by_status(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    models = (
        "  smart:\n    deployments:\n"
        "      - {vendor: a, model: model-a, health_check: {probe: completion}}\n"
        "      - {vendor: b, model: model-b, health_check: {enabled: false}}\n"
    )
    proxy = await proxies(build_config({"a": a, "b": b}, models, FAST_CHECKS))
    dep = proxy.gateway.deployments["a/model-a"]
    await wait_for(lambda: a.stats.total_requests >= 2)
    assert a.stats.model_list_requests == 0
    recorded = a.stats.last_requests[-1]
    assert recorded.path == "/v1/chat/completions"
    assert recorded.body["model"] == "model-a" and recorded.body["max_tokens"] == 1
    a.set_fault(Fault.preset("server_error"))
    await wait_for(lambda: not dep.healthy)
    assert b.stats.model_list_requests == 0 and b.stats.total_requests == 0  # not checked
    assert proxy.gateway.health.status("b/model-b") is None


async def test_probe_refused_for_credentials_says_nothing_about_health(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a", api_key="the-real-key")  # the proxy sends another key: 401
    b = await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments(), FAST_CHECKS))
    probe = proxy.gateway.health.probes["a/model-a"]
    await wait_for(lambda: probe.checks >= 3)
    assert proxy.gateway.deployments["a/model-a"].healthy
    assert probe.last_result == "auth_error" and probe.failures == 0


async def test_health_checks_can_be_turned_off(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    a, b = await fakes("a"), await fakes("b")
    extra = "health_check: {enabled: false, interval_s: 0.05}\n"
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments(), extra))
    await asyncio.sleep(0.3)
    assert a.stats.model_list_requests == 0 and b.stats.model_list_requests == 0
    assert proxy.gateway.health.probes == {}


async def test_probes_stop_with_the_proxy(
    checked: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    a, _, proxy = checked
    await wait_for(lambda: a.stats.model_list_requests >= 1)
    await proxy.listener.close(2)
    seen = a.stats.model_list_requests
    await asyncio.sleep(3 * INTERVAL_S)
    assert a.stats.model_list_requests == seen


# ----------------------------------------------------------------------------- /admin/status


async def test_admin_status_shows_every_deployment_and_group(
    checked: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    a, _, proxy = checked
    await a.apply_fault(Fault.preset("rate_limited", retry_after_s=30))
    await chat(proxy)
    await wait_for(lambda: proxy.gateway.health.probes["b/model-b"].checks >= 1)
    code, doc = await status(proxy)
    assert code == 200
    assert doc["config_version"] == proxy.config.version and doc["generated_at"].endswith("+00:00")
    a_status, b_status = doc["deployments"]["a/model-a"], doc["deployments"]["b/model-b"]
    assert a_status["usable"] is False
    assert a_status["cooldown"]["reason"] == "rate_limited"
    assert 25 < a_status["cooldown"]["left_s"] <= 30
    assert a_status["breaker"] == {
        "state": "closed",
        "failures": 0,
        "drained": False,
        "trial_in_s": None,
    }
    assert b_status["healthy"] is True and b_status["cooldown"] is None
    assert b_status["latency_ewma_ms"] > 0 and b_status["in_flight"] == 0
    assert b_status["health_check"]["last_result"] == "success"
    assert b_status["health_check"]["probe"] == "models"
    assert b_status["health_check"]["last_probe_at"].endswith("+00:00")
    assert doc["groups"]["smart"] == {
        "strategy": "priority",
        "deployments": ["a/model-a", "b/model-b"],
        "usable": 1,
        "context_window_fallback": None,
        "hedge_after_ms": None,
    }


# The admin key and loopback-only rules are tested for every admin route in test_admin.py.


# ----------------------------------------------------------------------------- config


_ONE_VENDOR = "vendors: {v: {type: openai, base_url: 'http://127.0.0.1:1/v1'}}\n"


def test_health_check_config_is_global_with_per_deployment_overrides() -> None:
    from proxy.config import parse_config

    config = parse_config(
        _ONE_VENDOR + "health_check: {interval_s: 3, jitter: 0}\n"
        "models:\n  g:\n    deployments:\n"
        "      - {vendor: v, model: a, health_check: {probe: completion, unhealthy_threshold: 4}}\n"
        "      - {vendor: v, model: b}\n",
        env={},
    )
    a, b = config.deployments["v/a"].health_check, config.deployments["v/b"].health_check
    assert (a.interval_s, a.jitter, a.probe, a.unhealthy_threshold) == (3, 0, "completion", 4)
    assert (b.interval_s, b.probe, b.unhealthy_threshold, b.healthy_threshold) == (
        3,
        "models",
        2,
        2,
    )
    assert b.enabled and b.timeout_s == 5


def test_bad_health_check_settings_are_reported_with_their_lines() -> None:
    from proxy.config import ConfigError, parse_config

    text = (
        _ONE_VENDOR + "health_check: {jitter: 2, probe: ping, every_s: 3}\n"
        "models:\n  g:\n    deployments:\n"
        "      - {vendor: v, model: a, health_check: {interval_s: 0}, rpm: 0}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="r.yaml", env={})
    text = str(info.value)
    assert "r.yaml:2: health_check.jitter: must be between 0 and 1, got 2" in text
    assert "r.yaml:2: health_check.probe: must be one of 'models', 'completion', got 'ping'" in text
    assert "r.yaml:2: health_check.every_s: unknown key" in text
    assert (
        "r.yaml:6: models.g.deployments[0].health_check.interval_s: must be greater than 0" in text
    )
    assert "r.yaml:6: models.g.deployments[0].rpm: must be at least 1, got 0" in text


async def test_anthropic_deployments_are_probed_by_listing_models(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    claude = await fakes("claude", vendor="anthropic")
    models = "  smart:\n    deployments:\n      - {vendor: claude, model: claude-sonnet-4-5}\n"
    proxy = await proxies(build_config({"claude": claude}, models, FAST_CHECKS))
    await wait_for(lambda: claude.stats.model_list_requests >= 2)
    assert claude.stats.total_requests == 0  # no tokens spent on probes
    status = proxy.gateway.health.status("claude/claude-sonnet-4-5")
    assert status is not None and status["last_result"] == "success"
    assert status["disabled"] is None
    # A dead Anthropic vendor is taken out of routing by probes alone.
    await claude.apply_fault(Fault.preset("refuse"))
    dep = proxy.gateway.deployments["claude/claude-sonnet-4-5"]
    await wait_for(lambda: not dep.healthy)
