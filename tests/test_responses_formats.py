"""The Responses API translations on their own: request fields (carried, dropped, refused),
and vendor answers turned into the event sequence the openai SDK's accumulator accepts,
equal to their JSON twins, whatever the chunking."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from proxy.core.errors import Unsupported
from proxy.formats.responses import (
    RESPONSES_FIELDS,
    pack_thinking,
    responses_to_chat,
    responses_to_messages,
)
from proxy.formats.responses_answers import (
    ChatToResponsesStream,
    MessagesToResponsesStream,
    chat_to_response,
    message_to_response,
)
from proxy.formats.sse import SSEParser, sse_event
from proxy.formats.translation import Kind, Translation


def _t(model: str = "claude-sonnet-4-5", *, strict: bool = False) -> Translation:
    return Translation("v", model, strict)


SEARCH_TOOLS: list[Any] = [
    {"type": "web_search", "filters": {"allowed_domains": ["example.com"]}},
    {
        "type": "namespace",
        "name": "crm",
        "description": "CRM tools",
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    },
]
REQUEST: dict[str, Any] = {
    "model": "m",
    "input": "find it",
    "tools": SEARCH_TOOLS,
    "reasoning": {"effort": "medium", "summary": "auto"},
}


def _accumulate(stream: bytes) -> tuple[list[str], Any]:
    """The SDK's own accumulator over the events: their kinds and the final response."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    kinds: list[str] = []
    final = None
    for _, data in SSEParser().feed(stream):
        event = construct_type(type_=ResponseStreamEvent, value=orjson.loads(data))  # type: ignore[arg-type]
        kinds.append(event.type)
        for out in state.handle_event(event):
            if out.type in ("response.completed", "response.incomplete"):
                final = out.response
    return kinds, final


def _feed(translator: Any, events: bytes, step: int) -> bytes:
    return b"".join(translator.feed(events[i : i + step]) for i in range(0, len(events), step))


def _anthropic(kind: str, **fields: Any) -> bytes:
    return sse_event(kind, orjson.dumps({"type": kind, **fields}))


THOUGHT = "I should search."
ANTHROPIC_STREAM = b"".join(
    [
        _anthropic(
            "message_start",
            message={"id": "msg_1", "model": "claude", "usage": {"input_tokens": 10}},
        ),
        _anthropic(
            "content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}
        ),
        _anthropic(
            "content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": THOUGHT}
        ),
        _anthropic(
            "content_block_delta", index=0, delta={"type": "signature_delta", "signature": "sig"}
        ),
        _anthropic("content_block_stop", index=0),
        _anthropic(
            "content_block_start",
            index=1,
            content_block={
                "type": "server_tool_use",
                "id": "srv_1",
                "name": "web_search",
                "input": {},
            },
        ),
        _anthropic(
            "content_block_delta",
            index=1,
            delta={"type": "input_json_delta", "partial_json": '{"query": "news"}'},
        ),
        _anthropic("content_block_stop", index=1),
        _anthropic(
            "content_block_start",
            index=2,
            content_block={
                "type": "web_search_tool_result",
                "tool_use_id": "srv_1",
                "content": [
                    {"type": "web_search_result", "url": "https://example.com/a", "title": "A"}
                ],
            },
        ),
        _anthropic("content_block_stop", index=2),
        _anthropic("content_block_start", index=3, content_block={"type": "text", "text": ""}),
        _anthropic(
            "content_block_delta",
            index=3,
            delta={
                "type": "citations_delta",
                "citation": {
                    "type": "web_search_result_location",
                    "url": "https://example.com/a",
                    "title": "A",
                },
            },
        ),
        _anthropic("content_block_delta", index=3, delta={"type": "text_delta", "text": "Found "}),
        _anthropic("content_block_delta", index=3, delta={"type": "text_delta", "text": "it."}),
        _anthropic("content_block_stop", index=3),
        _anthropic(
            "content_block_start",
            index=4,
            content_block={"type": "tool_use", "id": "toolu_1", "name": "crm__lookup", "input": {}},
        ),
        _anthropic(
            "content_block_delta",
            index=4,
            delta={"type": "input_json_delta", "partial_json": '{"id":7}'},
        ),
        _anthropic("content_block_stop", index=4),
        _anthropic(
            "message_delta",
            delta={"stop_reason": "tool_use"},
            usage={"output_tokens": 20, "cache_read_input_tokens": 4},
        ),
        _anthropic("message_stop"),
    ]
)
ANTHROPIC_JSON: dict[str, Any] = {
    "id": "msg_1",
    "model": "claude",
    "content": [
        {"type": "thinking", "thinking": THOUGHT, "signature": "sig"},
        {
            "type": "server_tool_use",
            "id": "srv_1",
            "name": "web_search",
            "input": {"query": "news"},
        },
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srv_1",
            "content": [
                {"type": "web_search_result", "url": "https://example.com/a", "title": "A"}
            ],
        },
        {
            "type": "text",
            "text": "Found it.",
            "citations": [
                {"type": "web_search_result_location", "url": "https://example.com/a", "title": "A"}
            ],
        },
        {"type": "tool_use", "id": "toolu_1", "name": "crm__lookup", "input": {"id": 7}},
    ],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 4},
}


