"""least-latency, least-busy and cache-affinity: end to end through the proxy, and their rules."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import aiohttp
import openai
import pytest

from proxy.config import parse_config
from proxy.fakes import Fault
from proxy.gateway import Gateway
from proxy.routing.strategies import PREFIX_BYTES, affinity_key
from proxy.vendors.base import UpstreamCall
from tests.conftest import FakeFactory, ProxyFactory, build_config, two_deployments
from tests.test_health import FAST_CHECKS, wait_for

MESSAGES = [{"role": "user", "content": "hello"}]


async def served_by(client: openai.AsyncOpenAI, **kw: Any) -> str:
    """One request through the SDK (one client per test: one connection pool, as an app has)."""
    kw.setdefault("messages", MESSAGES)
    raw = await client.chat.completions.with_raw_response.create(model="smart", **kw)
    return raw.headers["x-proxy-deployment"]


# ----------------------------------------------------------------------------- least-latency


async def test_least_latency_moves_traffic_to_the_faster_deployment_and_back(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments("least-latency")))
    client = proxy.client()
    a.set_fault(Fault(latency_s=0.06))
    first = [await served_by(client) for _ in range(40)]
    # Each is measured once, then the faster takes everything but the exploration requests.
    assert first[:2] == ["a/model-a", "b/model-b"]
    assert first[2:].count("b/model-b") >= 36

    a.clear_fault()  # a recovers, b slows down: exploration notices within a bounded number
    b.set_fault(Fault(latency_s=0.06))
    second = [await served_by(client) for _ in range(50)]
    assert second[-10:].count("a/model-a") >= 9


# ----------------------------------------------------------------------------- least-busy


async def test_least_busy_spreads_concurrent_requests_by_in_flight_count(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    models = (
        "  smart:\n    strategy: least-busy\n    deployments:\n"
        "      - {vendor: a, model: model-a, weight: 3}\n"
        "      - {vendor: b, model: model-b}\n"
    )
    proxy = await proxies(build_config({"a": a, "b": b}, models))
    client = proxy.client()
    for fake in (a, b):
        fake.set_fault(Fault(latency_s=0.3))  # every request stays in flight for a while
    got = await asyncio.gather(*(served_by(client) for _ in range(8)))
    assert collections.Counter(got) == {"a/model-a": 6, "b/model-b": 2}  # in-flight / weight


# ----------------------------------------------------------------------------- cache-affinity


def _call(parsed: dict[str, Any], session: str | None = None) -> UpstreamCall:
    return UpstreamCall("chat/completions", b"", parsed, False, "rid", session_id=session)


def test_affinity_key_prefers_session_then_user_then_the_stable_prefix() -> None:
    system = {"role": "system", "content": "You are terse."}
    turn1 = {"messages": [system, {"role": "user", "content": "Plan a trip"}]}
    turn2 = {
        "messages": [
            *turn1["messages"],
            {"role": "assistant", "content": "Where to?"},
            {"role": "user", "content": "Rome"},
        ]
    }
    assert affinity_key(_call(turn1)) == affinity_key(_call(turn2))  # a conversation stays put
    other = {"messages": [system, {"role": "user", "content": "Write a poem"}]}
    assert affinity_key(_call(other)) != affinity_key(_call(turn1))
    assert affinity_key(_call({**turn1, "user": "u-1"})) == b"u:u-1"
    assert affinity_key(_call({**turn1, "user": "u-1"}, session="s-9")) == b"s:s-9"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Plan a trip"}]}]}
    assert affinity_key(_call(parts)).startswith(b"p:")
    assert affinity_key(_call({"prompt": "abc"})) != affinity_key(_call({"prompt": "abd"}))


def test_affinity_key_hashes_a_bounded_prefix() -> None:
    huge = "x" * 1_000_000
    one = {
        "messages": [{"role": "system", "content": huge + "a"}, {"role": "user", "content": "q"}]
    }
    two = {
        "messages": [{"role": "system", "content": huge + "b"}, {"role": "user", "content": "q"}]
    }
    key = affinity_key(_call(one))
    assert len(key) <= PREFIX_BYTES + 2
    assert key == affinity_key(_call(two))


def _affinity_gateway(n: int, weights: list[float] | None = None) -> Gateway:
    deps = "".join(
        f"      - {{vendor: v, model: m{i}, weight: {(weights or [1] * n)[i]}}}\n" for i in range(n)
    )
    config = parse_config(
        "vendors: {v: {type: openai, base_url: 'http://127.0.0.1:1/v1'}}\n"
        "models:\n  g:\n    strategy: cache-affinity\n    affinity_hold_s: 0\n"
        f"    deployments:\n{deps}",
        env={},
    )
    return Gateway(config)


def test_rendezvous_moves_only_the_lost_deployments_share() -> None:
    gw = _affinity_gateway(3)
    group = gw.groups["g"]
    calls = [_call({}, session=f"s{i}") for i in range(3000)]
    before = [gw.router.plan(group, c, 0.0)[0][0].id for c in calls]
    shares = collections.Counter(before)
    assert all(800 < shares[d] < 1200 for d in gw.deployments)  # an even spread
    gw.deployments["v/m1"].healthy = False
    after = [gw.router.plan(group, c, 1.0)[0][0].id for c in calls]
    for was, now in zip(before, after, strict=True):
        assert now == was if was != "v/m1" else now != "v/m1"


def test_weighted_rendezvous_follows_weights() -> None:
    gw = _affinity_gateway(2, [3, 1])
    group = gw.groups["g"]
    got = collections.Counter(
        gw.router.plan(group, _call({}, session=f"s{i}"), 0.0)[0][0].id for i in range(4000)
    )
    assert 2800 < got["v/m0"] < 3200


async def test_cache_affinity_sessions_stick_and_only_the_dead_deployments_move(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    fs = {n: await fakes(n) for n in "abc"}
    hold_s = 1.5
    models = (
        f"  smart:\n    strategy: cache-affinity\n    affinity_hold_s: {hold_s}\n"
        "    deployments:\n" + "".join(f"      - {{vendor: {n}, model: m}}\n" for n in "abc")
    )
    proxy = await proxies(build_config(fs, models, FAST_CHECKS))
    sessions = [f"session-{i}" for i in range(100)]
    async with aiohttp.ClientSession() as http:

        async def ask(session: str) -> str:
            body = {"model": "smart", "messages": MESSAGES}
            async with http.post(
                f"{proxy.url}/v1/chat/completions", json=body, headers={"x-session-id": session}
            ) as r:
                assert r.status == 200
                await r.read()
                return r.headers["x-proxy-deployment"]

        async def round_of_requests() -> dict[str, str]:
            return {s: await ask(s) for s in sessions}

        home = await round_of_requests()
        for _ in range(4):  # 100 sessions x 5 requests: each session stays on one deployment
            assert await round_of_requests() == home
        assert set(home.values()) == {"a/m", "b/m", "c/m"}

        dep_c = proxy.gateway.deployments["c/m"]
        await fs["c"].apply_fault(Fault.preset("refuse"))
        await wait_for(lambda: not dep_c.healthy)
        moved = await round_of_requests()
        for s in sessions:
            if home[s] == "c/m":
                assert moved[s] != "c/m"
            else:
                assert moved[s] == home[s]  # only c's sessions moved
        assert await round_of_requests() == moved  # and the moved ones stick to their new home

        await fs["c"].unrefuse()
        await wait_for(lambda: dep_c.healthy)
        back_at = time.monotonic()
        held = await round_of_requests()
        if time.monotonic() - back_at < hold_s:  # (a very slow machine cannot check the hold)
            assert held == moved  # c is healthy but has not been for the hold time yet
        await asyncio.sleep(max(0.0, back_at + hold_s + 0.1 - time.monotonic()))
        assert await round_of_requests() == home  # then its sessions return


@pytest.mark.parametrize("strategy", ["least-latency", "least-busy", "cache-affinity"])
async def test_new_strategies_still_fail_over(
    fakes: FakeFactory, proxies: ProxyFactory, strategy: str
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments(strategy)))
    client = proxy.client()
    for broken, healthy in ((a, "b/model-b"), (b, "a/model-a")):
        a.clear_fault()
        b.clear_fault()
        broken.set_fault(Fault.preset("server_error"))
        for i in range(4):
            assert (
                await served_by(client, messages=[{"role": "user", "content": str(i)}]) == healthy
            )


def test_strategy_settings_are_checked() -> None:
    from proxy.config import ConfigError

    base = (
        "vendors: {v: {type: openai, base_url: 'http://127.0.0.1:1/v1'}}\n"
        "models:\n  g:\n    strategy: priority\n    affinity_hold_s: 5\n"
        "    deployments: [{vendor: v, model: m}]\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(base, file="r.yaml", env={})
    assert "r.yaml:5: models.g.affinity_hold_s: only applies to `strategy: cache-affinity`" in str(
        info.value
    )
