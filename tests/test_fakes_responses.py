"""The OpenAI fake's Responses API (``/v1/responses``), driven by the official SDK.

No proxy in between: the SDK's own stream accumulator (``responses.stream``) must rebuild
from the events exactly what the JSON answer holds, ``responses.parse`` must validate
the structured answer, and faults must look as OpenAI's do to the client (an HTTP error
before the stream, ``response.failed`` inside it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import openai
import pydantic
import pytest

from proxy.fakes import FakeAzureOpenAI, FakeOpenAI, Fault

pytestmark = pytest.mark.timeout(30)

TEXT = "Hello from r lorem ipsum dolor"
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "name": "get_time",
    "parameters": {
        "type": "object",
        "properties": {"zone": {"type": "string"}, "hours": {"type": "integer", "maximum": 23}},
        "required": ["zone", "hours"],
        "additionalProperties": False,
    },
}
TOOLS = [WEATHER, TIME]


class Forecast(pydantic.BaseModel):
    city: str
    days: list[Day]
    confidence: float


class Day(pydantic.BaseModel):
    date: str
    rain: bool
    high: int


Forecast.model_rebuild()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(name="r", chunks=4) as f:
        yield f


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


async def raw_events(fake: FakeOpenAI, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a streamed response, read off the wire."""
    out: list[tuple[str, dict[str, Any]]] = []
    name = ""
    async with (
        aiohttp.ClientSession() as s,
        s.post(fake.base_url + "/responses", json={**body, "stream": True}) as resp,
    ):
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"event: "):
                name = line[7:].strip().decode()
            elif line.startswith(b"data: "):
                out.append((name, json.loads(line[6:])))
    return out


# ---------------------------------------------------------------------------- JSON


async def test_text_response_shape(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    resp = await client.responses.create(
        model="gpt-4o", input="hello there", instructions="be brief", metadata={"k": "v"}
    )
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.status == "completed" and resp.error is None
    assert resp.model == "gpt-4o" and resp.instructions == "be brief"
    assert resp.metadata == {"k": "v"}
    assert resp.output_text == TEXT
    (message,) = resp.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text"
    assert resp.usage is not None
    assert resp.usage.output_tokens == 4
    assert resp.usage.input_tokens == len("hello therebe brief") // 4
    assert resp.usage.total_tokens == resp.usage.input_tokens + 4
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    assert fake.stats.tokens == {"prompt": resp.usage.input_tokens, "completion": 4, "cached": 0}
    assert fake.stats.last_requests[-1].body["instructions"] == "be brief"


async def test_parallel_function_calls_and_round_trip(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    first = await client.responses.create(model="gpt-4o", input="weather and time?", tools=TOOLS)  # type: ignore[arg-type]
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.call_id for c in calls}) == 2
    for call, tool in zip(calls, TOOLS, strict=True):
        jsonschema.validate(json.loads(call.arguments), tool["parameters"])
    assert first.tools[0].strict is True  # type: ignore[union-attr]  # echoed with the default
    outputs: list[Any] = [
        {"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls
    ]
    second = await client.responses.create(
        model="gpt-4o",
        previous_response_id=first.id,
        input=outputs,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    assert second.output_text == TEXT
    assert second.previous_response_id == first.id
    # the chain's context is billed: more input tokens than the outputs alone
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    # without previous_response_id the calls travel in the input (store: false flows)
    manual = await client.responses.create(
        model="gpt-4o",
        input=[
            {"role": "user", "content": "weather and time?"},
            *(c.model_dump(exclude_none=True) for c in calls),
            *outputs,
        ],
        tools=TOOLS,  # type: ignore[arg-type]
        store=False,
    )
    assert manual.output_text == TEXT and manual.store is False
    assert manual.id not in fake.responses.store


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"parallel_tool_calls": False}, ["get_weather"]),
        ({"tool_choice": {"type": "function", "name": "get_time"}}, ["get_time"]),
        ({"tool_choice": "none"}, []),
        ({"max_tool_calls": 1}, ["get_weather"]),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "required",
                    "tools": [{"type": "function", "name": "get_time"}],
                }
            },
            ["get_time"],
        ),
    ],
    ids=["not-parallel", "forced", "none", "max-tool-calls", "allowed-tools"],
)
async def test_tool_choice(
    client: openai.AsyncOpenAI, options: dict[str, Any], expected: list[str]
) -> None:
    resp = await client.responses.create(model="gpt-4o", input="x", tools=TOOLS, **options)  # type: ignore[arg-type]
    assert [i.name for i in resp.output if i.type == "function_call"] == expected
    if not expected:
        assert resp.output_text == TEXT


