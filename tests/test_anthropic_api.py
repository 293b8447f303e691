"""`/v1/messages` through the official anthropic SDK (as Claude Code uses it): served by an
Anthropic vendor (pass-through), an OpenAI vendor and a Gemini vendor (translated), with
failover, Anthropic-shaped errors, and count_tokens."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from proxy.fakes import Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config

MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash", "openai": "gpt-4o"}
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


async def _proxy(
    fakes: FakeFactory, proxies: ProxyFactory, *vendors: str, **kw: Any
) -> tuple[list[Any], RunningProxy]:
    started = [await fakes(f"v{i}", vendor=v, **kw) for i, v in enumerate(vendors)]
    models = "  smart:\n    deployments:\n" + "".join(
        f"      - {{vendor: v{i}, model: {MODELS[v]}}}\n" for i, v in enumerate(vendors)
    )
    return started, await proxies(build_config({f"v{i}": f for i, f in enumerate(started)}, models))


@pytest.mark.parametrize("vendor", ["anthropic", "openai", "gemini"])
async def test_json_message(fakes: FakeFactory, proxies: ProxyFactory, vendor: str) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, vendor, cached_tokens=6)
    raw = await proxy.anthropic_client().messages.with_raw_response.create(
        model="smart", max_tokens=100, messages=MESSAGES, system="be brief"
    )
    msg = await raw.parse()
    assert raw.headers["x-proxy-deployment"] == f"v0/{MODELS[vendor]}"
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "".join(fake.pieces)  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == len(fake.pieces)
    assert msg.usage.cache_read_input_tokens == 6
    metrics = await proxy.metrics_text()
    assert (
        f'llmproxy_tokens_total{{deployment="v0/{MODELS[vendor]}",kind="cached_prompt"}} 6.0'
        in metrics
    )


@pytest.mark.parametrize("vendor", ["anthropic", "openai", "gemini"])
async def test_stream_accumulates_the_final_message(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, vendor, cached_tokens=4)
    events: list[str] = []
    async with proxy.anthropic_client().messages.stream(
        model="smart", max_tokens=100, messages=MESSAGES
    ) as stream:
        async for event in stream:
            events.append(event.type)
        final = await stream.get_final_message()
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events
    assert final.content[0].text == "".join(fake.pieces)  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(fake.pieces)
    assert final.usage.cache_read_input_tokens == 4


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_tool_use_round_trip(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str, stream: bool
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, vendor)
    client = proxy.anthropic_client()
    if stream:
        async with client.messages.stream(
            model="smart", max_tokens=100, messages=MESSAGES, tools=TOOLS
        ) as s:
            msg = await s.get_final_message()
    else:
        msg = await client.messages.create(
            model="smart", max_tokens=100, messages=MESSAGES, tools=TOOLS
        )
    assert msg.stop_reason == "tool_use"
    tool_use = msg.content[-1]
    assert tool_use.type == "tool_use"
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "test"}
    followup = [
        *MESSAGES,
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}],
        },
    ]
    answer = await client.messages.create(
        model="smart", max_tokens=100, messages=followup, tools=TOOLS
    )
    assert answer.content[0].text == "".join(fake.pieces)  # type: ignore[union-attr]


async def test_anthropic_vendor_gets_the_client_bytes_and_beta_header(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, "anthropic")
    body = {
        "model": "smart",
        "max_tokens": 50,
        "messages": MESSAGES,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "brand_new_parameter": {"kept": True},
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/messages",
            data=orjson.dumps(body),
            headers={
                "content-type": "application/json",
                "x-api-key": "client-key",
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "interleaved-thinking-2025-05-14",
            },
        ) as resp,
    ):
        assert resp.status == 200
    sent = fake.stats.last_requests[-1]
    assert sent.body == {**body, "model": "claude-sonnet-4-5"}
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert sent.headers["x-api-key"] == "key-v0"  # the proxy's key, not the client's
    assert sent.headers["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_anthropic_529_fails_over_to_openai(
    fakes: FakeFactory, proxies: ProxyFactory, stream: bool
) -> None:
    (a, b), proxy = await _proxy(fakes, proxies, "anthropic", "openai")
    a.set_fault(Fault.preset("overloaded"))
    client = proxy.anthropic_client()
    if stream:
        async with client.messages.stream(model="smart", max_tokens=100, messages=MESSAGES) as s:
            msg = await s.get_final_message()
    else:
        msg = await client.messages.create(model="smart", max_tokens=100, messages=MESSAGES)
    assert msg.content[0].text.startswith("Hello from v1")  # type: ignore[union-attr]
    assert a.stats.total_requests == 1


async def test_error_event_before_content_fails_over(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (a, b), proxy = await _proxy(fakes, proxies, "anthropic", "openai")
    a.set_fault(Fault(error_event_after_chunks=1))  # right after message_start
    async with proxy.anthropic_client().messages.stream(
        model="smart", max_tokens=100, messages=MESSAGES
    ) as s:
        msg = await s.get_final_message()
    assert msg.content[0].text.startswith("Hello from v1")  # type: ignore[union-attr]
    assert a.stats.faults["error_event"] == 1


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
async def test_stream_broken_after_content_ends_with_an_error_event(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> None:
    (a, b), proxy = await _proxy(fakes, proxies, vendor, "openai")
    a.chunk_delay_s = 0.05
    a.set_fault(Fault.preset("drop_midstream", drop_after_chunks=5))
    with pytest.raises(anthropic.APIStatusError) as info:
        async with proxy.anthropic_client().messages.stream(
            model="smart", max_tokens=100, messages=MESSAGES
        ) as s:
            async for _ in s:
                pass
    assert "Upstream stream failed" in str(info.value)
    assert b.stats.total_requests == 0


async def test_all_failed_is_an_anthropic_error(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    (a, b), proxy = await _proxy(fakes, proxies, "anthropic", "openai")
    a.set_fault(Fault.preset("overloaded"))
    b.set_fault(Fault.preset("overloaded"))
    with pytest.raises(anthropic.APIStatusError) as info:
        await proxy.anthropic_client().messages.create(
            model="smart", max_tokens=100, messages=MESSAGES
        )
    err = info.value
    assert err.status_code == 503
    assert err.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "All upstream providers are overloaded"},
    }
    assert (
        err.response.headers["x-proxy-attempts"]
        == "v0/claude-sonnet-4-5=overloaded, v1/gpt-4o=overloaded"
    )


async def test_all_rate_limited_is_a_429_with_retry_after(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (a,), proxy = await _proxy(fakes, proxies, "anthropic")
    a.set_fault(Fault.preset("rate_limited", retry_after_s=7))
    with pytest.raises(anthropic.RateLimitError) as info:
        await proxy.anthropic_client().messages.create(
            model="smart", max_tokens=100, messages=MESSAGES
        )
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "smart", "messages": MESSAGES}, "max_tokens"),
        ({"model": "smart", "max_tokens": 10}, "messages"),
        ({"max_tokens": 10, "messages": MESSAGES}, "model"),
        ({"model": "smart", "max_tokens": "ten", "messages": MESSAGES}, "max_tokens"),
        ({"model": "smart", "max_tokens": 0, "messages": MESSAGES}, "max_tokens"),
        (
            {"model": "smart", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
            "system",
        ),
        ({"model": "smart", "max_tokens": 10, "messages": [{"role": "user"}]}, "content"),
        (
            {"model": "smart", "max_tokens": 10, "messages": [{"role": "user", "content": [1]}]},
            "content block",
        ),
        ([1, 2], "JSON object"),
    ],
)
async def test_bad_input_is_an_anthropic_400(
    fakes: FakeFactory, proxies: ProxyFactory, body: Any, message: str
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, "anthropic")
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/messages",
            data=orjson.dumps(body),
            headers={"content-type": "application/json"},
        ) as resp,
    ):
        doc = await resp.json()
        assert resp.status == 400
    assert doc["type"] == "error"
    assert doc["error"]["type"] == "invalid_request_error"
    assert message in doc["error"]["message"]
    assert fake.stats.total_requests == 0


async def test_invalid_json_and_unknown_model(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    _, proxy = await _proxy(fakes, proxies, "anthropic")
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/messages", data=b"{nope", headers={"content-type": "application/json"}
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as info:
        await proxy.anthropic_client().messages.create(
            model="nope", max_tokens=10, messages=MESSAGES
        )
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_count_tokens(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    (anth,), proxy = await _proxy(fakes, proxies, "anthropic")
    client = proxy.anthropic_client()
    counted = await client.messages.count_tokens(
        model="smart", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert counted.input_tokens == 100  # the vendor's own count
    assert anth.stats.requests["/v1/messages/count_tokens"] == 1
    (_,), other = await _proxy(fakes, proxies, "openai")
    estimated = await other.anthropic_client().messages.count_tokens(
        model="smart", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert 100 <= estimated.input_tokens <= 130  # best effort where the vendor cannot count
