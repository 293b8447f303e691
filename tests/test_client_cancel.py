"""A client that goes away cancels its upstream request: the vendor stops generating (and billing)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from proxy.fakes import FakeOpenAI, Fault
from tests.conftest import RunningProxy

Pair = tuple[FakeOpenAI, FakeOpenAI, RunningProxy]
BODY = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}


async def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_client_gone_during_a_json_request_cancels_the_upstream(pair: Pair) -> None:
    a, b, proxy = pair
    a.set_fault(Fault(latency_s=3))
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(f"{proxy.url}/v1/chat/completions", json=BODY))
        await _wait_for(lambda: a.stats.in_flight == 1)
        task.cancel()
    await _wait_for(lambda: a.stats.disconnects == 1)
    await _wait_for(lambda: proxy.gateway.router.active == 0)
    assert b.stats.total_requests == 0  # a cancelled request is not failed over
    assert (
        proxy.gateway.deployments["a/model-a"].breaker.fail_counter == 0
    )  # and not the vendor's fault
    assert proxy.gateway.deployments["a/model-a"].in_flight == 0


async def test_client_gone_mid_stream_cancels_the_upstream(pair: Pair) -> None:
    a, _, proxy = pair
    a.chunks = 50
    a.chunk_delay_s = 0.05
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            f"{proxy.url}/v1/chat/completions",
            data=orjson.dumps({**BODY, "stream": True}),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 200
        await resp.content.readline()
        resp.close()  # hang up after the first event
    await _wait_for(lambda: a.stats.disconnects == 1)
    await _wait_for(lambda: proxy.gateway.router.active == 0)
    dep = proxy.gateway.deployments["a/model-a"]
    assert dep.in_flight == 0 and dep.breaker.fail_counter == 0
    text = await proxy.metrics_text()
    # A client hanging up is not a vendor's stream failure (the series exist, at 0).
    assert not [
        line
        for line in text.splitlines()
        if line.startswith("llmproxy_stream_aborts_total") and not line.endswith(" 0.0")
    ]
    assert (
        'llmproxy_upstream_attempts_total{deployment="a/model-a",outcome_class="client_cancelled"} 1.0'
        in text
    )
