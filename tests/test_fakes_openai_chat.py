"""The OpenAI fake's Chat Completions, driven directly by the official ``openai`` SDK.

No proxy in between: these prove the fake answers what the real client expects (tool
calls, ``n``, logprobs, structured output that ``chat.completions.parse`` accepts, the
stream helper's accumulation), so the proxy's own tests can trust what they relay.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import jsonschema
import openai
import pydantic
import pytest

from proxy.fakes import FakeOpenAI

pytestmark = pytest.mark.timeout(30)

MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Paris and Rome?"}]


def function(name: str, parameters: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": name, "parameters": parameters, "strict": strict},
    }


WEATHER = function(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
TIME = function(
    "get_time",
    {
        "type": "object",
        "properties": {
            "zone": {"type": "string"},
            "precise": {"type": "boolean"},
            "offsets": {"type": "array", "items": {"type": "number"}, "minItems": 1},
            "place": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                "required": ["lat", "lon"],
            },
        },
        "required": ["zone"],
    },
)
TOOLS = [WEATHER, TIME]


class Weather(pydantic.BaseModel):
    city: str
    temperature: float
    unit: Literal["celsius", "fahrenheit"]
    alerts: list[str]
    wind: Wind | None


class Wind(pydantic.BaseModel):
    speed: int
    direction: str


Weather.model_rebuild()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(name="oa", chunks=4) as f:
        yield f


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


def schema_of(tool: dict[str, Any]) -> dict[str, Any]:
    parameters: dict[str, Any] = tool["function"]["parameters"]
    return parameters


# ---------------------------------------------------------------------------- tools


async def test_parallel_tool_calls_json(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    for call, tool in zip(calls, TOOLS, strict=True):
        args = json.loads(call.function.arguments)  # type: ignore[union-attr]
        jsonschema.validate(args, schema_of(tool))
    weather = json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    assert weather["city"] == "test" and weather["unit"] in ("celsius", "fahrenheit")
    assert 1 <= weather["days"] <= 7
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    assert fake.stats.last_requests[-1].body["tools"] == TOOLS


async def test_tool_arguments_are_deterministic_per_request(client: openai.AsyncOpenAI) -> None:
    async def args(messages: list[Any]) -> list[str]:
        resp = await client.chat.completions.create(
            model="gpt-4o",
            messages=messages,
            tools=TOOLS,  # type: ignore[arg-type]
        )
        return [c.function.arguments for c in resp.choices[0].message.tool_calls or []]  # type: ignore[union-attr]

    first = await args(MESSAGES)
    assert await args(MESSAGES) == first
    other = await args([{"role": "user", "content": "something else entirely"}])
    assert other != first  # seeded by the conversation: numbers and enums move


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"parallel_tool_calls": False}, ["get_weather"]),
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, ["get_time"]),
        ({"tool_choice": "required"}, ["get_weather", "get_time"]),
        ({"tool_choice": "none"}, []),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "required",
                        "tools": [{"type": "function", "function": {"name": "get_time"}}],
                    },
                }
            },
            ["get_time"],
        ),
    ],
    ids=["not-parallel", "forced", "required", "none", "allowed-tools"],
)
async def test_tool_choice(
    client: openai.AsyncOpenAI, options: dict[str, Any], expected: list[str]
) -> None:
    resp = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=TOOLS,
        **options,  # type: ignore[arg-type]
    )
    calls = resp.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == expected  # type: ignore[union-attr]
    if not expected:
        assert resp.choices[0].finish_reason == "stop"
        assert resp.choices[0].message.content == "Hello from oa lorem ipsum dolor"


async def test_bad_tool_choice_is_openais_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert err.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError, match="only allowed when 'tools'"):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tool_choice="auto")


async def test_tool_result_gets_text(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    calls = first.choices[0].message.tool_calls or []
    followup: list[Any] = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        *({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls),
    ]
    answer = await client.chat.completions.create(
        model="gpt-4o",
        messages=followup,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "Hello from oa lorem ipsum dolor"
    assert answer.choices[0].message.tool_calls is None


async def test_streamed_tool_calls_with_the_sdk_helper(client: openai.AsyncOpenAI) -> None:
    strict_weather = function("get_weather", schema_of(WEATHER), strict=True)
    arg_deltas: dict[int, int] = {}
    async with client.chat.completions.stream(
        model="gpt-4o",
        messages=MESSAGES,
        tools=[strict_weather, TIME],  # type: ignore[list-item]
    ) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                arg_deltas[event.index] = arg_deltas.get(event.index, 0) + 1
        final = await stream.get_final_completion()
    json_answer = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=[strict_weather, TIME],  # type: ignore[list-item]
    )
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert arg_deltas[0] > 1 and arg_deltas[1] > 1  # arguments arrive in pieces
    expected = json_answer.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in calls] == [
        c.function.arguments  # type: ignore[union-attr]
        for c in expected
    ]
    # strict tools are parsed by the helper
    assert calls[0].function.parsed_arguments == json.loads(calls[0].function.arguments)


async def test_stream_chunk_format_of_tool_calls(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,  # type: ignore[arg-type]
    )
    deltas = [chunk.choices[0] async for chunk in stream if chunk.choices]
    first = deltas[0].delta
    assert first.role == "assistant"
    head = (first.tool_calls or [])[0]
    assert head.index == 0 and head.id and head.type == "function"
    assert head.function is not None and head.function.name == "get_weather"
    assert head.function.arguments == ""
    pieces = [d.delta.tool_calls[0] for d in deltas[1:] if d.delta.tool_calls]
    assert all(p.function is not None for p in pieces)
    second_head = next(p for p in pieces if p.id)
    assert second_head.index == 1 and second_head.function.name == "get_time"  # type: ignore[union-attr]
    assert all(p.function.name is None for p in pieces if not p.id)  # type: ignore[union-attr]
    assert deltas[-1].finish_reason == "tool_calls" and deltas[-1].delta.tool_calls is None


# ---------------------------------------------------------------------------- n, logprobs


async def test_n_choices_json_and_stream(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert {c.message.content for c in resp.choices} == {"Hello from oa lorem ipsum dolor"}
    assert resp.usage is not None and resp.usage.completion_tokens == 3 * 4
    async with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES, n=2) as stream:
        final = await stream.get_final_completion()
    assert [c.index for c in final.choices] == [0, 1]
    assert [c.message.content for c in final.choices] == ["Hello from oa lorem ipsum dolor"] * 2
    assert all(c.finish_reason == "stop" for c in final.choices)


async def test_n_with_tools_gives_each_choice_its_calls(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=TOOLS,
        n=2,  # type: ignore[arg-type]
    )
    ids = [[c.id for c in choice.message.tool_calls or []] for choice in resp.choices]
    assert len(ids) == 2 and all(len(i) == 2 for i in ids)
    assert len({i for choice_ids in ids for i in choice_ids}) == 4


async def test_invalid_n_is_rejected(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, n=0)
    assert err.value.code == "integer_below_min_value" and err.value.param == "n"


async def test_logprobs_json_and_stream(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, logprobs=True, top_logprobs=2
    )
    logprobs = resp.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    tokens = [t.token for t in logprobs.content]
    assert "".join(tokens) == resp.choices[0].message.content
    for entry in logprobs.content:
        assert entry.bytes == list(entry.token.encode())
        assert entry.logprob < 0
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[1].logprob < entry.logprob
    async with client.chat.completions.stream(
        model="gpt-4o", messages=MESSAGES, logprobs=True, top_logprobs=2
    ) as stream:
        final = await stream.get_final_completion()
    streamed = final.choices[0].logprobs
    assert streamed is not None and streamed.content == logprobs.content
    plain = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, logprobs=True)
    assert plain.choices[0].logprobs is not None
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content or [])
    none = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert none.choices[0].logprobs is None


# ---------------------------------------------------------------------------- response_format


async def test_parse_with_a_pydantic_model(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.parse(
        model="gpt-4o", messages=MESSAGES, response_format=Weather
    )
    parsed = resp.choices[0].message.parsed
    assert isinstance(parsed, Weather)
    assert parsed.city == "test" and parsed.unit in ("celsius", "fahrenheit")
    sent = fake.stats.last_requests[-1].body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    jsonschema.validate(
        json.loads(resp.choices[0].message.content or ""), sent["json_schema"]["schema"]
    )


async def test_parse_streamed(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="gpt-4o", messages=MESSAGES, response_format=Weather
    ) as stream:
        final = await stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Weather)


async def test_json_schema_dict_and_json_object(client: openai.AsyncOpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "qty": {"type": "integer", "minimum": 1},
                        "kind": {
                            "anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]
                        },
                    },
                    "required": ["name", "qty", "kind"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["items"],
        "additionalProperties": False,
    }
    resp = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "order", "schema": schema}},
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), schema)
    obj = await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert json.loads(obj.choices[0].message.content or "") == {
        "answer": "Hello from oa lorem ipsum dolor"
    }


async def test_odd_shapes_never_break_the_fake(fake: FakeOpenAI) -> None:
    """What fuzzers and broken translations send: a 200 or an OpenAI 400, never a 500."""
    bodies: list[Any] = [
        {"tools": "x"},
        {"tools": [1, None, {"function": 3}, {"function": {"name": 5}}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": 7},
        {"response_format": {"type": "json_schema", "json_schema": "x"}},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#"}}}},
        {"n": "two"},
        {"n": True},
        {"logprobs": True, "top_logprobs": 99},
    ]
    async with aiohttp.ClientSession() as s:
        for extra in bodies:
            body = {"model": "gpt-4o", "messages": MESSAGES, **extra}
            for stream in (False, True):
                async with s.post(
                    fake.base_url + "/chat/completions", json={**body, "stream": stream}
                ) as resp:
                    assert resp.status in (200, 400), (extra, await resp.text())
                    await resp.read()
