"""OpenAI-SDK clients served by non-OpenAI vendors: Anthropic natively translated, Gemini via
litellm. JSON, streams, tool-call round trips, cached-token usage, and failover on each
vendor's own error shapes."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from proxy.fakes import Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config

MESSAGES = [{"role": "user", "content": "hello there"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash", "openai": "gpt-4o"}


async def _single(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str, **kw: Any
) -> tuple[Any, RunningProxy]:
    fake = await fakes("v", vendor=vendor, **kw)
    models = f"  smart:\n    deployments:\n      - {{vendor: v, model: {MODELS[vendor]}}}\n"
    return fake, await proxies(build_config({"v": fake}, models))


async def _pair(
    fakes: FakeFactory, proxies: ProxyFactory, first: str, second: str
) -> tuple[Any, Any, RunningProxy]:
    a = await fakes("a", vendor=first)
    b = await fakes("b", vendor=second)
    models = (
        "  smart:\n    deployments:\n"
        f"      - {{vendor: a, model: {MODELS[first]}}}\n"
        f"      - {{vendor: b, model: {MODELS[second]}}}\n"
    )
    return a, b, await proxies(build_config({"a": a, "b": b}, models))


@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_json_answer_and_cached_usage(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> None:
    fake, proxy = await _single(fakes, proxies, vendor, cached_tokens=7)
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    resp = raw.parse()
    assert raw.headers["x-proxy-deployment"] == f"v/{MODELS[vendor]}"
    assert resp.choices[0].message.content == "".join(fake.pieces)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == len(fake.pieces)
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 7
    assert resp.usage.prompt_tokens >= 7
    metrics = await proxy.metrics_text()
    dep = f"v/{MODELS[vendor]}"
    assert f'llmproxy_tokens_total{{deployment="{dep}",kind="cached_prompt"}} 7.0' in metrics
    assert (
        f'llmproxy_tokens_total{{deployment="{dep}",kind="completion"}} {float(len(fake.pieces))}'
        in metrics
    )


@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_stream_answer_and_usage_chunk(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> None:
    fake, proxy = await _single(fakes, proxies, vendor, cached_tokens=5)
    stream = await proxy.client().chat.completions.create(
        model="smart", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "".join(fake.pieces)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == len(fake.pieces)
    assert (
        usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 5
    )
    metrics = await proxy.metrics_text()
    assert (
        f'llmproxy_tokens_total{{deployment="v/{MODELS[vendor]}",kind="cached_prompt"}} 5.0'
        in metrics
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_tool_call_round_trip(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str, stream: bool
) -> None:
    fake, proxy = await _single(fakes, proxies, vendor)
    client = proxy.client()
    if stream:
        chunks = await client.chat.completions.create(
            model="smart", messages=MESSAGES, tools=TOOLS, stream=True
        )
        call_id, name, args, finish = "", "", "", None
        async for chunk in chunks:
            if not chunk.choices:
                continue
            for tc in chunk.choices[0].delta.tool_calls or ():
                call_id = tc.id or call_id
                if tc.function is not None:
                    name = tc.function.name or name
                    args += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
    else:
        resp = await client.chat.completions.create(model="smart", messages=MESSAGES, tools=TOOLS)
        calls = resp.choices[0].message.tool_calls
        assert calls is not None and len(calls) == 1
        call_id, name, args = calls[0].id, calls[0].function.name, calls[0].function.arguments
        finish = resp.choices[0].finish_reason
    assert finish == "tool_calls"
    assert name == "get_weather"
    assert call_id
    import json

    assert json.loads(args) == {"city": "test"}
    followup = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"},
    ]
    answer = await client.chat.completions.create(model="smart", messages=followup, tools=TOOLS)
    assert answer.choices[0].message.content == "".join(fake.pieces)
    sent = fake.stats.last_requests[-1].body
    if vendor == "anthropic":
        assert sent["messages"][-1]["content"][0] == {
            "type": "tool_result",
            "tool_use_id": call_id,
            "content": "sunny, 21 C",
        }
        assert sent["messages"][-2]["content"][-1]["type"] == "tool_use"
    else:
        parts = [p for c in sent["contents"] for p in c["parts"]]
        assert any("functionResponse" in p or "function_response" in p for p in parts), sent
        assert any("functionCall" in p or "function_call" in p for p in parts), sent


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_anthropic_529_fails_over_to_openai(
    fakes: FakeFactory, proxies: ProxyFactory, stream: bool
) -> None:
    a, b, proxy = await _pair(fakes, proxies, "anthropic", "openai")
    a.set_fault(Fault.preset("overloaded"))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, stream=stream
    )
    assert raw.headers["x-proxy-attempts"] == ("a/claude-sonnet-4-5=overloaded, b/gpt-4o=success")
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        text = raw.parse().choices[0].message.content or ""
    assert text.startswith("Hello from b")


@pytest.mark.parametrize(
    ("preset", "outcome"),
    [
        ("insufficient_quota", "quota_exhausted"),  # the 400 "credit balance is too low"
        ("rate_limited", "rate_limited"),
        ("server_error", "server_error"),
        ("auth_error", "auth_error"),
        ("model_not_found", "model_unavailable"),
    ],
)
async def test_anthropic_error_classes(
    fakes: FakeFactory, proxies: ProxyFactory, preset: str, outcome: str
) -> None:
    a, b, proxy = await _pair(fakes, proxies, "anthropic", "openai")
    a.set_fault(Fault.preset(preset))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    assert raw.headers["x-proxy-attempts"] == f"a/claude-sonnet-4-5={outcome}, b/gpt-4o=success"


async def test_anthropic_error_event_before_content_fails_over(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await _pair(fakes, proxies, "anthropic", "openai")
    # After message_start, content_block_start and ping: nothing the client could use yet.
    a.set_fault(Fault(error_event_after_chunks=3))  # the fake sends overloaded_error
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert raw.headers["x-proxy-attempts"] == "a/claude-sonnet-4-5=overloaded, b/gpt-4o=success"
    assert text.startswith("Hello from b")
    assert a.stats.faults["error_event"] == 1


async def test_anthropic_error_event_after_content_aborts_the_stream(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await _pair(fakes, proxies, "anthropic", "openai")
    a.chunk_delay_s = 0.05  # the error event arrives after the committed content, not with it
    a.set_fault(Fault(error_event_after_chunks=5))
    stream = await proxy.client().chat.completions.create(
        model="smart", messages=MESSAGES, stream=True
    )
    text = ""
    with pytest.raises(openai.APIError, match="overloaded"):
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text.startswith("Hello from a")
    assert b.stats.total_requests == 0
    metrics = await proxy.metrics_text()
    assert (
        'llmproxy_stream_aborts_total{deployment="a/claude-sonnet-4-5",model_group="smart",outcome_class="overloaded"} 1.0'
        in metrics
    )


async def test_gemini_resource_exhausted_is_rate_limited_with_its_retry_delay(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await _pair(fakes, proxies, "gemini", "openai")
    a.set_fault(Fault.preset("rate_limited", retry_after_s=42))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    assert raw.headers["x-proxy-attempts"] == "a/gemini-2.5-flash=rate_limited, b/gpt-4o=success"
    left = proxy.gateway.deployments["a/gemini-2.5-flash"].cooldown_left(time.monotonic())
    assert 35 < left <= 42  # RetryInfo.retryDelay, not the default backoff
    # While it cools down, the next request goes straight to b.
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    assert raw.headers["x-proxy-attempts"] == "b/gpt-4o=success"
    assert a.stats.total_requests == 1


@pytest.mark.parametrize(
    ("preset", "outcome"),
    [
        ("insufficient_quota", "quota_exhausted"),  # RESOURCE_EXHAUSTED with a PerDay quotaId
        ("overloaded", "overloaded"),
        ("server_error", "server_error"),
        ("auth_error", "auth_error"),  # 400 API_KEY_INVALID
        ("model_not_found", "model_unavailable"),
        ("refuse", "unreachable"),
    ],
)
async def test_gemini_error_classes(
    fakes: FakeFactory, proxies: ProxyFactory, preset: str, outcome: str
) -> None:
    a, b, proxy = await _pair(fakes, proxies, "gemini", "openai")
    await a.apply_fault(Fault.preset(preset))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    assert raw.headers["x-proxy-attempts"] == f"a/gemini-2.5-flash={outcome}, b/gpt-4o=success"


async def test_gemini_error_chunk_before_content_fails_over(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await _pair(fakes, proxies, "gemini", "openai")
    a.set_fault(Fault(error_event_after_chunks=0))  # an UNAVAILABLE chunk
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert raw.headers["x-proxy-attempts"] == "a/gemini-2.5-flash=overloaded, b/gpt-4o=success"
    assert text.startswith("Hello from b")


async def test_gemini_stream_cut_after_content_aborts(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await _pair(fakes, proxies, "gemini", "openai")
    a.set_fault(Fault.preset("drop_midstream"))
    stream = await proxy.client().chat.completions.create(
        model="smart", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    assert b.stats.total_requests == 0
