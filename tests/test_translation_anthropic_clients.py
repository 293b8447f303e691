"""The official anthropic SDK (as Claude Code uses it) served by OpenAI-shaped deployments:
structured output, parallel tool use, thinking, and the fields the translation refuses or
drops (and says so), including a Gemini deployment reached through litellm."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from pydantic import BaseModel, Field

from tests.conftest import FakeFactory, ProxyFactory
from tests.translation_helpers import group_of, sent

MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather and time in Paris?"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME: Any = {
    "name": "get_time",
    "input_schema": {
        "type": "object",
        "properties": {"zone": {"type": "string"}},
        "required": ["zone"],
    },
}


class Contact(BaseModel):
    name: str
    email: str
    seats: int = Field(ge=1)
    note: str | None = None  # optional: not `required`, so OpenAI's strict mode cannot take it


class Verdict(BaseModel):
    label: str
    score: int


# --------------------------------------------------------------------------- structured output


@pytest.mark.parametrize(("model", "strict"), [(Verdict, True), (Contact, False)])
async def test_messages_parse_through_openai(
    fakes: FakeFactory, proxies: ProxyFactory, model: type[BaseModel], strict: bool
) -> None:
    (gpt,), proxy = await group_of(fakes, proxies, ("openai", "gpt-4o"))
    parsed = (
        await proxy.anthropic_client().messages.parse(
            model="smart", max_tokens=500, messages=MESSAGES, output_format=model
        )
    ).parsed_output
    assert isinstance(parsed, model)
    fmt = sent(gpt)["response_format"]
    assert fmt["type"] == "json_schema"
    # Strict where OpenAI's strict mode takes the schema (every property required), else not.
    assert fmt["json_schema"]["strict"] is strict
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False


async def test_streamed_structured_output_through_openai(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    _, proxy = await group_of(fakes, proxies, ("openai", "gpt-4o"))
    async with proxy.anthropic_client().messages.stream(
        model="smart", max_tokens=500, messages=MESSAGES, output_format=Verdict
    ) as stream:
        final = await stream.get_final_message()
    assert isinstance(final.parsed_output, Verdict)


# --------------------------------------------------------------------------- parallel tool use


async def test_parallel_tool_use_json_and_results_back(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (gpt,), proxy = await group_of(fakes, proxies, ("openai", "gpt-4o"))
    client = proxy.anthropic_client()
    first = await client.messages.create(
        model="smart", max_tokens=500, messages=MESSAGES, tools=[WEATHER, TIME]
    )
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"]
    assert first.stop_reason == "tool_use"
    assert isinstance(uses[0].input["city"], str)  # type: ignore[index]
    results: Any = [
        {"type": "tool_result", "tool_use_id": u.id, "content": f"result {i}"}
        for i, u in enumerate(uses)
    ]
    second = await client.messages.create(
        model="smart",
        max_tokens=500,
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": results},
        ],
        tools=[WEATHER, TIME],
    )
    assert second.content[0].type == "text"
    request = sent(gpt)["messages"]
    assert [c["function"]["name"] for c in request[1]["tool_calls"]] == ["get_weather", "get_time"]
    assert [m["tool_call_id"] for m in request[2:4]] == [u.id for u in uses]


async def test_parallel_tool_use_streamed(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    _, proxy = await group_of(fakes, proxies, ("openai", "gpt-4o"))
    async with proxy.anthropic_client().messages.stream(
        model="smart", max_tokens=500, messages=MESSAGES, tools=[WEATHER, TIME]
    ) as stream:
        final = await stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"]
    assert all(isinstance(u.input, dict) and u.input for u in uses)
    assert final.stop_reason == "tool_use"


async def test_disable_parallel_tool_use_is_carried(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (gpt,), proxy = await group_of(fakes, proxies, ("openai", "gpt-4o"))
    msg = await proxy.anthropic_client().messages.create(
        model="smart",
        max_tokens=500,
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert len([b for b in msg.content if b.type == "tool_use"]) == 1
    assert sent(gpt)["parallel_tool_calls"] is False


# --------------------------------------------------------------------------- thinking


async def test_thinking_becomes_reasoning_effort_on_a_reasoning_model(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (gpt,), proxy = await group_of(fakes, proxies, ("openai", "gpt-5"))
    raw = await proxy.anthropic_client().messages.with_raw_response.create(
        model="smart",
        max_tokens=20000,
        messages=MESSAGES,
        thinking={"type": "enabled", "budget_tokens": 10000},
        extra_body={"temperature": 0.5},  # this SDK version has no temperature argument
    )
    assert (await raw.parse()).content[0].type == "text"
    request = sent(gpt)
    assert request["reasoning_effort"] == "medium"
    # OpenAI's reasoning models refuse any temperature but 1: dropped, and said so.
    assert "temperature" not in request
    assert raw.headers["x-proxy-dropped-params"] == "temperature"


async def test_thinking_on_a_model_that_does_not_reason_is_dropped_visibly(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (gpt,), proxy = await group_of(fakes, proxies, ("openai", "gpt-4o"))
    raw = await proxy.anthropic_client().messages.with_raw_response.create(
        model="smart",
        max_tokens=2000,
        messages=MESSAGES,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    await raw.parse()
    assert raw.headers["x-proxy-dropped-params"] == "thinking"
    assert "reasoning_effort" not in sent(gpt)


# --------------------------------------------------------------------------- refused and mapped


async def test_top_k_is_refused_by_openai_and_served_by_anthropic(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (gpt, claude), proxy = await group_of(
        fakes, proxies, ("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5")
    )
    raw = await proxy.anthropic_client().messages.with_raw_response.create(
        model="smart", max_tokens=100, messages=MESSAGES, extra_body={"top_k": 5}
    )
    await raw.parse()
    assert raw.headers["x-proxy-attempts"] == "v0/gpt-4o=unsupported, v1/claude-sonnet-4-5=success"
    assert gpt.stats.total_requests == 0
    assert sent(claude)["top_k"] == 5


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("top_k", {"extra_body": {"top_k": 5}}),
        ("tools", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        ("stop_sequences", {"stop_sequences": ["a", "b", "c", "d", "e"]}),
    ],
)
async def test_what_openai_cannot_honour_is_an_anthropic_400_naming_it(
    fakes: FakeFactory, proxies: ProxyFactory, field: str, kwargs: dict[str, Any]
) -> None:
    (gpt,), proxy = await group_of(fakes, proxies, ("openai", "gpt-4o"))
    with pytest.raises(anthropic.BadRequestError) as refused:
        await proxy.anthropic_client().messages.create(
            model="smart", max_tokens=100, messages=MESSAGES, **kwargs
        )
    body: Any = refused.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert f"'{field}'" in body["error"]["message"] and "'v0'" in body["error"]["message"]
    assert gpt.stats.total_requests == 0


async def test_service_tier_is_mapped(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    (gpt,), proxy = await group_of(fakes, proxies, ("openai", "gpt-4o"))
    raw = await proxy.anthropic_client().messages.with_raw_response.create(
        model="smart", max_tokens=100, messages=MESSAGES, service_tier="standard_only"
    )
    await raw.parse()
    assert "x-proxy-dropped-params" not in raw.headers
    assert sent(gpt)["service_tier"] == "default"


# --------------------------------------------------------------------------- litellm


async def test_litellm_vendor_refuses_or_drops_what_it_cannot_take(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    """Gemini (through litellm) takes `logprobs` but neither `top_logprobs` nor `logit_bias`."""
    (gemini,), proxy = await group_of(fakes, proxies, ("gemini", "gemini-2.5-flash"))
    client = proxy.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, logit_bias={"42": 5}, temperature=0.3
    )
    raw.parse()
    assert raw.headers["x-proxy-dropped-params"] == "logit_bias"
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="smart", messages=MESSAGES, logprobs=True, top_logprobs=3
        )
    assert refused.value.param == "top_logprobs"
    assert refused.value.response.headers["x-proxy-attempts"] == "v0/gemini-2.5-flash=unsupported"
    assert gemini.stats.total_requests == 1  # the first request only


async def test_what_litellm_itself_refuses_is_unsupported_not_a_client_error(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    """litellm takes `reasoning_effort` for Gemini, but not every value of it."""
    import openai

    (gemini,), proxy = await group_of(fakes, proxies, ("gemini", "gemini-2.5-flash"))
    with pytest.raises(openai.BadRequestError) as refused:
        await proxy.client().chat.completions.create(
            model="smart", messages=MESSAGES, reasoning_effort="xhigh"
        )
    assert refused.value.param == "reasoning_effort"
    assert refused.value.code == "unsupported_parameter"
    assert "'v0'" in refused.value.message
    assert gemini.stats.total_requests == 0
    assert proxy.gateway.deployments["v0/gemini-2.5-flash"].breaker.state.name == "CLOSED"
