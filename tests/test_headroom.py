"""Routing by the headroom vendors announce: a budgeted vendor never answers a 429.

The fake vendors meter a budget (requests, or tokens, per window), report it in their own
rate-limit headers on every answer (OpenAI's `x-ratelimit-*`, Anthropic's
`anthropic-ratelimit-*`) and answer a request over it with their 429. The 429s they
answered are counted at the vendor (`stats.over_budget`), so "none provoked" is measured
where it happens. Clients are the official SDKs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from proxy.fakes import Budget, FakeVendor, Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config
from tests.redis_server import RedisServer
from tests.test_reload_and_shutdown import _start, processes

__all__ = ["processes"]  # the fixture, re-exported for this module's tests

pytestmark = pytest.mark.timeout(120)

GROUP = """\
  smart:
    strategy: priority
    deployments:
      - {vendor: a, model: model-a}
      - {vendor: b, model: model-b}
"""
MAX_TOKENS = 20
PROMPT_CHARS = 2000  # the prompt dominates a request's size: vendor and proxy count alike


@dataclass
class Result:
    status: int
    attempts: str
    deployment: str | None


Send = Callable[[str], Awaitable[Result]]


def _sender(proxy: RunningProxy, style: str) -> Send:
    """One request to `proxy` through the official SDK of the vendor's own API."""
    if style == "openai":
        return _openai_sender(proxy.client())
    return _anthropic_sender(proxy.anthropic_client())


def _openai_sender(client: openai.AsyncOpenAI) -> Send:
    async def send(content: str) -> Result:
        raw = await client.chat.completions.with_raw_response.create(
            model="smart", messages=[{"role": "user", "content": content}], max_tokens=MAX_TOKENS
        )
        return Result(
            raw.http_response.status_code,
            raw.headers.get("x-proxy-attempts", ""),
            raw.headers.get("x-proxy-deployment"),
        )

    return send


def _anthropic_sender(client: anthropic.AsyncAnthropic) -> Send:
    async def send(content: str) -> Result:
        raw = await client.messages.with_raw_response.create(
            model="smart", max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": content}]
        )
        return Result(
            raw.http_response.status_code,
            raw.headers.get("x-proxy-attempts", ""),
            raw.headers.get("x-proxy-deployment"),
        )

    return send


