"""The benchmark's lean upstream and load generator answer and count correctly (no timings here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from bench.loadgen import Request, run_load
from bench.upstream import STREAM_CHUNKS, Upstream, UpstreamProtocol, serve


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


class _Recorder:
    """A transport that records what the upstream writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


def _post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def _paced(writes: list[bytes], count: int) -> None:
    for _ in range(500):  # 5 s at most
        if len(writes) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(writes)} of {count} writes")


async def test_paced_stream_is_one_write_per_event_and_holds_the_next_request() -> None:
    proto = UpstreamProtocol(Upstream(stream_gap_s=0.001))
    transport = _Recorder()
    proto.connection_made(transport)  # type: ignore[arg-type]
    # A pipelined JSON request arrives with the stream's: it is answered after the stream.
    proto.data_received(
        _post("/paced/v1/chat/completions", STREAM) + _post("/ok/v1/chat/completions", CHAT)
    )
    assert len(transport.writes) == 1
    await _paced(transport.writes, STREAM_CHUNKS + 2)
    *stream, answer = transport.writes
    assert len(stream) == STREAM_CHUNKS + 1  # 20 events and [DONE]
    assert stream[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert all(w.count(b"\n\n") == 1 for w in stream)  # one SSE event per write
    assert stream[-1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"choices"' in answer


async def test_paced_stream_stops_when_the_connection_is_lost() -> None:
    proto = UpstreamProtocol(Upstream(stream_gap_s=0.001))
    transport = _Recorder()
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.data_received(_post("/paced/v1/chat/completions", STREAM))
    proto.connection_lost(None)
    await asyncio.sleep(0.05)
    assert len(transport.writes) == 1


async def test_loadgen_counts_stream_events(upstream: int) -> None:
    for prefix in ("paced", "ok"):
        req = Request(
            "127.0.0.1",
            upstream,
            f"/{prefix}/v1/chat/completions",
            STREAM,
            expect=b"[DONE]",
            stream=True,
        )
        result = await asyncio.wait_for(
            run_load(req, concurrency=2, requests=6, max_seconds=20), timeout=30
        )
        assert (result.requests, result.errors) == (6, 0)
        assert result.events == 6 * (STREAM_CHUNKS + 1)
        assert len(result.event_gaps_s) == 6 * STREAM_CHUNKS  # the first event is the TTFB
        assert result.coalesced == result.event_gaps_s.count(0.0)


async def test_responses_answers_are_what_the_sdk_accepts(upstream: int) -> None:
    import openai

    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{upstream}/ok/v1", api_key="k", max_retries=0
    ) as client:
        resp = await client.responses.create(model="m", input="hi")
        assert resp.output_text and resp.usage is not None
        async with client.responses.stream(model="m", input="hi") as stream:
            deltas = [e async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    assert len(deltas) == STREAM_CHUNKS
    assert final.output_text == "".join(d.delta for d in deltas)
