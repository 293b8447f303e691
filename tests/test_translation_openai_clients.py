"""The official openai SDK served by an Anthropic deployment: structured output, parallel
tool calls, reasoning_effort, and every field the translation refuses or drops (and says so).

The fake Anthropic vendor honours `output_config.format`, several `tool_use` blocks and
`thinking`; each test also checks what reached it (`fake.stats.last_requests`), because the
translation must produce what the real API accepts, not only what passes through."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai
import orjson
import pytest
from pydantic import BaseModel, Field

from tests.conftest import FakeFactory, ProxyFactory
from tests.test_translated_vendors import TOOLS
from tests.translation_helpers import group_of, sent

MESSAGES: list[Any] = [{"role": "user", "content": "Solve 8x + 7 = -23"}]
WEATHER = TOOLS[0]
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}


class Step(BaseModel):
    explanation: str
    output: int = Field(ge=1, description="the value after this step")


class MathAnswer(BaseModel):
    steps: list[Step]
    final_answer: str


async def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    await asyncio.sleep(0.01)  # the line is written on the loop's next turn
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"]


# --------------------------------------------------------------------------- structured output


async def test_parse_with_a_pydantic_model_through_anthropic_structured_outputs(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    raw = await proxy.client().chat.completions.with_raw_response.parse(
        model="smart", messages=MESSAGES, response_format=MathAnswer
    )
    completion = raw.parse()
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, MathAnswer) and parsed.steps
    assert completion.choices[0].finish_reason == "stop"
    assert "x-proxy-dropped-params" not in raw.headers
    fmt = sent(claude)["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    step = fmt["schema"]["$defs"]["Step"]
    # What Anthropic cannot enforce moves into the description (as Anthropic's SDK does).
    assert "minimum" not in step["properties"]["output"]
    assert "minimum: 1" in step["properties"]["output"]["description"]
    assert step["additionalProperties"] is False
    assert "tools" not in sent(claude)


async def test_streamed_parse_through_anthropic(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    _, proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    async with proxy.client().chat.completions.stream(
        model="smart", messages=MESSAGES, response_format=MathAnswer
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, MathAnswer)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_json_mode_is_carried_by_a_forced_answer_tool(
    fakes: FakeFactory, proxies: ProxyFactory, stream: bool
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    client = proxy.client()
    fmt: Any = {"type": "json_object"}
    if stream:
        chunks = await client.chat.completions.create(
            model="smart", messages=MESSAGES, response_format=fmt, stream=True
        )
        text, finish = "", None
        async for chunk in chunks:
            assert not chunk.choices or not chunk.choices[0].delta.tool_calls
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    else:
        resp = await client.chat.completions.create(
            model="smart", messages=MESSAGES, response_format=fmt
        )
        text, finish = resp.choices[0].message.content or "", resp.choices[0].finish_reason
        assert resp.choices[0].message.tool_calls is None
    assert isinstance(orjson.loads(text), dict)
    assert finish == "stop"
    request = sent(claude)
    assert [t["name"] for t in request["tools"]] == ["json_answer"]
    assert request["tools"][0]["input_schema"] == {"type": "object"}
    assert request["tool_choice"] == {"type": "tool", "name": "json_answer"}


async def test_older_claude_gets_the_schema_as_a_forced_tool(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    """Structured outputs came with Claude 4.5: an older model would refuse output_config."""
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-3-5-haiku-20241022"))
    completion = await proxy.client().chat.completions.parse(
        model="smart", messages=MESSAGES, response_format=MathAnswer
    )
    assert isinstance(completion.choices[0].message.parsed, MathAnswer)
    request = sent(claude)
    assert "output_config" not in request
    assert request["tool_choice"] == {"type": "tool", "name": "json_answer"}


async def test_langchain_with_structured_output_through_anthropic(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    from langchain_openai import ChatOpenAI

    _, proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    llm = ChatOpenAI(
        model="smart",
        base_url=f"{proxy.url}/v1",
        api_key="client-key",
        max_retries=0,  # type: ignore[arg-type]
    )
    answer = await llm.with_structured_output(MathAnswer).ainvoke("Solve 8x + 7 = -23")
    assert isinstance(answer, MathAnswer) and answer.steps
    # The other method: a tool call forced by name.
    called = await llm.with_structured_output(MathAnswer, method="function_calling").ainvoke(
        "Solve 8x + 7 = -23"
    )
    assert isinstance(called, MathAnswer) and called.steps


# --------------------------------------------------------------------------- parallel tool calls


async def test_parallel_tool_calls_json_and_their_results_back(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    client = proxy.client()
    first = await client.chat.completions.create(
        model="smart",
        messages=MESSAGES,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
    )
    message = first.choices[0].message
    calls = message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert len({c.id for c in calls}) == 2
    assert isinstance(orjson.loads(calls[0].function.arguments)["city"], str)  # type: ignore[union-attr]
    results: list[Any] = [
        {"role": "tool", "tool_call_id": c.id, "content": f"result {i}"}
        for i, c in enumerate(calls)
    ]
    second = await client.chat.completions.create(
        model="smart",
        messages=[*MESSAGES, message.model_dump(exclude_none=True), *results],  # type: ignore[list-item]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
    )
    assert second.choices[0].message.content
    turns = sent(claude)["messages"]
    assert [b["type"] for b in turns[1]["content"]] == ["tool_use", "tool_use"]
    assert [b["tool_use_id"] for b in turns[2]["content"]] == [c.id for c in calls]


async def test_parallel_tool_calls_streamed(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    _, proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    async with proxy.client().chat.completions.stream(
        model="smart",
        messages=MESSAGES,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert all(isinstance(orjson.loads(c.function.arguments), dict) for c in calls)
    assert final.choices[0].finish_reason == "tool_calls"


async def test_parallel_tool_calls_false_is_carried(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    resp = await proxy.client().chat.completions.create(
        model="smart",
        messages=MESSAGES,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        parallel_tool_calls=False,
    )
    assert len(resp.choices[0].message.tool_calls or []) == 1
    assert sent(claude)["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


# --------------------------------------------------------------------------- reasoning


async def test_reasoning_effort_becomes_a_thinking_budget(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, reasoning_effort="medium", temperature=0.2
    )
    resp = raw.parse()
    assert resp.choices[0].message.content  # the answer, not the thinking
    request = sent(claude)
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert request["max_tokens"] > 8192
    # Anthropic takes no temperature but 1 while thinking: said, not silently lost.
    assert "temperature" not in request
    assert raw.headers["x-proxy-dropped-params"] == "temperature"


async def test_reasoning_effort_on_a_model_without_thinking_is_dropped_visibly(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-3-5-haiku-20241022"))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, reasoning_effort="high"
    )
    assert raw.headers["x-proxy-dropped-params"] == "reasoning_effort"
    assert "thinking" not in sent(claude)


# --------------------------------------------------------------------------- refused fields


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("n", {"n": 2}), ("logprobs", {"logprobs": True, "top_logprobs": 2})],
)
async def test_a_field_anthropic_cannot_honour_is_a_400_naming_it(
    fakes: FakeFactory, proxies: ProxyFactory, field: str, kwargs: dict[str, Any]
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    with pytest.raises(openai.BadRequestError) as refused:
        await proxy.client().chat.completions.create(model="smart", messages=MESSAGES, **kwargs)
    assert refused.value.code == "unsupported_parameter"
    assert refused.value.param == field
    assert f"'{field}'" in refused.value.message and "'v0'" in refused.value.message
    assert refused.value.response.headers["x-proxy-attempts"] == "v0/claude-sonnet-4-5=unsupported"
    assert claude.stats.total_requests == 0
    assert proxy.gateway.deployments["v0/claude-sonnet-4-5"].breaker.state.name == "CLOSED"


async def test_n_and_logprobs_are_routed_to_a_deployment_that_honours_them(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude, gpt), proxy = await group_of(
        fakes, proxies, ("anthropic", "claude-sonnet-4-5"), ("openai", "gpt-4o")
    )
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, n=2, logprobs=True, top_logprobs=2
    )
    resp = raw.parse()
    assert len(resp.choices) == 2
    assert resp.choices[0].logprobs is not None and resp.choices[0].logprobs.content
    assert raw.headers["x-proxy-attempts"] == "v0/claude-sonnet-4-5=unsupported, v1/gpt-4o=success"
    assert claude.stats.total_requests == 0
    # A request Anthropic can serve still goes there first.
    plain = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    assert plain.headers["x-proxy-deployment"] == "v0/claude-sonnet-4-5"


async def test_a_non_function_tool_is_refused(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    _, proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    custom: Any = {"type": "custom", "custom": {"name": "sql", "description": "runs SQL"}}
    with pytest.raises(openai.BadRequestError) as refused:
        await proxy.client().chat.completions.create(
            model="smart", messages=MESSAGES, tools=[custom]
        )
    assert refused.value.param == "tools"


# --------------------------------------------------------------------------- dropped hints


async def test_dropped_hints_are_named_in_the_header_and_the_access_log(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    hints: dict[str, Any] = {
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.0,  # neutral: asks for nothing, so nothing is dropped
        "logit_bias": {"1234": -100},
        "service_tier": "flex",
    }
    caplog.set_level(logging.INFO, logger="llmproxy.access")
    for stream in (False, True):
        caplog.clear()
        raw = await proxy.client().chat.completions.with_raw_response.create(
            model="smart", messages=MESSAGES, stream=stream, **hints
        )
        if stream:
            async for _ in raw.parse():
                pass
        dropped = {"seed", "frequency_penalty", "logit_bias", "service_tier"}
        assert set(raw.headers["x-proxy-dropped-params"].split(", ")) == dropped
        (line,) = await _access_lines(caplog)
        assert set(line["dropped_params"]) == dropped
        assert not {"seed", "frequency_penalty", "logit_bias"} & set(sent(claude))
        assert "service_tier" not in sent(claude)
    default_tier = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, service_tier="default"
    )
    assert "x-proxy-dropped-params" not in default_tier.headers
    assert sent(claude)["service_tier"] == "standard_only"


async def test_strict_params_turns_a_drop_into_a_refusal(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude,), proxy = await group_of(
        fakes, proxies, ("anthropic", "claude-sonnet-4-5"), group="    strict_params: true\n"
    )
    with pytest.raises(openai.BadRequestError) as refused:
        await proxy.client().chat.completions.create(model="smart", messages=MESSAGES, seed=7)
    assert refused.value.param == "seed"
    assert "strict_params" in refused.value.message
    assert claude.stats.total_requests == 0


async def test_strict_params_routes_to_a_deployment_that_takes_the_hint(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude, gpt), proxy = await group_of(
        fakes,
        proxies,
        ("anthropic", "claude-sonnet-4-5"),
        ("openai", "gpt-4o"),
        group="    strict_params: true\n",
    )
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, seed=7
    )
    assert raw.headers["x-proxy-deployment"] == "v1/gpt-4o"
    assert "x-proxy-dropped-params" not in raw.headers
    assert sent(gpt)["seed"] == 7


async def test_strict_pydantic_tools_are_strict_tools_at_anthropic(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude,), proxy = await group_of(fakes, proxies, ("anthropic", "claude-sonnet-4-5"))
    completion = await proxy.client().chat.completions.parse(
        model="smart", messages=MESSAGES, tools=[openai.pydantic_function_tool(MathAnswer)]
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, MathAnswer)
    (tool,) = sent(claude)["tools"]
    assert tool["strict"] is True
    output = tool["input_schema"]["$defs"]["Step"]["properties"]["output"]
    assert "minimum" not in output and "minimum: 1" in output["description"]
