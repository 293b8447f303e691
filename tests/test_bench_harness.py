"""The benchmark's lean upstream and load generator answer and count correctly (no timings here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from bench.loadgen import Request, run_load
from bench.upstream import STREAM_CHUNKS, serve


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    server = await serve("127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    yield port
    server.close()
    await server.wait_closed()


CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps({"model": "m", "messages": [], "stream": True})


async def test_openai_json_stream_and_errors(upstream: int) -> None:
    base = f"http://127.0.0.1:{upstream}"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/ok/v1/chat/completions", data=CHAT) as r:
            assert r.status == 200
            doc = await r.json()
            assert doc["choices"][0]["message"]["content"]
            assert doc["usage"]["total_tokens"] == 23
        async with s.post(f"{base}/ok/v1/chat/completions", data=STREAM) as r:
            assert r.headers["content-type"] == "text/event-stream"
            events = [ln for ln in (await r.read()).split(b"\n") if ln.startswith(b"data: ")]
            assert len(events) == STREAM_CHUNKS + 1
            assert events[-1] == b"data: [DONE]"
            assert orjson.loads(events[-2][6:])["choices"][0]["finish_reason"] == "stop"
        async with s.post(f"{base}/quota-x/v1/chat/completions", data=CHAT) as r:
            assert r.status == 429
            assert (await r.json())["error"]["code"] == "insufficient_quota"
        statuses = []
        for _ in range(40):
            async with s.post(f"{base}/flaky-x/v1/chat/completions", data=CHAT) as r:
                statuses.append(r.status)
        assert set(statuses) == {200, 500}
        async with s.get(f"{base}/_stats") as r:
            assert await r.json() == {"ok": 2, "quota-x": 1, "flaky-x": 40}


async def test_anthropic_messages(upstream: int) -> None:
    base = f"http://127.0.0.1:{upstream}/ok-anth/v1/messages"
    async with aiohttp.ClientSession() as s:
        async with s.post(base, data=CHAT) as r:
            assert (await r.json())["content"][0]["type"] == "text"
        async with s.post(base, data=STREAM) as r:
            body = await r.read()
            assert body.count(b"event: content_block_delta") == STREAM_CHUNKS
            assert body.rstrip().endswith(b'data: {"type":"message_stop"}')


async def test_loadgen_counts_successes_and_errors(upstream: int) -> None:
    ok = Request("127.0.0.1", upstream, "/ok/v1/chat/completions", STREAM, expect=b"[DONE]")
    result = await asyncio.wait_for(
        run_load(ok, concurrency=4, requests=40, max_seconds=20), timeout=30
    )
    assert (result.requests, result.errors, len(result.latencies_s)) == (40, 0, 40)
    assert all(t <= total for t, total in zip(result.ttfb_s, result.latencies_s, strict=True))

    bad = Request("127.0.0.1", upstream, "/quota/v1/chat/completions", CHAT, expect=b'"choices"')
    result = await run_load(bad, concurrency=2, requests=10, max_seconds=20)
    assert (result.requests, result.errors, result.statuses[429]) == (10, 10, 10)
