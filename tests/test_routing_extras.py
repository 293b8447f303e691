"""Hedging, per-deployment caps and the context-window fallback."""

from __future__ import annotations

import asyncio
import collections

import openai
import pytest

from proxy.fakes import FakeOpenAI, Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config, two_deployments
from tests.test_health import wait_for

MESSAGES = [{"role": "user", "content": "hello"}]


async def chat(proxy: RunningProxy, stream: bool = False, model: str = "smart") -> tuple[str, str]:
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=stream
    )
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        text = raw.parse().choices[0].message.content or ""
    assert text.startswith("Hello from")
    return raw.headers["x-proxy-deployment"], raw.headers["x-proxy-attempts"]


def hedged(ms: int = 100) -> str:
    return two_deployments() + f"    hedge_after_ms: {ms}\n"


# ----------------------------------------------------------------------------- hedging


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_hedge_returns_the_fast_answer_and_cancels_the_slow_upstream(
    fakes: FakeFactory, proxies: ProxyFactory, stream: bool
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, hedged()))
    a.set_fault(Fault(stall_s=30))  # no first byte for far longer than hedge_after_ms
    served, attempts = await chat(proxy, stream)
    assert served == "b/model-b"
    assert attempts == "a/model-a=hedge_lost, b/model-b=success"
    await wait_for(lambda: a.stats.disconnects == 1)  # the slow vendor saw the cancellation
    assert a.stats.in_flight == 0
    metrics = await proxy.metrics_text()
    assert 'llmproxy_hedges_total{model_group="smart",result="won"} 1.0' in metrics
    assert (
        'llmproxy_upstream_attempts_total{deployment="a/model-a",outcome_class="hedge_lost"} 1.0'
        in metrics
    )
    dep_a = proxy.gateway.deployments["a/model-a"]
    assert dep_a.in_flight == 0 and dep_a.breaker.fail_counter == 0  # not blamed


async def test_hedge_that_loses_is_cancelled(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, hedged(50)))
    a.set_fault(Fault(latency_s=0.3))  # slow, but answers before the hedge does
    b.set_fault(Fault(stall_s=30))
    served, attempts = await chat(proxy)
    assert (served, attempts) == ("a/model-a", "b/model-b=hedge_lost, a/model-a=success")
    await wait_for(lambda: b.stats.disconnects == 1)
    metrics = await proxy.metrics_text()
    assert 'llmproxy_hedges_total{model_group="smart",result="lost"} 1.0' in metrics
    assert proxy.gateway.deployments["b/model-b"].in_flight == 0


async def test_no_hedge_when_the_first_answer_is_quick(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, hedged(2000)))
    for _ in range(3):
        assert await chat(proxy) == ("a/model-a", "a/model-a=success")
    assert b.stats.total_requests == 0
    assert "llmproxy_hedges_total{" not in await proxy.metrics_text()


async def test_hedged_group_still_fails_over_on_errors(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    fs = {n: await fakes(n) for n in "abc"}
    models = "  smart:\n    hedge_after_ms: 100\n    deployments:\n" + "".join(
        f"      - {{vendor: {n}, model: m}}\n" for n in "abc"
    )
    proxy = await proxies(build_config(fs, models))
    fs["a"].set_fault(Fault(stall_s=30))
    fs["b"].set_fault(Fault.preset("server_error"))  # the hedge fails fast: hedge again
    served, attempts = await chat(proxy)
    assert served == "c/m"
    assert attempts == "b/m=server_error, a/m=hedge_lost, c/m=success"
    metrics = await proxy.metrics_text()
    assert 'llmproxy_hedges_total{model_group="smart",result="failed"} 1.0' in metrics
    assert 'llmproxy_hedges_total{model_group="smart",result="won"} 1.0' in metrics


async def test_client_gone_cancels_every_hedged_attempt(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, hedged(50)))
    a.set_fault(Fault(stall_s=30))
    b.set_fault(Fault(stall_s=30))
    with pytest.raises(openai.APITimeoutError):
        await proxy.client(timeout=0.5).chat.completions.create(model="smart", messages=MESSAGES)
    await wait_for(lambda: a.stats.disconnects == 1 and b.stats.disconnects == 1)
    deps = proxy.gateway.deployments.values()
    await wait_for(lambda: all(d.in_flight == 0 for d in deps))


def test_hedge_after_ms_must_be_positive() -> None:
    from proxy.config import ConfigError, parse_config

    text = (
        "vendors: {v: {type: openai, base_url: 'http://127.0.0.1:1/v1'}}\n"
        "models: {g: {hedge_after_ms: 0, deployments: [{vendor: v, model: m}]}}\n"
    )
    with pytest.raises(ConfigError, match=r"models\.g\.hedge_after_ms: must be greater than 0"):
        parse_config(text, env={})


# ----------------------------------------------------------------------------- caps


def capped(a: FakeOpenAI, b: FakeOpenAI, caps: str) -> str:
    """Group `smart` = [a with `caps`, b] (priority)."""
    return build_config({"a": a, "b": b}, two_deployments()).replace(
        "{vendor: a, model: model-a}", f"{{vendor: a, model: model-a, {caps}}}"
    )


