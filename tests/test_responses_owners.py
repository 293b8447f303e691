"""Which deployment holds a stored response, remembered in process and shared by replicas
through Redis: a continuation or a `GET` reaching another replica still goes to the owner."""

from __future__ import annotations

import asyncio

import openai
import pytest

from proxy.state.memory import Memo, MemoryBackend
from proxy.state.redis import RedisBackend
from tests.conftest import FakeFactory, ProxyFactory, build_config
from tests.redis_server import RedisServer


async def test_memory_remembers_within_bounds_and_time() -> None:
    memo = Memo(limit=3)
    for i in range(5):
        memo.put(f"k{i}", f"v{i}", ttl_s=60)
    assert len(memo) == 3 and memo.get("k0") is None and memo.get("k4") == "v4"
    memo.put("short", "v", ttl_s=0.01)
    await asyncio.sleep(0.02)
    assert memo.get("short") is None
    backend = MemoryBackend("test")
    backend.remember("resp:1", "owner", 60)
    assert await backend.recall("resp:1") == "owner"
    assert await backend.recall("resp:2") is None


async def test_redis_shares_remembered_values(redis_server: RedisServer) -> None:
    one = RedisBackend(redis_server.url, "t", "one")
    two = RedisBackend(redis_server.url, "t", "two")
    await one.start()
    await two.start()
    try:
        one.remember("resp:1", "owner-1", 60)
        for _ in range(100):  # written by the background writer, bounded wait
            if await two.recall("resp:1") is not None:
                break
            await asyncio.sleep(0.02)
        assert await two.recall("resp:1") == "owner-1"
        redis_server.kill()
        assert await two.recall("resp:1") == "owner-1"  # now from its own memory
        assert await two.recall("resp:unknown") is None  # Redis is down: nothing, no error
        one.remember("resp:2", "owner-2", 60)  # kept, written when Redis is back
        redis_server.start()
        for _ in range(250):
            if await two.recall("resp:2") is not None:
                break
            await asyncio.sleep(0.02)
        assert await two.recall("resp:2") == "owner-2"
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_replicas_send_continuations_to_the_owner(
    fakes: FakeFactory, proxies: ProxyFactory, redis_server: RedisServer, stream: bool
) -> None:
    a, b = await fakes("a"), await fakes("b")
    models = (
        "  smart:\n    strategy: weighted\n    deployments:\n"
        "      - {vendor: a, model: gpt-4o}\n      - {vendor: b, model: gpt-4o}\n"
    )
    text = build_config(
        {"a": a, "b": b}, models, f"state: {{backend: redis, url: '{redis_server.url}'}}\n"
    )
    first, second = await proxies(text), await proxies(text)
    created = []
    for _ in range(4):
        raw = await first.client().responses.with_raw_response.create(
            model="smart", input="hi", stream=stream
        )
        if stream:
            body = (await raw.http_response.aread()).decode()
            rid = body.split('"id":"', 1)[1].split('"', 1)[0]
        else:
            rid = raw.parse().id
        created.append((rid, raw.headers["x-proxy-deployment"]))
    assert {owner for _, owner in created} == {"a/gpt-4o", "b/gpt-4o"}
    client = second.client()
    for rid, owner in created:
        for _ in range(100):  # the first replica writes owners in the background
            try:
                got = await client.responses.with_raw_response.retrieve(rid)
                break
            except openai.NotFoundError:
                await asyncio.sleep(0.02)
        assert got.headers["x-proxy-deployment"] == owner
        continued = await client.responses.with_raw_response.create(
            model="smart", input="more", previous_response_id=rid
        )
        assert continued.headers["x-proxy-deployment"] == owner