async def _at_rate(
    send: Send, rate: float, duration_s: float, max_in_flight: int
) -> list[Result | BaseException]:
    """`rate` requests a second for `duration_s`, at most `max_in_flight` at a time."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(max_in_flight)
    results: list[Result | BaseException] = []

    async def one(i: int) -> None:
        try:
            results.append(await send(f"request {i}: " + "x" * PROMPT_CHARS))
        except Exception as exc:  # a client error: counted, asserted on below
            results.append(exc)
        finally:
            gate.release()

    tasks = []
    start = loop.time()
    for i in range(int(rate * duration_s)):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        await gate.acquire()
        tasks.append(loop.create_task(one(i)))
    await asyncio.wait_for(asyncio.gather(*tasks), duration_s + 30)
    return results


# (vendor style, metered bucket): requests and, separately, tokens, for both header families.
# Anthropic's resets have one-second precision (rounded up), so its windows are longer.
CASES = [
    ("openai", "requests"),
    ("openai", "tokens"),
    ("anthropic", "requests"),
    ("anthropic", "tokens"),
]


def _budget(fake: FakeVendor, bucket: str, per_window: int, window_s: float) -> Budget:
    if bucket == "requests":
        return Budget(requests=per_window, window_s=window_s)
    cost = fake.budget_cost(
        {"messages": [{"content": "request 00: " + "x" * PROMPT_CHARS}], "max_tokens": MAX_TOKENS}
    )
    return Budget(tokens=per_window * cost, window_s=window_s)


@pytest.mark.parametrize(("style", "bucket"), CASES)
async def test_twice_the_budget_with_8_in_flight_provokes_no_429_and_uses_the_budget(
    fakes: FakeFactory, proxies: ProxyFactory, style: str, bucket: str
) -> None:
    per_window, windows = 10, 3
    window_s = 2.0 if style == "openai" else 3.0
    latency = Fault(latency_s=0.5)  # requests overlap: up to 8 are in flight at once
    a = await fakes("a", style, fault=latency)
    b = await fakes("b", style, fault=latency)
    a.budget = _budget(a, bucket, per_window, window_s)
    proxy = await proxies(build_config({"a": a, "b": b}, GROUP))

    started = time.monotonic()
    results = await _at_rate(
        _sender(proxy, style), 2 * per_window / window_s, windows * window_s, max_in_flight=8
    )
    elapsed = time.monotonic() - started

    errors = [r for r in results if not isinstance(r, Result) or r.status != 200]
    assert not errors, errors[:3]
    assert a.stats.over_budget == 0 and b.stats.over_budget == 0
    served = [r for r in results if isinstance(r, Result)]
    by_a = sum(1 for r in served if r.deployment == "a/model-a")
    # Every window the traffic spanned gave `per_window`; the preferred one used most of it.
    assert by_a >= 0.8 * per_window * windows, (by_a, len(served), elapsed)
    skipped = [r for r in served if r.attempts.startswith("a/model-a=no_headroom")]
    assert skipped and all(r.deployment == "b/model-b" for r in skipped)
    assert all("rate_limited" not in r.attempts for r in served)
    metrics = await proxy.metrics_text()
    line = 'llmproxy_routing_skips_total{deployment="a/model-a",reason="no_headroom"}'
    assert f"{line} {float(len(skipped))}" in metrics


@pytest.mark.parametrize("style", ["openai", "anthropic"])
async def test_a_request_larger_than_the_token_headroom_goes_straight_to_the_sibling(
    fakes: FakeFactory, proxies: ProxyFactory, style: str
) -> None:
    a, b = await fakes("a", style), await fakes("b", style)
    a.budget = Budget(tokens=3000, window_s=60)
    proxy = await proxies(build_config({"a": a, "b": b}, GROUP))
    send = _sender(proxy, style)

    small = await send("hello")
    assert small.attempts == "a/model-a=success"
    status = proxy.gateway.deployments["a/model-a"].headroom.status(time.monotonic())
    assert status is not None
    left = status["buckets"]["tokens"]["left"]
    assert 2000 < left < 3000
    big = await send("y" * int(left * 4))  # more tokens than a has left: a 429 if sent there
    assert big.attempts == "a/model-a=no_headroom, b/model-b=success"
    again = await send("hello again")  # a small one still fits
    assert again.attempts == "a/model-a=success"
    assert a.stats.over_budget == 0
    assert a.stats.total_requests == 2


async def test_when_every_deployment_is_out_of_headroom_the_first_to_reset_is_tried(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    a.budget = Budget(requests=1, window_s=60)
    b.budget = Budget(requests=1, window_s=20)
    proxy = await proxies(build_config({"a": a, "b": b}, GROUP))
    send = _sender(proxy, "openai")
    assert (await send("one")).attempts == "a/model-a=success"
    assert (await send("two")).attempts == "a/model-a=no_headroom, b/model-b=success"

    client = proxy.client()
    # Both vendors said 0 left: the proxy still asks them (they, not it, say no), the one
    # whose window ends first first, and the client gets their 429 with its retry-after.
    with pytest.raises(Exception) as caught:
        await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "three"}]
        )
    response: Any = caught.value.response  # type: ignore[attr-defined]
    assert response.status_code == 429
    assert response.headers["x-proxy-attempts"] == (
        "b/model-b=rate_limited, a/model-a=rate_limited"
    )
    assert 0 < float(response.headers["retry-after"]) <= 20


async def test_headroom_in_admin_status_and_metrics(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    a.budget = Budget(requests=10, tokens=100_000, window_s=60)
    proxy = await proxies(build_config({"a": a, "b": b}, GROUP))
    metrics = await proxy.metrics_text()
    assert 'llmproxy_model_group_headroom_ratio{model_group="smart"} 1.0' in metrics
    assert 'llmproxy_routing_skips_total{deployment="a/model-a",reason="no_headroom"} 0.0' in (
        metrics
    )
    send = _sender(proxy, "openai")
    for i in range(3):
        await send(f"hi {i}")
    doc = proxy.gateway.deployments["a/model-a"].headroom.status(time.monotonic())
    assert doc is not None and doc["source"] == "this replica"
    requests = doc["buckets"]["requests"]
    assert requests["remaining"] == 7 and requests["limit"] == 10 and requests["left"] == 7
    assert 59 < requests["reset_in_s"] <= 60
    metrics = await proxy.metrics_text()
    assert (
        'llmproxy_upstream_ratelimit_remaining{deployment="a/model-a",kind="requests"} 7.0'
        in metrics
    )
    # b never answered, so its capacity is unknown: the group is not short.
    assert 'llmproxy_model_group_headroom_ratio{model_group="smart"} 1.0' in metrics


@pytest.mark.parametrize(("style", "bucket"), [("openai", "requests"), ("anthropic", "tokens")])
async def test_two_replicas_on_redis_spend_one_budget_without_a_429(
    fakes: FakeFactory,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
    style: str,
    bucket: str,
) -> None:
    per_window, windows = 10, 3
    window_s = 2.0 if style == "openai" else 3.0
    latency = Fault(latency_s=0.5)
    a = await fakes("a", style, fault=latency)
    b = await fakes("b", style, fault=latency)
    a.budget = _budget(a, bucket, per_window, window_s)
    config = tmp_path / "proxy.yaml"
    config.write_text(
        build_config(
            {"a": a, "b": b}, GROUP, f"state: {{backend: redis, url: '{redis_server.url}'}}\n"
        )
    )
    urls = []
    for _ in range(2):
        proc, url = await _start(config, "--no-access-log")
        processes.append(proc)
        urls.append(url)
    senders: list[Send] = []
    clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = []
    for url in urls:
        if style == "openai":
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
            senders.append(_openai_sender(client))
        else:
            client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
            senders.append(_anthropic_sender(client))
        clients.append(client)
    turn = iter(range(10**6))

    async def either(content: str) -> Result:  # the load balancer: replicas in turn
        return await senders[next(turn) % 2](content)

    try:
        results = await _at_rate(
            either, 2 * per_window / window_s, windows * window_s, max_in_flight=8
        )
    finally:
        for client in clients:
            await client.close()
    errors = [r for r in results if not isinstance(r, Result) or r.status != 200]
    assert not errors, errors[:3]
    assert a.stats.over_budget == 0 and b.stats.over_budget == 0
    by_a = sum(1 for r in results if isinstance(r, Result) and r.deployment == "a/model-a")
    print(f"preferred deployment served {by_a} of {per_window * windows} budgeted requests")
    assert by_a >= 0.5 * per_window * windows