def _items(response: Any) -> list[dict[str, Any]]:
    return [
        item if isinstance(item, dict) else item.model_dump(exclude_none=True) for item in response
    ]


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_anthropic_stream_matches_its_json_twin(step: int) -> None:
    stream = _feed(MessagesToResponsesStream(REQUEST, _t()), ANTHROPIC_STREAM, step)
    kinds, final = _accumulate(stream)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.web_search_call.completed" in kinds
    assert "response.output_text.annotation.added" in kinds
    twin = message_to_response(ANTHROPIC_JSON, Translation("v", "m", request=REQUEST))
    assert final is not None and final.id == twin["id"]
    streamed = [i.model_dump(exclude_none=True) for i in final.output]
    assert streamed == orjson.loads(orjson.dumps(twin["output"]))
    reasoning, search, message, call = twin["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": THOUGHT}]
    assert reasoning["encrypted_content"] == pack_thinking(
        [{"type": "thinking", "thinking": THOUGHT, "signature": "sig"}]
    )
    assert search["action"] == {
        "type": "search",
        "query": "news",
        "sources": [{"type": "url", "url": "https://example.com/a"}],
    }
    annotation = message["content"][0]["annotations"][0]
    assert (annotation["start_index"], annotation["end_index"]) == (0, len("Found it."))
    assert (call["name"], call["namespace"], call["arguments"]) == ("lookup", "crm", '{"id":7}')
    assert twin["usage"]["input_tokens"] == 14
    assert twin["usage"]["input_tokens_details"]["cached_tokens"] == 4


CHAT_STREAM = (
    b"".join(
        sse_event(None, orjson.dumps(chunk))
        for chunk in [
            {
                "id": "c1",
                "model": "g",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
            },
            {"id": "c1", "model": "g", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
            {
                "id": "c1",
                "model": "g",
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": "crm__lookup", "arguments": '{"id"'},
                                }
                            ]
                        },
                    }
                ],
            },
            {
                "id": "c1",
                "model": "g",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 7}"}}]},
                    }
                ],
            },
            {
                "id": "c1",
                "model": "g",
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 1,
                                    "id": "call_2",
                                    "type": "function",
                                    "function": {"name": "crm__lookup", "arguments": "{}"},
                                }
                            ]
                        },
                        "finish_reason": "tool_calls",
                    }
                ],
            },
            {
                "id": "c1",
                "model": "g",
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3},
            },
        ]
    )
    + b"data: [DONE]\n\n"
)
CHAT_JSON: dict[str, Any] = {
    "id": "c1",
    "model": "g",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "crm__lookup", "arguments": '{"id": 7}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "crm__lookup", "arguments": "{}"},
                    },
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3},
}


@pytest.mark.parametrize("step", [1, 13, 10_000])
def test_chat_stream_matches_its_json_twin(step: int) -> None:
    request = {"model": "m", "input": "x", "tools": SEARCH_TOOLS[1:]}
    kinds, final = _accumulate(_feed(ChatToResponsesStream(request, _t()), CHAT_STREAM, step))
    assert kinds[-1] == "response.completed"
    twin = chat_to_response(CHAT_JSON, Translation("v", "g", request=request))
    assert [i.model_dump(exclude_none=True) for i in final.output] == twin["output"]
    assert [i["type"] for i in twin["output"]] == ["message", "function_call", "function_call"]
    assert twin["output"][1]["namespace"] == "crm" and twin["output"][1]["name"] == "lookup"
    assert twin["usage"]["output_tokens"] == 3


