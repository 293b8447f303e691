"""The Anthropic fake, driven directly by the official ``anthropic`` SDK.

Several tool uses with inputs that match their schemas (JSON and accumulated by the
stream helper), ``tool_choice``, thinking blocks with signatures, and structured output
through ``output_config.format`` as ``messages.parse`` sends it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import anthropic
import jsonschema
import pydantic
import pytest

from proxy.fakes import FakeAnthropic, Fault

pytestmark = pytest.mark.timeout(30)

MODEL = "claude-sonnet-4-5"
MESSAGES: list[Any] = [{"role": "user", "content": "Weather in Paris, and the time?"}]
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 5},
            "metric": {"type": "boolean"},
        },
        "required": ["city", "days"],
    },
}
TIME: dict[str, Any] = {
    "name": "get_time",
    "input_schema": {
        "type": "object",
        "properties": {
            "zone": {"type": "string", "enum": ["UTC", "CET", "PST"]},
            "offsets": {"type": "array", "items": {"type": "number"}, "minItems": 1},
        },
        "required": ["zone", "offsets"],
    },
}
TOOLS = [WEATHER, TIME]
TEXT = "Hello from an lorem ipsum dolor"


class Verdict(pydantic.BaseModel):
    label: Literal["good", "bad"]
    score: float
    reasons: list[str]
    source: Source | None


class Source(pydantic.BaseModel):
    url: str
    year: int


Verdict.model_rebuild()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(name="an", chunks=4) as f:
        yield f


@pytest.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=fake.base_url, api_key="sk-ant", max_retries=0
    ) as c:
        yield c


async def test_several_tool_uses_match_their_schemas(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    msg = await client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS)
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"]
    assert len({u.id for u in uses}) == 2 and all(u.id.startswith("toolu_") for u in uses)
    for use, tool in zip(uses, TOOLS, strict=True):
        jsonschema.validate(use.input, tool["input_schema"])
    weather = uses[0].input
    assert isinstance(weather, dict)
    assert weather["city"] == "test" and isinstance(weather["days"], int)
    assert isinstance(weather["metric"], bool)
    assert msg.usage.output_tokens > 0
    assert fake.stats.last_requests[-1].body["tools"] == TOOLS


async def test_stream_accumulates_tool_inputs(client: anthropic.AsyncAnthropic) -> None:
    partials = 0
    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS
    ) as stream:
        async for event in stream:
            if event.type == "input_json":
                partials += 1
        final = await stream.get_final_message()
    json_msg = await client.messages.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS
    )
    assert final.stop_reason == "tool_use"
    assert partials > 2
    streamed = [(b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert streamed == [(b.name, b.input) for b in json_msg.content if b.type == "tool_use"]
    assert final.usage.output_tokens == json_msg.usage.output_tokens


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, ["get_weather", "get_time"]),
        ({"type": "any"}, ["get_weather", "get_time"]),
        ({"type": "tool", "name": "get_time"}, ["get_time"]),
        ({"type": "auto", "disable_parallel_tool_use": True}, ["get_weather"]),
        ({"type": "none"}, []),
    ],
    ids=["auto", "any", "tool", "not-parallel", "none"],
)
async def test_tool_choice(
    client: anthropic.AsyncAnthropic, tool_choice: Any, expected: list[str]
) -> None:
    msg = await client.messages.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice
    )
    assert [b.name for b in msg.content if b.type == "tool_use"] == expected
    if not expected:
        assert msg.stop_reason == "end_turn"
        assert msg.content[0].type == "text" and msg.content[0].text == TEXT


async def test_unknown_forced_tool_is_a_400(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice={"type": "tool", "name": "nope"},
        )
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_tool_results_get_text(client: anthropic.AsyncAnthropic) -> None:
    first = await client.messages.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS
    )
    results = [
        {"type": "tool_result", "tool_use_id": b.id, "content": "ok"}
        for b in first.content
        if b.type == "tool_use"
    ]
    followup: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": results},
    ]
    answer = await client.messages.create(
        model=MODEL, max_tokens=100, messages=followup, tools=TOOLS
    )
    assert answer.stop_reason == "end_turn"
    assert [b.type for b in answer.content] == ["text"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_thinking_block_before_the_answer(
    client: anthropic.AsyncAnthropic, stream: bool
) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 2048,
        "messages": MESSAGES,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    if stream:
        kinds: list[str] = []
        async with client.messages.stream(**kwargs) as s:
            async for event in s:
                if event.type in ("thinking", "signature", "text"):
                    kinds.append(event.type)
            msg = await s.get_final_message()
        assert kinds.index("signature") < kinds.index("text")
    else:
        msg = await client.messages.create(**kwargs)
    thinking, text = msg.content
    assert thinking.type == "thinking"
    assert thinking.thinking.startswith("Thinking as an") and thinking.signature
    assert text.type == "text" and text.text == TEXT
    assert msg.usage.output_tokens == 8  # four thinking pieces, four text pieces


async def test_omitted_thinking_keeps_the_signature(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(
        model=MODEL,
        max_tokens=2048,
        messages=MESSAGES,
        thinking={"type": "adaptive", "display": "omitted"},
    )
    thinking = msg.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "" and thinking.signature


async def test_structured_output_with_parse(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    msg = await client.messages.parse(
        model=MODEL, max_tokens=100, messages=MESSAGES, output_format=Verdict
    )
    assert isinstance(msg.parsed_output, Verdict)
    sent = fake.stats.last_requests[-1].body["output_config"]["format"]
    assert sent["type"] == "json_schema"
    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES, output_format=Verdict
    ) as stream:
        final = await stream.get_final_message()
    assert final.parsed_output == msg.parsed_output


async def test_output_config_with_a_schema_dict(client: anthropic.AsyncAnthropic) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "when": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "required": ["name", "email", "when", "tags"],
        "additionalProperties": False,
    }
    msg = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=MESSAGES,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    text = msg.content[0]
    assert text.type == "text"
    value = pydantic.TypeAdapter(dict[str, Any]).validate_json(text.text)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


async def test_fault_inside_the_stream_after_a_tool_use_block(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.set_fault(Fault(error_event_after_chunks=4))
    with pytest.raises(anthropic.APIStatusError) as err:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=MESSAGES, tools=TOOLS
        ) as stream:
            await stream.get_final_message()
    assert "overloaded" in str(err.value).lower()


async def test_odd_tool_shapes_never_break_the_fake(fake: FakeAnthropic) -> None:
    bodies: list[Any] = [
        {"tools": "x"},
        {"tools": [1, {"name": 3}, {"name": "f", "input_schema": "x"}], "tool_choice": "any"},
        {"tools": [{"name": "f"}], "tool_choice": {"type": 5}},
        {"thinking": "yes", "output_config": 3},
        {"output_config": {"format": {"type": "json_schema", "schema": {"$ref": "#/x"}}}},
    ]
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as s:
        for extra in bodies:
            body = {"model": MODEL, "max_tokens": 10, "messages": MESSAGES, **extra}
            for stream in (False, True):
                async with s.post(
                    fake.base_url + "/v1/messages",
                    json={**body, "stream": stream},
                    headers=headers,
                ) as resp:
                    assert resp.status in (200, 400), (extra, await resp.text())
                    await resp.read()
