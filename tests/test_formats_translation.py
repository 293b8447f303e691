"""The translation functions themselves (pure code, no sockets): JSON schemas for each
vendor's structured outputs, and the corners of chat <-> messages the SDK tests do not
reach (documents, tool-result images, thinking conflicts, interleaved stream deltas)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.errors import Unsupported
from proxy.formats.anthropic import (
    ChatToMessagesStream,
    MessagesToChatStream,
    chat_to_message,
    chat_to_messages,
    message_to_chat,
    messages_to_chat,
)
from proxy.formats.jsonschema import anthropic_expressible, openai_strict, to_anthropic
from proxy.formats.sse import SSEParser
from proxy.formats.translation import Translation

USER: list[Any] = [{"role": "user", "content": "hi"}]


def _t(model: str = "claude-sonnet-4-5", strict: bool = False) -> Translation:
    return Translation("v", model, strict)


# --------------------------------------------------------------------------- JSON schemas


def test_to_anthropic_keeps_what_anthropic_enforces_and_describes_the_rest() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[a-z]+$"},
                "minItems": 2,
            },
            "when": {"type": "string", "format": "date-time"},
            "kind": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
            "color": {"enum": ["red", "green"], "description": "a color"},
            "nullable": {"type": ["string", "null"], "maxLength": 5},
            "shape": {"$ref": "#/definitions/Shape"},
        },
        "required": ["tags"],
        "additionalProperties": True,
        "definitions": {"Shape": {"type": "object", "properties": {"sides": {"type": "integer"}}}},
    }
    out = to_anthropic(schema)
    props = out["properties"]
    assert out["additionalProperties"] is False and out["required"] == ["tags"]
    assert props["tags"]["description"] == "{minItems: 2}"
    assert props["tags"]["items"] == {"type": "string", "description": "{pattern: ^[a-z]+$}"}
    assert props["when"] == {"type": "string", "format": "date-time"}
    assert props["kind"]["anyOf"][0] == {"type": "integer", "description": "{minimum: 0}"}
    assert props["color"] == {"description": "a color", "enum": ["red", "green"]}
    assert props["nullable"] == {"type": ["string", "null"], "description": "{maxLength: 5}"}
    assert props["shape"] == {"$ref": "#/definitions/Shape"}
    assert out["definitions"]["Shape"]["additionalProperties"] is False


def test_recursive_and_external_schemas_are_not_expressible() -> None:
    tree = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            }
        },
    }
    assert not anthropic_expressible(tree)
    assert not anthropic_expressible({"type": "object", "properties": {"x": {"$ref": "#"}}})
    assert not anthropic_expressible({"$ref": "https://example.com/s.json"})
    chain = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A"}},
        "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"type": "string"}},
    }
    assert anthropic_expressible(chain)


def test_openai_strict_needs_closed_objects_with_every_property_required() -> None:
    closed = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    assert openai_strict(closed)
    assert not openai_strict({**closed, "required": ["a"]})
    assert not openai_strict({**closed, "additionalProperties": True})
    nested = {
        **closed,
        "properties": {**closed["properties"], "c": {"type": "object", "properties": {}}},
    }
    nested["required"] = ["a", "b", "c"]
    assert not openai_strict(nested)  # the inner object is not closed
    assert not openai_strict(
        {"type": "array", "items": {"type": "string"}}
    )  # root must be an object


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_KEYS = st.sampled_from(
    [
        "type",
        "properties",
        "items",
        "anyOf",
        "oneOf",
        "allOf",
        "enum",
        "const",
        "required",
        "minimum",
        "pattern",
        "format",
        "minItems",
        "$ref",
        "$defs",
        "description",
        "additionalProperties",
    ]
)
_TYPES = st.sampled_from(["object", "array", "string", "integer", "number", "boolean", "null"])
_SCHEMAS = st.recursive(
    st.fixed_dictionaries({"type": _TYPES}),
    lambda inner: (
        st.dictionaries(_KEYS, inner | _JSON_VALUES | st.lists(inner, max_size=3), max_size=5)
        | st.fixed_dictionaries(
            {
                "type": st.just("object"),
                "properties": st.dictionaries(st.text(max_size=4), inner, max_size=3),
            }
        )
    ),
    max_leaves=15,
)
_ALLOWED = {
    "type",
    "properties",
    "items",
    "anyOf",
    "allOf",
    "enum",
    "const",
    "required",
    "format",
    "minItems",
    "$ref",
    "$defs",
    "definitions",
    "description",
    "title",
    "additionalProperties",
}


def _every_schema(schema: Any) -> list[dict[str, Any]]:
    if not isinstance(schema, dict):
        return []
    found = [schema]
    for key in ("items",):
        found += _every_schema(schema.get(key))
    for key in ("anyOf", "allOf"):
        for sub in schema.get(key) or ():
            found += _every_schema(sub)
    for key in ("properties", "$defs", "definitions"):
        for sub in (schema.get(key) or {}).values():
            found += _every_schema(sub)
    return found


@settings(max_examples=300, deadline=None)
@given(_SCHEMAS)
def test_to_anthropic_output_uses_only_what_anthropic_accepts(schema: dict[str, Any]) -> None:
    for sub in _every_schema(to_anthropic(schema)):
        assert set(sub) <= _ALLOWED, sub
        if "properties" in sub:
            assert sub["additionalProperties"] is False
        assert sub.get("minItems", 0) in (0, 1)


# --------------------------------------------------------------------------- OpenAI -> Anthropic


def test_a_recursive_schema_goes_as_a_forced_answer_tool() -> None:
    schema = {
        "type": "object",
        "properties": {"next": {"$ref": "#"}},
        "additionalProperties": False,
    }
    body = {
        "model": "m",
        "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        "reasoning_effort": "low",
    }
    t = _t()
    out = chat_to_messages(body, t)
    assert "output_config" not in out
    assert out["tools"][0]["input_schema"] == schema
    assert out["tool_choice"] == {"type": "tool", "name": "json_answer"}
    assert "thinking" not in out and t.dropped == ["reasoning_effort"]
    answer = {
        "content": [
            {"type": "tool_use", "id": "t", "name": "json_answer", "input": {"next": None}}
        ],
        "stop_reason": "tool_use",
    }
    choice = message_to_chat(answer, t)["choices"][0]
    assert orjson.loads(choice["message"]["content"]) == {"next": None}
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]


def test_json_mode_beside_client_tools_lets_the_model_choose() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    out = chat_to_messages(
        {"messages": USER, "tools": [tool], "response_format": {"type": "json_object"}}, _t()
    )
    assert [x["name"] for x in out["tools"]] == ["f", "json_answer"]
    assert out["tool_choice"] == {"type": "any"}
    forced = chat_to_messages(
        {
            "messages": USER,
            "tools": [tool],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
        },
        _t(),
    )
    assert [x["name"] for x in forced["tools"]] == ["f"]  # the answer is the client's tool call


def test_thinking_is_left_out_mid_tool_loop_and_when_max_tokens_is_too_small() -> None:
    loop = [
        *USER,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "42"},
    ]
    t = _t()
    assert "thinking" not in chat_to_messages({"messages": loop, "reasoning_effort": "high"}, t)
    assert t.dropped == ["reasoning_effort"]
    t = _t()
    small = chat_to_messages({"messages": USER, "reasoning_effort": "high", "max_tokens": 1500}, t)
    assert "thinking" not in small and t.dropped == ["reasoning_effort"]
    t = _t()
    fits = chat_to_messages({"messages": USER, "reasoning_effort": "high", "max_tokens": 10000}, t)
    assert (
        fits["thinking"] == {"type": "enabled", "budget_tokens": 5000}
        and fits["max_tokens"] == 10000
    )
    with pytest.raises(Unsupported) as refused:
        chat_to_messages(
            {"messages": USER, "reasoning_effort": "high"},
            _t("claude-3-5-haiku-latest", strict=True),
        )
    assert refused.value.field == "reasoning_effort" and "strict_params" in refused.value.message


def test_temperature_and_top_p_together_keep_temperature() -> None:
    t = _t()
    out = chat_to_messages({"messages": USER, "temperature": 1.6, "top_p": 0.5}, t)
    assert out["temperature"] == 1.0 and "top_p" not in out and t.dropped == ["top_p"]
    t = _t()
    assert (
        chat_to_messages({"messages": USER, "top_p": 1}, t).get("top_p") is None and not t.dropped
    )


def test_files_images_and_unknown_parts() -> None:
    pdf = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,QUJD"},
    }
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    out = chat_to_messages({"messages": [{"role": "user", "content": [pdf, image]}]}, _t())
    document, picture = out["messages"][0]["content"]
    assert document == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "QUJD"},
        "title": "a.pdf",
    }
    assert picture["source"] == {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    for part in (
        {"type": "file", "file": {"file_id": "file-1"}},
        {"type": "input_audio", "input_audio": {}},
    ):
        with pytest.raises(Unsupported) as refused:
            chat_to_messages({"messages": [{"role": "user", "content": [part]}]}, _t())
        assert refused.value.field == "messages[0].content"


def test_allowed_tools_narrow_the_offer() -> None:
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in "abc"
    ]
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "required",
            "tools": [{"type": "function", "function": {"name": "b"}}],
        },
    }
    out = chat_to_messages({"messages": USER, "tools": tools, "tool_choice": choice}, _t())
    assert [x["name"] for x in out["tools"]] == ["b"] and out["tool_choice"] == {"type": "any"}


def test_strict_tools_are_strict_on_models_that_can_be() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 1}},
                "required": ["n"],
                "additionalProperties": False,
            },
        },
    }
    new = chat_to_messages({"messages": USER, "tools": [tool]}, _t())["tools"][0]
    assert (
        new["strict"] is True
        and new["input_schema"]["properties"]["n"]["description"] == "{minimum: 1}"
    )
    t = _t("claude-3-7-sonnet-latest")
    old = chat_to_messages({"messages": USER, "tools": [tool]}, t)["tools"][0]
    assert "strict" not in old and t.dropped == ["tools[].strict"]


def _events(data: bytes) -> list[tuple[str, Any]]:
    return [(name.decode(), orjson.loads(body)) for name, body in SSEParser().feed(data)]


def test_the_answer_tool_streams_as_content_and_thinking_stays_behind() -> None:
    t = _t()
    t.answer_tool = "json_answer"
    translator = MessagesToChatStream({}, t)
    raw = b"".join(
        f"event: {kind}\ndata: {orjson.dumps({'type': kind, **payload}).decode()}\n\n".encode()
        for kind, payload in (
            ("message_start", {"message": {"id": "m", "model": "c", "usage": {"input_tokens": 3}}}),
            (
                "content_block_start",
                {"index": 0, "content_block": {"type": "thinking", "thinking": ""}},
            ),
            (
                "content_block_delta",
                {"index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
            ),
            (
                "content_block_start",
                {
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "t",
                        "name": "json_answer",
                        "input": {},
                    },
                },
            ),
            (
                "content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"a": '}},
            ),
            (
                "content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}},
            ),
            (
                "message_delta",
                {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}},
            ),
            ("message_stop", {}),
        )
    )
    chunks = [orjson.loads(b) for _, b in SSEParser().feed(translator.feed(raw)) if b != b"[DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == '{"a": 1}'
    assert not any("tool_calls" in d or "reasoning_content" in d for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# --------------------------------------------------------------------------- Anthropic -> OpenAI


def test_documents_tool_result_images_and_thinking_history() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "QUJD",
                        },
                    },
                    {"type": "text", "text": "read this"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "...", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "shot", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {"type": "text", "text": "a screenshot"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "AAAA",
                                },
                            },
                        ],
                    },
                ],
            },
        ],
        "max_tokens": 10,
    }
    messages = messages_to_chat(body, _t("gpt-4o"))["messages"]
    assert messages[0]["content"][0] == {
        "type": "file",
        "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,QUJD"},
    }
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}
        ],
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "t1", "content": "a screenshot"}
    assert messages[3] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
    }
    with pytest.raises(Unsupported) as refused:
        messages_to_chat(
            {"messages": [{"role": "user", "content": [{"type": "search_result", "source": "x"}]}]},
            _t("gpt-4o"),
        )
    assert refused.value.field == "messages[0].content"


@pytest.mark.parametrize(
    ("thinking", "config", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 2000}, {}, "low"),
        ({"type": "enabled", "budget_tokens": 30000}, {}, "high"),
        ({"type": "adaptive"}, {"effort": "max"}, "high"),
        ({"type": "adaptive"}, {}, None),
    ],
)
def test_thinking_and_effort_to_reasoning_effort(
    thinking: Any, config: Any, effort: str | None
) -> None:
    t = _t("o4-mini")
    body = {"messages": USER, "max_tokens": 40000, "thinking": thinking, "output_config": config}
    assert messages_to_chat(body, t).get("reasoning_effort") == effort
    assert not t.dropped


def test_unknown_fields_are_dropped_by_name_and_cache_control_needs_nothing() -> None:
    t = _t("gpt-4o")
    messages_to_chat(
        {
            "messages": USER,
            "max_tokens": 5,
            "speed": "fast",
            "cache_control": {"type": "ephemeral"},
        },
        t,
    )
    assert t.dropped == ["speed"]


def test_refusals_map_both_ways() -> None:
    refused = {
        "choices": [{"message": {"content": None, "refusal": "I can't"}, "finish_reason": "stop"}]
    }
    message = chat_to_message(refused, _t("gpt-4o"))
    assert message["stop_reason"] == "refusal" and message["content"][0]["text"] == "I can't"
    translator = ChatToMessagesStream({}, _t("gpt-4o"))
    out = translator.feed(
        b'data: {"id":"c","choices":[{"index":0,"delta":{"refusal":"no"}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    events = _events(out)
    assert events[-2][1]["delta"]["stop_reason"] == "refusal"


def test_interleaved_tool_call_deltas_reach_their_own_blocks() -> None:
    def chunk(calls: list[Any]) -> bytes:
        return (
            b"data: "
            + orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": calls}}]})
            + b"\n\n"
        )

    translator = ChatToMessagesStream({}, _t("gpt-4o"))
    out = translator.feed(
        chunk([{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}])
        + chunk([{"index": 1, "id": "b", "function": {"name": "g", "arguments": '{"y"'}}])
        + chunk([{"index": 0, "function": {"arguments": '{"x": 1}'}}])
        + chunk([{"index": 1, "function": {"arguments": ": 2}"}}])
        + b"data: [DONE]\n\n"
    )
    args: dict[int, str] = {}
    for name, event in _events(out):
        if name == "content_block_delta":
            args[event["index"]] = args.get(event["index"], "") + event["delta"]["partial_json"]
    assert {i: orjson.loads(a) for i, a in args.items()} == {0: {"x": 1}, 1: {"y": 2}}