async def test_max_concurrent_sends_the_overflow_to_the_next_deployment(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    text = capped(a, b, "max_concurrent: 2")
    proxy = await proxies(text)
    a.set_fault(Fault(latency_s=0.3))
    results = await asyncio.gather(*(chat(proxy) for _ in range(5)))
    assert collections.Counter(served for served, _ in results) == {"a/model-a": 2, "b/model-b": 3}
    assert all("a/model-a" not in attempts for served, attempts in results if served == "b/model-b")


async def test_rpm_and_tpm_caps_skip_the_deployment_instead_of_earning_a_429(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    text = capped(a, b, "rpm: 3")
    proxy = await proxies(text)
    got = [(await chat(proxy))[0] for _ in range(5)]
    assert got == ["a/model-a"] * 3 + ["b/model-b"] * 2
    # One answer is ~7 tokens (prompt + 5 pieces): a 10-token budget takes two answers.
    text = capped(a, b, "tpm: 10")
    proxy = await proxies(text)
    got = [(await chat(proxy, stream=s))[0] for s in (False, False, False, True)]
    assert got == ["a/model-a", "a/model-a", "b/model-b", "b/model-b"]


async def test_every_deployment_at_its_cap_is_a_429_with_retry_after(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    models = "  smart:\n    deployments:\n      - {vendor: a, model: model-a, rpm: 1}\n"
    proxy = await proxies(build_config({"a": a}, models))
    await chat(proxy)
    with pytest.raises(openai.RateLimitError) as info:
        await chat(proxy)
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 120
    assert a.stats.total_requests == 1  # the vendor never saw the request over the cap


# ----------------------------------------------------------------------------- context fallback


def _with_fallback(fallback_deployments: str) -> str:
    return (
        two_deployments()
        + "    context_window_fallback: long\n  long:\n    deployments:\n"
        + fallback_deployments
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_context_fallback_fails_over_within_the_fallback_group_only(
    fakes: FakeFactory, proxies: ProxyFactory, stream: bool
) -> None:
    fs = {n: await fakes(n) for n in ("a", "b", "big1", "big2")}
    models = _with_fallback(
        "      - {vendor: big1, model: model-big}\n      - {vendor: big2, model: model-big}\n"
    )
    proxy = await proxies(build_config(fs, models))
    fs["a"].set_fault(Fault.preset("context_too_long"))
    fs["big1"].set_fault(Fault.preset("server_error"))
    served, attempts = await chat(proxy, stream)
    assert served == "big2/model-big"
    assert attempts == (
        "a/model-a=context_too_long, big1/model-big=server_error, big2/model-big=success"
    )
    assert fs["b"].stats.total_requests == 0  # same-size deployments are never tried


async def test_context_too_long_in_the_fallback_group_too_is_the_clients_error(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    fs: dict[str, FakeOpenAI] = {n: await fakes(n) for n in ("a", "b", "big")}
    proxy = await proxies(build_config(fs, _with_fallback("      - {vendor: big, model: m}\n")))
    fs["a"].set_fault(Fault.preset("context_too_long"))
    fs["big"].set_fault(Fault.preset("context_too_long"))
    with pytest.raises(openai.BadRequestError) as info:
        await chat(proxy)
    assert info.value.code == "context_length_exceeded"
    assert info.value.response.headers["x-proxy-attempts"] == (
        "a/model-a=context_too_long, big/m=context_too_long"
    )
    assert fs["b"].stats.total_requests == 0


async def test_context_fallbacks_chain_but_never_loop(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    fs = {n: await fakes(n) for n in ("a", "b", "c")}
    models = (
        "  small:\n    context_window_fallback: medium\n    deployments: [{vendor: a, model: s}]\n"
        "  medium:\n    context_window_fallback: small\n    deployments: [{vendor: b, model: m}]\n"
        "  large:\n    deployments: [{vendor: c, model: l}]\n"
    )
    proxy = await proxies(build_config(fs, models))
    fs["a"].set_fault(Fault.preset("context_too_long"))
    fs["b"].set_fault(Fault.preset("context_too_long"))
    with pytest.raises(openai.BadRequestError) as info:
        await chat(proxy, model="small")
    assert info.value.response.headers["x-proxy-attempts"] == (
        "a/s=context_too_long, b/m=context_too_long"
    )
    assert fs["a"].stats.total_requests == 1  # medium's fallback (small) was not retried


def test_sliding_window_counts_the_last_minute() -> None:
    from proxy.health.caps import SlidingWindow

    w = SlidingWindow()
    w.add(0.0, 10)
    assert w.used(30.0) == 10
    assert w.free_in(30.0, 10) == pytest.approx(30.0)  # this window ends, then it decays
    assert w.used(90.0) == pytest.approx(5.0)  # half of the previous minute still overlaps
    assert w.free_in(90.0, 3) == pytest.approx(12.0)
    assert w.used(102.0) == pytest.approx(3.0)
    assert w.used(500.0) == 0 and w.free_in(500.0, 1) == 0