async def test_tool_output_rules_are_openais(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(model="gpt-4o", input="x", tools=[WEATHER])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="No tool call found for function call output"):
        await client.responses.create(
            model="gpt-4o",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}],
        )
    with pytest.raises(openai.BadRequestError, match="No tool output found for function call"):
        await client.responses.create(model="gpt-4o", previous_response_id=first.id, input="and?")
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(
            model="gpt-4o",
            input="x",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "nope"},  # type: ignore[list-item]
        )
    assert err.value.param == "tool_choice"


async def test_previous_response_and_store_lifecycle(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    first = await client.responses.create(model="gpt-4o", input="remember me")
    assert first.id in fake.responses.store
    again = await client.responses.retrieve(first.id)
    assert again.model_dump() == first.model_dump()
    second = await client.responses.create(
        model="gpt-4o", previous_response_id=first.id, input="and now?"
    )
    items = await client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "and now?"  # type: ignore[union-attr]
    await client.responses.delete(first.id)
    assert first.id not in fake.responses.store
    with pytest.raises(openai.NotFoundError) as err:
        await client.responses.retrieve(first.id)
    assert err.value.body == {  # type: ignore[comparison-overlap]
        "message": f"Response with id '{first.id}' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError) as err:
        await client.responses.create(model="gpt-4o", previous_response_id=first.id, input="x")
    assert err.value.code == "previous_response_not_found"
    assert err.value.param == "previous_response_id"
    assert str(err.value.message).endswith(f"Previous response with id '{first.id}' not found.")
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(first.id)
    methods = [r.method for r in fake.stats.last_requests if r.path.endswith(first.id)]
    assert methods == ["GET", "DELETE", "GET", "DELETE"]


async def test_input_items_listing_order_and_limit(client: openai.AsyncOpenAI) -> None:
    resp = await client.responses.create(
        model="gpt-4o",
        input=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": [{"type": "input_text", "text": "three"}]},
        ],
    )
    page = await client.responses.input_items.list(resp.id)
    texts = [i.content[0].text for i in page.data]  # type: ignore[union-attr]
    assert texts == ["three", "two", "one"]  # desc by default
    page = await client.responses.input_items.list(resp.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["one", "two"]  # type: ignore[union-attr]
    assert page.has_more is True


async def test_input_tokens_count(client: openai.AsyncOpenAI) -> None:
    count = await client.responses.input_tokens.count(
        model="gpt-4o", input="x" * 40, instructions="y" * 8
    )
    assert count.object == "response.input_tokens" and count.input_tokens == 12
    created = await client.responses.create(model="gpt-4o", input="x" * 40, instructions="y" * 8)
    assert created.usage is not None and created.usage.input_tokens == count.input_tokens


async def test_structured_output_with_parse(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    resp = await client.responses.parse(model="gpt-4o", input="forecast", text_format=Forecast)
    assert isinstance(resp.output_parsed, Forecast)
    assert resp.output_parsed.city == "test"
    sent = fake.stats.last_requests[-1].body["text"]["format"]
    assert sent["type"] == "json_schema" and sent["strict"] is True
    assert resp.text is not None and resp.text.format.type == "json_schema"
    jsonschema.validate(json.loads(resp.output_text), sent["schema"])


async def test_reasoning_and_logprobs(client: openai.AsyncOpenAI) -> None:
    resp = await client.responses.create(
        model="o4-mini",
        input="think",
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content", "message.output_text.logprobs"],
        top_logprobs=2,
    )
    reasoning, message = resp.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert reasoning.summary and reasoning.summary[0].text.startswith("Thinking as r")
    assert reasoning.encrypted_content
    assert resp.reasoning is not None and resp.reasoning.effort == "low"
    assert resp.usage is not None and resp.usage.output_tokens_details.reasoning_tokens > 0
    assert message.type == "message"
    part = message.content[0]
    assert part.type == "output_text" and part.logprobs
    assert "".join(lp.token for lp in part.logprobs) == TEXT
    assert all(len(lp.top_logprobs) == 2 for lp in part.logprobs)
    plain = await client.responses.create(model="o4-mini", input="x", reasoning={"effort": "low"})
    assert plain.output[0].type == "reasoning" and plain.output[0].summary == []


async def test_max_output_tokens(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="gpt-4o", input="x", max_output_tokens=5)
    assert err.value.code == "integer_below_min_value"
    async with (
        FakeOpenAI(name="long", chunks=20) as long,
        openai.AsyncOpenAI(base_url=long.base_url, api_key="k", max_retries=0) as c,
    ):
        resp = await c.responses.create(model="gpt-4o", input="x", max_output_tokens=16)
        assert resp.status == "incomplete"
        assert resp.incomplete_details is not None
        assert resp.incomplete_details.reason == "max_output_tokens"
        assert resp.usage is not None and resp.usage.output_tokens == 16
        async with c.responses.stream(model="gpt-4o", input="x", max_output_tokens=16) as stream:
            types = [event.type async for event in stream]
        assert types[-1] == "response.incomplete"


# ---------------------------------------------------------------------------- stream


async def test_stream_accumulates_to_the_json_answer(client: openai.AsyncOpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "gpt-4o", "input": "weather?", "tools": TOOLS}
    async with client.responses.stream(**kwargs) as stream:
        deltas = [
            e.delta async for e in stream if e.type == "response.function_call_arguments.delta"
        ]
        final = await stream.get_final_response()
    assert len(deltas) > 2
    json_answer = await client.responses.create(**kwargs)
    strip = {"id", "call_id", "parsed_arguments"}  # fresh ids; the helper's own field

    def content(resp: Any) -> Any:
        return [
            {k: v for k, v in item.model_dump().items() if k not in strip} for item in resp.output
        ]

    assert content(final) == content(json_answer)
    assert final.usage == json_answer.usage
    async with client.responses.stream(model="gpt-4o", input="hi") as stream:
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert text == final.output_text == TEXT


async def test_stream_event_sequence(fake: FakeOpenAI) -> None:
    events = await raw_events(
        fake, {"model": "gpt-4o", "input": "x", "reasoning": {"effort": "low", "summary": "auto"}}
    )
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    text_deltas = ["response.output_text.delta"] * 4
    summary_deltas = ["response.reasoning_summary_text.delta"] * 4
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        *summary_deltas,
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *text_deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = events[0][1]["response"]
    assert (
        created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    )
    completed = events[-1][1]["response"]
    assert completed["id"] == created["id"] and completed["status"] == "completed"
    added = [d["item"] for n, d in events if n == "response.output_item.added"]
    assert [i["type"] for i in added] == ["reasoning", "message"]
    assert added[1]["status"] == "in_progress" and added[1]["content"] == []
    fc_events = await raw_events(fake, {"model": "gpt-4o", "input": "x", "tools": [WEATHER]})
    names = [name for name, _ in fc_events]
    assert names[2] == "response.output_item.added"
    added = fc_events[2][1]["item"]
    assert added["type"] == "function_call" and added["arguments"] == "" and added["call_id"]
    done = next(d for n, d in fc_events if n == "response.function_call_arguments.done")
    pieces = [d["delta"] for n, d in fc_events if n == "response.function_call_arguments.delta"]
    assert "".join(pieces) == done["arguments"]
    assert names[-2:] == ["response.output_item.done", "response.completed"]


async def test_streamed_parse(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(
        model="gpt-4o", input="forecast", text_format=Forecast
    ) as stream:
        final = await stream.get_final_response()
    assert isinstance(final.output_parsed, Forecast)


# ---------------------------------------------------------------------------- faults


async def test_rate_limit_before_the_stream(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.set_fault(Fault.preset("rate_limited", retry_after_s=3))
    with pytest.raises(openai.RateLimitError) as err:
        async with client.responses.stream(model="gpt-4o", input="x"):
            pass
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="gpt-4o", input="x")
    fake.set_fault(Fault.preset("insufficient_quota"))
    with pytest.raises(openai.RateLimitError) as err:
        await client.responses.create(model="gpt-4o", input="x")
    assert err.value.code == "insufficient_quota"


async def test_failure_inside_the_stream_is_response_failed(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.set_fault(Fault(error_event_after_chunks=5))
    async with client.responses.stream(model="gpt-4o", input="x") as stream:
        events = [event async for event in stream]
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            await stream.get_final_response()
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.sequence_number == 5
    assert failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.code == "server_error"
    assert fake.stats.faults["error_event"] == 1
    fake.clear_fault()
    stored = await client.responses.retrieve(failed.response.id)
    assert stored.status == "failed"  # OpenAI keeps the failed response, not the whole one
    fake.set_fault(Fault(error_event_after_chunks=2, message="upstream fell over"))
    async with client.responses.stream(model="gpt-4o", input="x") as stream:
        last = [event async for event in stream][-1]
    assert last.type == "response.failed"
    assert last.sequence_number == 2
    assert last.response.error is not None and last.response.error.message == "upstream fell over"


async def test_bare_error_event_and_dropped_stream(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    error = {"type": "error", "code": "server_error", "message": "boom", "param": None,
             "sequence_number": 3}  # fmt: skip
    fake.set_fault(Fault(error_event_after_chunks=3, body=error))
    async with client.responses.stream(model="gpt-4o", input="x") as stream:
        last = [event async for event in stream][-1]
    assert last.type == "error" and last.message == "boom"
    fake.set_fault(Fault.preset("drop_midstream"))
    with pytest.raises(openai.APIConnectionError):
        async with client.responses.stream(model="gpt-4o", input="x") as stream:
            async for _ in stream:
                pass


async def test_odd_bodies_get_400s_not_500s(fake: FakeOpenAI) -> None:
    bodies: list[Any] = [
        {"input": "x"},
        {"model": "gpt-4o"},
        {"model": "gpt-4o", "input": 5},
        {"model": "gpt-4o", "input": [1]},
        {"model": "gpt-4o", "input": "x", "tools": "x", "tool_choice": 3, "text": 1},
        {"model": "gpt-4o", "input": "x", "reasoning": "x", "include": "x", "top_logprobs": "x"},
        {"model": "gpt-4o", "input": "x", "max_output_tokens": "x"},
        {"model": "gpt-4o", "input": "x", "previous_response_id": 7},
    ]
    async with aiohttp.ClientSession() as s:
        for body in bodies:
            for stream in (False, True):
                async with s.post(
                    fake.base_url + "/responses", json={**body, "stream": stream}
                ) as resp:
                    assert resp.status in (200, 400, 404), (body, await resp.text())
                    await resp.read()


async def test_azure_serves_responses_outside_deployments() -> None:
    async with FakeAzureOpenAI(name="az", api_key="az-key") as fake:
        async with openai.AsyncAzureOpenAI(
            azure_endpoint=fake.origin, api_key="az-key", api_version="2025-04-01-preview",
            max_retries=0,
        ) as client:  # fmt: skip
            resp = await client.responses.create(model="my-deployment", input="hi")
            assert resp.model == "my-deployment"
            assert fake.stats.last_requests[-1].path == "/openai/responses"
            again = await client.responses.retrieve(resp.id)
            assert again.id == resp.id
        async with openai.AsyncOpenAI(
            base_url=fake.origin + "/openai/v1", api_key="x", max_retries=0,
            default_headers={"api-key": "az-key"},
        ) as v1:  # fmt: skip
            answer = await v1.responses.create(model="d", input="hi")
        assert answer.output_text.startswith("Hello from az")
        assert fake.stats.last_requests[-1].path == "/openai/v1/responses"
