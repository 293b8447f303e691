"""Tests of the fake vendors: real HTTP on 127.0.0.1, aiohttp client and the openai SDK.

The fakes are what every other test trusts to misbehave correctly, so these check the
wire shapes (the SDK parses them), each fault's observable effect and the lifecycle
(same port after refuse, nothing left running after stop). No timing assertions: slow
faults are checked by what the client sees with a short timeout, and every wait loop
is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy.fakes import PRESETS, FakeOpenAI, Fault

pytestmark = pytest.mark.timeout(30)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 40}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
SHORT = aiohttp.ClientTimeout(total=0.3)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(name="a", chunks=5) as f:
        yield f


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession, fake: FakeOpenAI, path: str, body: Any, **kw: Any
) -> tuple[int, Any]:
    async with session.post(fake.base_url + path, json=body, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def read_sse(resp: aiohttp.ClientResponse) -> list[bytes]:
    """The ``data:`` payloads of an SSE response, in order."""
    events = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            events.append(line[6:].rstrip(b"\n"))
    return events


async def wait_for(predicate: Any, what: str) -> None:
    """Bounded poll for state the server updates after the client saw its answer."""
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------- wire format


async def test_chat_json_shape_usage_and_recording(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    body = {**CHAT, "future_param": {"keep": True}}
    headers = {"Authorization": "Bearer sk-vendor", "X-Custom": "1"}
    status, data = await post(session, fake, "/chat/completions", body, headers=headers)
    assert status == 200
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-4o"
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello from a lorem ipsum dolor sit"
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert fake.stats.requests["/v1/chat/completions"] == 1
    assert fake.stats.tokens == {"prompt": 10, "completion": 5, "cached": 0}
    rec = fake.stats.last_requests[-1]
    path, rec_headers, rec_body, method = rec
    assert path == "/v1/chat/completions"
    assert method == "POST"
    assert rec_headers["authorization"] == "Bearer sk-vendor"
    assert rec_body == body


async def test_chat_ids_unique_and_max_tokens_truncates(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    _, first = await post(session, fake, "/chat/completions", CHAT)
    _, second = await post(session, fake, "/chat/completions", {**CHAT, "max_tokens": 2})
    assert first["id"] != second["id"]
    assert second["choices"][0]["message"]["content"] == "Hello from a lorem"
    assert second["choices"][0]["finish_reason"] == "length"
    assert second["usage"]["completion_tokens"] == 2


async def test_cached_tokens_reported_and_within_prompt(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(name="c", cached_tokens=64) as fake:
        _, data = await post(session, fake, "/chat/completions", CHAT)
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 64
    assert data["usage"]["prompt_tokens"] == 64  # raised: cached is part of prompt
    assert fake.stats.tokens["cached"] == 64


async def test_chat_stream_with_usage(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    async with session.post(fake.base_url + "/chat/completions", json=STREAM) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await read_sse(resp)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) == 5 + 2  # pieces, finish chunk, usage chunk
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == (
        "Hello from a lorem ipsum dolor sit"
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 15
    assert fake.stats.tokens["completion"] == 5


async def test_chat_stream_without_usage(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    body = {**CHAT, "stream": True}
    async with session.post(fake.base_url + "/chat/completions", json=body) as resp:
        events = await read_sse(resp)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) == 6
    assert all("usage" not in c for c in chunks)


async def test_legacy_completions(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "abcdefgh"}
    status, data = await post(session, fake, "/completions", body)
    assert status == 200
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"] == "Hello from a lorem ipsum dolor sit"
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with session.post(fake.base_url + "/completions", json=stream) as resp:
        events = await read_sse(resp)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == data["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 5


async def test_embeddings(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    body = {"model": "text-embedding-3-small", "input": ["hello", "world", "hello"]}
    status, data = await post(session, fake, "/embeddings", body)
    assert status == 200
    assert data["object"] == "list"
    assert [d["index"] for d in data["data"]] == [0, 1, 2]
    vectors = [d["embedding"] for d in data["data"]]
    assert all(len(v) == 8 and all(isinstance(x, float) for x in v) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    _, single = await post(
        session, fake, "/embeddings", {"model": "e", "input": "hello", "dimensions": 4}
    )
    assert len(single["data"]) == 1 and len(single["data"][0]["embedding"]) == 4
    _, b64 = await post(
        session, fake, "/embeddings", {"model": "e", "input": "hello", "encoding_format": "base64"}
    )
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(vectors[0], abs=1e-6)
    assert fake.stats.tokens == {"prompt": 5, "completion": 0, "cached": 0}


async def test_models_list_is_a_probe(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(name="m", models=["x-1", "x-2"]) as fake:
        async with session.get(fake.base_url + "/models") as resp:
            data = await resp.json()
        assert data["object"] == "list"
        assert [(m["id"], m["object"], m["owned_by"]) for m in data["data"]] == [
            ("x-1", "model", "m"),
            ("x-2", "model", "m"),
        ]
        assert fake.stats.model_list_requests == 1
        assert fake.stats.total_requests == 0
        assert fake.stats.tokens["prompt"] == 0
        assert not fake.stats.last_requests


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]"])
async def test_malformed_body_is_400(
    fake: FakeOpenAI, session: aiohttp.ClientSession, raw: bytes
) -> None:
    async with session.post(fake.base_url + "/chat/completions", data=raw) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
    assert err["type"] == "invalid_request_error"
    assert "could not parse the JSON body" in err["message"]


async def test_missing_model_is_400(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    status, data = await post(session, fake, "/chat/completions", {"messages": []})
    assert status == 400
    assert data["error"]["code"] == "missing_required_parameter"


async def test_api_key_required(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(name="k", api_key="sk-right") as fake:
        status, data = await post(session, fake, "/chat/completions", CHAT)
        assert status == 401 and "didn't provide an API key" in data["error"]["message"]
        wrong = {"Authorization": "Bearer sk-wrong-key-123"}
        status, data = await post(session, fake, "/chat/completions", CHAT, headers=wrong)
        assert status == 401 and data["error"]["code"] == "invalid_api_key"
        assert "sk-wrong" not in data["error"]["message"]  # masked, like OpenAI
        right = {"Authorization": "Bearer sk-right"}
        status, _ = await post(session, fake, "/chat/completions", CHAT, headers=right)
        assert status == 200
        assert fake.stats.tokens["completion"] == 5  # only the authorised one


# ---------------------------------------------------------------------------- error faults

ERROR_PRESETS = [
    ("insufficient_quota", 429, "insufficient_quota", "insufficient_quota"),
    ("rate_limited", 429, "requests", "rate_limit_exceeded"),
    ("request_too_large", 429, "tokens", "rate_limit_exceeded"),
    ("overloaded", 503, "server_error", None),
    ("server_error", 500, "server_error", None),
    ("bad_request", 400, "invalid_request_error", "invalid_value"),
    ("context_too_long", 400, "invalid_request_error", "context_length_exceeded"),
    ("auth_error", 401, "invalid_request_error", "invalid_api_key"),
    ("model_not_found", 404, "invalid_request_error", "model_not_found"),
]


@pytest.mark.parametrize(("preset", "status", "type_", "code"), ERROR_PRESETS)
async def test_error_presets(
    fake: FakeOpenAI,
    session: aiohttp.ClientSession,
    preset: str,
    status: int,
    type_: str,
    code: str | None,
) -> None:
    fake.set_fault(Fault.preset(preset))
    got, data = await post(session, fake, "/chat/completions", STREAM)
    assert got == status
    assert data["error"]["type"] == type_
    assert data["error"]["code"] == code
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert fake.stats.faults["error"] == 1
    assert fake.stats.tokens["completion"] == 0


async def test_error_messages_are_the_documented_ones(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.set_fault(Fault.preset("insufficient_quota"))
    _, data = await post(session, fake, "/chat/completions", CHAT)
    assert data["error"]["message"].startswith(
        "You exceeded your current quota, please check your plan and billing details"
    )
    fake.set_fault(Fault.preset("request_too_large"))
    _, data = await post(session, fake, "/chat/completions", CHAT)
    assert "Request too large for gpt-4o" in data["error"]["message"]
    assert "on tokens per min (TPM): Limit 30000, Requested 342389" in data["error"]["message"]
    fake.set_fault(Fault.preset("overloaded"))
    _, data = await post(session, fake, "/chat/completions", CHAT)
    assert data["error"]["message"].startswith("The engine is currently overloaded")


async def test_rate_limited_headers_with_custom_seconds(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.set_fault(Fault.preset("rate_limited", retry_after_s=5))
    async with session.post(fake.base_url + "/chat/completions", json=CHAT) as resp:
        assert resp.status == 429
        assert resp.headers["retry-after"] == "5"
        assert resp.headers["retry-after-ms"] == "5000"
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        assert resp.headers["x-ratelimit-reset-requests"] == "5s"
        assert "try again in 5s" in (await resp.json())["error"]["message"]


async def test_bad_gateway_is_html_and_bare_status_is_generic(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.set_fault(Fault.preset("bad_gateway"))
    async with session.post(fake.base_url + "/chat/completions", json=CHAT) as resp:
        assert resp.status == 502
        assert resp.content_type == "text/html"
        assert b"502 Bad Gateway" in await resp.read()
    fake.set_fault(Fault(status=418, message="teapot"))
    status, data = await post(session, fake, "/chat/completions", CHAT)
    assert status == 418 and data["error"]["message"] == "teapot"
    fake.set_fault(Fault(status=529, body={"custom": 1}, headers={"x-should-retry": "false"}))
    async with session.post(fake.base_url + "/chat/completions", json=CHAT) as resp:
        assert resp.status == 529
        assert resp.headers["x-should-retry"] == "false"
        assert await resp.json() == {"custom": 1}


async def test_fault_headers_on_healthy_answer(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.set_fault(Fault(headers={"x-ratelimit-remaining-tokens": "0"}))
    async with session.post(fake.base_url + "/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        assert resp.headers["x-ratelimit-remaining-tokens"] == "0"
    async with session.post(fake.base_url + "/chat/completions", json=STREAM) as resp:
        assert resp.headers["x-ratelimit-remaining-tokens"] == "0"
        assert (await read_sse(resp))[-1] == b"[DONE]"


async def test_rate_is_seeded_and_clear_fault(session: aiohttp.ClientSession) -> None:
    patterns = []
    for _ in range(2):
        async with FakeOpenAI(name="r", seed=7, fault=Fault.preset("server_error", rate=0.5)) as f:
            statuses = [(await post(session, f, "/chat/completions", CHAT))[0] for _ in range(20)]
            patterns.append(statuses)
            assert f.stats.faults["error"] == statuses.count(500)
            f.clear_fault()
            assert (await post(session, f, "/chat/completions", CHAT))[0] == 200
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {200, 500}


def test_preset_construction() -> None:
    assert set(PRESETS) >= {
        "insufficient_quota", "rate_limited", "request_too_large", "overloaded",
        "server_error", "bad_gateway", "bad_request", "context_too_long", "auth_error",
        "model_not_found", "stall", "stall_first_byte", "drop_midstream",
        "error_event_midstream", "refuse", "black_hole", "none",
    }  # fmt: skip
    with pytest.raises(ValueError, match="rate_limited"):
        Fault.preset("no_such_preset")
    with pytest.raises(ValueError, match="unknown Fault field"):
        Fault.preset("stall", stall_seconds=1)
    with pytest.raises(ValueError):
        Fault(rate=1.5)
    assert Fault.preset("rate_limited", retry_after_s=9).retry_after_s == 9
    assert Fault.from_dict({"preset": "none"}) is None
    parsed = Fault.from_dict({"preset": "drop_midstream", "drop_after_chunks": 1, "body": "x"})
    assert parsed == Fault(drop_after_chunks=1, body=b"x")


# ---------------------------------------------------------------------------- timing faults


async def test_latency_applies_to_healthy_requests(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.set_fault(Fault(latency_s=30, rate=0.0))  # never "faulted", still slow
    with pytest.raises(asyncio.TimeoutError):
        await post(session, fake, "/chat/completions", CHAT, timeout=SHORT)
    await wait_for(lambda: fake.stats.disconnects == 1, "disconnect")
    assert fake.stats.in_flight == 0
    assert fake.stats.faults["error"] == 0


async def test_stall_means_no_headers(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    fake.set_fault(Fault.preset("stall"))
    with pytest.raises(asyncio.TimeoutError):
        await post(session, fake, "/chat/completions", CHAT, timeout=SHORT)
    await wait_for(lambda: fake.stats.disconnects == 1, "disconnect")
    assert fake.stats.faults["stall"] == 1


@pytest.mark.parametrize("body", [STREAM, CHAT])
async def test_stall_first_byte_sends_headers_then_nothing(
    fake: FakeOpenAI, session: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    fake.set_fault(Fault.preset("stall_first_byte"))
    timeout = aiohttp.ClientTimeout(sock_read=0.3)
    async with session.post(fake.base_url + "/chat/completions", json=body, timeout=timeout) as r:
        assert r.status == 200  # headers arrived
        with pytest.raises(asyncio.TimeoutError):
            await r.read()
    await wait_for(lambda: fake.stats.disconnects == 1, "disconnect")


async def test_drop_midstream_is_a_payload_error(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.set_fault(Fault.preset("drop_midstream"))
    received: list[bytes] = []
    async with session.post(fake.base_url + "/chat/completions", json=STREAM) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in resp.content:
                if line.startswith(b"data: "):
                    received.append(line)
    assert len(received) == 2
    assert b"[DONE]" not in b"".join(received)
    assert fake.stats.faults["drop"] == 1
    assert fake.stats.tokens["completion"] == 0  # never completed
    assert fake.stats.disconnects == 0  # the fake cut it, not the client
    # The vendor is still up for the next request.
    fake.clear_fault()
    assert (await post(session, fake, "/chat/completions", CHAT))[0] == 200


async def test_stream_faults_ignore_json_requests(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.set_fault(Fault(drop_after_chunks=0, error_event_after_chunks=0))
    status, data = await post(session, fake, "/chat/completions", CHAT)
    assert status == 200 and data["choices"][0]["finish_reason"] == "stop"


async def test_error_event_midstream(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    fake.set_fault(Fault.preset("error_event_midstream"))
    async with session.post(fake.base_url + "/chat/completions", json=STREAM) as resp:
        events = await read_sse(resp)  # ends cleanly: no payload error
    assert len(events) == 3
    assert b"[DONE]" not in events
    error = orjson.loads(events[-1])["error"]
    assert error["type"] == "server_error"
    assert fake.stats.faults["error_event"] == 1
    assert fake.stats.tokens["completion"] == 0


async def test_client_disconnect_midstream_is_counted(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(name="d", chunks=50, chunk_delay_s=0.05) as fake:
        async with session.post(fake.base_url + "/chat/completions", json=STREAM) as resp:
            await resp.content.readline()
            resp.close()  # go away after the first event
        await wait_for(lambda: fake.stats.disconnects == 1, "disconnect")
        assert fake.stats.in_flight == 0
        assert fake.stats.tokens["completion"] == 0


async def test_black_hole_then_stop_leaves_nothing_running(session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI(name="bh", fault=Fault.preset("black_hole"))
    await fake.start()
    with pytest.raises(asyncio.TimeoutError):
        await post(session, fake, "/chat/completions", CHAT, timeout=SHORT)
    await wait_for(lambda: fake.stats.disconnects == 1, "disconnect")
    # A second black-holed request is still hanging when the fake stops.
    pending = asyncio.create_task(post(session, fake, "/chat/completions", CHAT))
    await wait_for(lambda: fake.stats.in_flight == 1, "in-flight request")
    await fake.stop()
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert fake.stats.in_flight == 0
    assert fake.stats.disconnects == 1  # stop() cutting it is not a client disconnect
    assert asyncio.all_tasks() == {asyncio.current_task()}


# ---------------------------------------------------------------------------- refuse


async def test_refuse_and_rebind_same_port(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    port = fake.port
    assert (await post(session, fake, "/chat/completions", CHAT))[0] == 200  # pooled conn
    await fake.apply_fault(Fault.preset("refuse"))
    assert not fake.listening
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await post(session, fake, "/chat/completions", CHAT)
    assert isinstance(info.value.os_error, ConnectionRefusedError)
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(fake.base_url + "/models")
    await fake.unrefuse()
    assert fake.listening and fake.port == port
    assert (await post(session, fake, "/chat/completions", CHAT))[0] == 200


async def test_refuse_via_control_endpoint_with_duration(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    body = {"preset": "refuse", "refuse_for_s": 0.2}
    async with session.post(fake.origin + "/_fake/fault", json=body) as resp:
        assert resp.status == 200
        assert (await resp.json())["fault"]["refuse"] is True
    assert not fake.listening
    await wait_for(lambda: fake.listening, "rebind after refuse_for_s")
    assert fake.fault is None
    assert (await post(session, fake, "/chat/completions", CHAT))[0] == 200


async def test_set_fault_refuse_is_scheduled(fake: FakeOpenAI) -> None:
    fake.set_fault(Fault.preset("refuse"))
    await wait_for(lambda: not fake.listening, "listener closed")
    fake.clear_fault()
    await wait_for(lambda: fake.listening, "listener rebound")


async def test_refuse_before_start(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(name="rb", fault=Fault.preset("refuse")) as fake:
        assert fake.port and not fake.listening
        await fake.unrefuse()
        assert (await post(session, fake, "/chat/completions", CHAT))[0] == 200


# ---------------------------------------------------------------------------- control


async def test_control_endpoints(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    root = fake.origin
    async with session.post(
        root + "/_fake/fault", json={"preset": "rate_limited", "retry_after_s": 3}
    ) as resp:
        assert resp.status == 200
    assert fake.fault == Fault.preset("rate_limited", retry_after_s=3)
    async with session.post(fake.base_url + "/chat/completions", json=CHAT) as resp:
        assert resp.status == 429 and resp.headers["retry-after"] == "3"
    async with session.get(root + "/_fake/stats") as resp:  # not faulted
        stats = await resp.json()
    assert stats["name"] == "a" and stats["vendor_type"] == "openai"
    assert stats["requests"] == {"/v1/chat/completions": 1}
    assert stats["fault"]["error"] == "rate_limited"
    assert stats["last_requests"][0]["body"] == CHAT
    async with session.post(root + "/_fake/fault", json={"preset": "bogus"}) as resp:
        assert resp.status == 400 and "rate_limited" in (await resp.json())["error"]
    async with session.post(root + "/_fake/fault", json={"status": 500, "rate": 1}) as resp:
        assert resp.status == 200
    assert fake.fault == Fault(status=500)
    async with session.post(root + "/_fake/fault", json={"preset": "none"}) as resp:
        assert resp.status == 200
    assert fake.fault is None
    fake.set_fault(Fault.preset("black_hole"))
    hanging = asyncio.create_task(post(session, fake, "/chat/completions", CHAT))
    await wait_for(lambda: fake.stats.in_flight == 1, "in-flight request")
    async with session.post(root + "/_fake/reset") as resp:
        assert resp.status == 200
    assert fake.stats.total_requests == 0 and not fake.stats.last_requests
    assert fake.stats.in_flight == 1  # live state survives a reset
    hanging.cancel()
    await wait_for(lambda: fake.stats.in_flight == 0, "in-flight back to 0")
    with pytest.raises(asyncio.CancelledError):
        await hanging


async def test_probe_faults(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    fake.set_fault(Fault.preset("overloaded"))
    async with session.get(fake.base_url + "/models") as resp:
        assert resp.status == 503
    for preset in ("drop_midstream", "error_event_midstream", "stall_first_byte"):
        fake.set_fault(Fault.preset(preset))
        async with session.get(fake.base_url + "/models", timeout=SHORT) as resp:
            assert resp.status == 200
            assert (await resp.json())["object"] == "list"
    fake.set_fault(Fault.preset("stall"))
    with pytest.raises(asyncio.TimeoutError):
        await session.get(fake.base_url + "/models", timeout=SHORT)
    assert fake.stats.model_list_requests == 5
    assert fake.stats.total_requests == 0


# ---------------------------------------------------------------------------- official SDK


async def test_openai_sdk_json_stream_and_errors(fake: FakeOpenAI) -> None:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
    try:
        messages: Any = [{"role": "user", "content": "hi there"}]
        done = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert done.choices[0].message.content == "Hello from a lorem ipsum dolor sit"
        assert done.usage is not None and done.usage.completion_tokens == 5
        assert done.usage.prompt_tokens_details is not None
        assert done.usage.prompt_tokens_details.cached_tokens == 0

        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(text) == "Hello from a lorem ipsum dolor sit"
        assert usage is not None and usage.total_tokens == usage.prompt_tokens + 5

        emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
        models = await client.models.list()
        assert "gpt-4o" in [m.id for m in models.data]

        fake.set_fault(Fault.preset("error_event_midstream"))
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass

        fake.set_fault(Fault.preset("insufficient_quota"))
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert info.value.code == "insufficient_quota"
    finally:
        await client.close()


# ---------------------------------------------------------------------------- CLI


async def test_cli_subprocess_is_steerable_and_stops_on_sigterm(
    session: aiohttp.ClientSession,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.fakes", "--port", "0", "--name", "sub",
        "--fault", "server_error", "--chunks", "3",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
        base_url = line.decode().rsplit(" ", 1)[-1].strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        async with session.post(base_url + "/chat/completions", json=CHAT) as resp:
            assert resp.status == 500
        origin = base_url.removesuffix("/v1")
        async with session.post(origin + "/_fake/fault", json={"preset": "none"}) as resp:
            assert resp.status == 200
        async with session.post(base_url + "/chat/completions", json=CHAT) as resp:
            data = await resp.json()
        assert data["choices"][0]["message"]["content"] == "Hello from sub lorem ipsum"
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