@pytest.mark.parametrize(
    ("stop", "status", "reason"),
    [
        ("max_tokens", "incomplete", "max_output_tokens"),
        ("refusal", "incomplete", "content_filter"),
        ("end_turn", "completed", None),
    ],
)
def test_stop_reasons(stop: str, status: str, reason: str | None) -> None:
    msg = {"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop, "usage": {}}
    response = message_to_response(msg, Translation("v", "m", request={"model": "m"}))
    assert response["status"] == status
    assert response["incomplete_details"] == ({"reason": reason} if reason else None)
    assert response["output"][0]["status"] == ("incomplete" if reason else "completed")


# ---------------------------------------------------------------------------- requests


def test_every_refused_field_is_named() -> None:
    for name, spec in RESPONSES_FIELDS.items():
        if spec.kind is not Kind.SHAPE:
            continue
        value: Any = "x" if name != "top_logprobs" else 3
        for translate in (responses_to_messages, responses_to_chat):
            with pytest.raises(Unsupported) as err:
                translate({"model": "m", "input": "x", name: value}, _t())
            assert err.value.field == name and err.value.vendor == "v"


def test_neutral_values_hints_and_info() -> None:
    body = {
        "model": "m",
        "input": "x",
        "background": False,
        "truncation": "disabled",
        "top_logprobs": 0,
        "service_tier": "priority",
        "store": True,
        "metadata": {"k": "v"},
        "text": {"verbosity": "low"},
        "unknown_but_null": None,
        "brand_new": 1,
    }
    t = _t()
    responses_to_messages(body, t)
    assert t.dropped == ["service_tier", "store", "metadata", "brand_new", "text.verbosity"]
    strict = _t(strict=True)  # hints are refused, fields that change nothing still dropped
    with pytest.raises(Unsupported) as err:
        responses_to_messages(body, strict)
    assert err.value.field == "brand_new"
    responses_to_messages({**body, "brand_new": None, "text": {}}, strict)
    assert strict.dropped == ["service_tier", "store", "metadata"]


def test_messages_request_shape() -> None:
    body = {
        "model": "m",
        "instructions": "system one",
        "input": [
            {"role": "developer", "content": "system two"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                ],
            },
            {
                "type": "reasoning",
                "id": "rs_x",
                "summary": [],
                "encrypted_content": "openai-opaque",
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "lookup",
                "namespace": "crm",
                "arguments": '{"id": 1}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "found"},
            {"type": "function_call_output", "name": "goal", "namespace": "agent", "output": "ok"},
        ],
        "tools": SEARCH_TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 1.5,
        "top_p": 0.5,
        "max_output_tokens": 500,
        "safety_identifier": "user-1",
    }
    t = _t()
    sent = responses_to_messages(body, t)
    assert sent["system"] == [
        {"type": "text", "text": "system one"},
        {"type": "text", "text": "system two"},
    ]
    user, assistant, result = sent["messages"]
    assert user["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "AAAA",
    }
    assert assistant["content"] == [
        {"type": "tool_use", "id": "c1", "name": "crm__lookup", "input": {"id": 1}}
    ]  # another vendor's reasoning item is left out
    assert result["content"][0] == {"type": "tool_result", "tool_use_id": "c1", "content": "found"}
    assert result["content"][1]["type"] == "text" and "agent__goal" in result["content"][1]["text"]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["temperature"] == 1.0 and "top_p" not in sent
    assert t.dropped == ["top_p"]
    assert sent["tools"][1]["allowed_domains"] == ["example.com"]
    assert sent["metadata"] == {"user_id": "user-1"}
    assert sent["max_tokens"] == 500
    assert "cache_control" not in sent
    cached = responses_to_messages({**body, "prompt_cache_key": "session-1"}, _t())
    assert cached["cache_control"] == {"type": "ephemeral"}  # Anthropic caches when asked


def test_thinking_budget_fits_max_output_tokens() -> None:
    body = {"model": "m", "input": "x", "reasoning": {"effort": "high"}, "temperature": 0.2}
    t = _t()
    out = responses_to_messages({**body, "max_output_tokens": 4000}, t)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 3999}
    assert t.dropped == ["temperature"]
    for why in (
        {**body, "max_output_tokens": 500},  # no room for 1024 thinking tokens
        {**body, "reasoning": {"effort": "galactic"}},  # no such budget
        {**body, "tools": [{"type": "function", "name": "f"}], "tool_choice": "required"},
    ):
        t = _t()
        assert "thinking" not in responses_to_messages(why, t)
        assert "reasoning.effort" in t.dropped
    t = _t("claude-3-5-sonnet-20241022")  # a model without extended thinking
    assert "thinking" not in responses_to_messages(body, t)
    assert "reasoning.effort" in t.dropped
    with pytest.raises(Unsupported) as err:  # and without structured outputs
        responses_to_messages(
            {**body, "text": {"format": {"type": "json_schema", "name": "W", "schema": {}}}}, t
        )
    assert err.value.field == "text.format"


def test_chat_request_shape() -> None:
    body = {
        "model": "m",
        "instructions": "sys",
        "input": [
            {"role": "user", "content": "q"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "let me see"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
        ],
        "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}
        ],
        "text": {
            "format": {
                "type": "json_schema",
                "name": "W",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
        "reasoning": {"effort": "low"},
        "stream": True,
    }
    sent = responses_to_chat(body, _t("gemini-x"))
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]
    assert sent["messages"][2]["content"] == "let me see"
    assert sent["messages"][2]["tool_calls"][0]["id"] == "c1"
    assert sent["response_format"]["json_schema"]["name"] == "W"
    assert sent["reasoning_effort"] == "low"
    assert sent["stream_options"] == {"include_usage": True}
    with pytest.raises(Unsupported) as err:
        responses_to_chat({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, _t())
    assert err.value.field == "tools[0].type" and "chat completions" in err.value.message
