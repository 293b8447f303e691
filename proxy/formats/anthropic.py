"""OpenAI Chat Completions <-> Anthropic Messages, both directions, JSON and streams.

Two uses, one module:
- an OpenAI-SDK client served by an Anthropic deployment (`chat_to_messages`,
  `message_to_chat`, `MessagesToChatStream`);
- an Anthropic-SDK client (`/v1/messages`, Claude Code) served by an OpenAI-shaped
  deployment (`messages_to_chat`, `chat_to_message`, `ChatToMessagesStream`).

Mapping tables follow VENDOR_WIRE_FORMATS.md 4.2 and 5: stop reasons, tool calls as
`tool_use`/`tool_result` blocks (several per turn: parallel calls), `system` as a
top-level field, and usage normalised so that cached prompt tokens are part of OpenAI's
`prompt_tokens` and Anthropic's `input_tokens` is the uncached part only.

No field is lost without a word (`proxy.formats.translation`): each request field is
carried, mapped (`response_format` <-> `output_config.format`, `reasoning_effort` <->
`thinking`, `service_tier`), refused (`Unsupported`: `n`, `logprobs`, `top_k`, server
tools...) or, for a sampling hint with no equivalent, dropped and reported. The README's
"Translation" table lists every field.

Structured output to Anthropic uses `output_config.format` (constrained decoding) where
the model has it and the schema fits its subset of JSON Schema; otherwise (JSON mode, an
older model, a recursive schema) a tool whose input is the answer, forced with
`tool_choice`, whose input comes back as the answer's text (`Translation.answer_tool`).
Thinking text is not returned to OpenAI clients (OpenAI's chat API has no field for it,
and an extra field echoed back would be refused by an OpenAI deployment on failover).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.formats.capabilities import (
    anthropic_structured_outputs,
    anthropic_thinks,
    openai_reasons,
    openai_samples,
)
from proxy.formats.jsonschema import anthropic_expressible, openai_strict, to_anthropic
from proxy.formats.sse import SSEParser, sse_event
from proxy.formats.translation import CHAT_FIELDS, MESSAGES_FIELDS, Kind, Translation, neutral

__all__ = [
    "ANSWER_TOOL",
    "DEFAULT_MAX_TOKENS",
    "ChatToMessagesStream",
    "MessagesToChatStream",
    "chat_to_message",
    "chat_to_messages",
    "message_to_chat",
    "messages_to_chat",
    "openai_usage",
    "tool_input",
]

# Anthropic requires max_tokens; OpenAI clients often leave it out.
DEFAULT_MAX_TOKENS = 4096

# The tool that carries a JSON answer where `output_config.format` cannot.
ANSWER_TOOL = "json_answer"

_ANTHROPIC = "Anthropic's Messages API"
_OPENAI = "OpenAI's Chat Completions API"

FINISH_FROM_STOP: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
STOP_FROM_FINISH: Mapping[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
TOOL_CHOICE_TO_ANTHROPIC: Mapping[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": {"type": "none"},
}
TOOL_CHOICE_TO_OPENAI: Mapping[str, str] = {"auto": "auto", "any": "required", "none": "none"}

# reasoning_effort -> Anthropic thinking budget (tokens; Anthropic's minimum is 1024).
THINKING_BUDGET: Mapping[str, int] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
}
_MIN_THINKING_BUDGET = 1024
# The most output tokens every Anthropic thinking model takes (Claude Opus 4 and 4.1).
_MAX_OUTPUT = 32000
# Anthropic thinking budget -> reasoning_effort: the lowest effort whose bound it is under.
EFFORT_FOR_BUDGET: tuple[tuple[int, str], ...] = ((4096, "low"), (16384, "medium"))
# Anthropic output_config.effort -> reasoning_effort.
EFFORT_FROM_ANTHROPIC: Mapping[str, str] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "high",
}
SERVICE_TIER_TO_ANTHROPIC: Mapping[str, str] = {"auto": "auto", "default": "standard_only"}
SERVICE_TIER_TO_OPENAI: Mapping[str, str] = {"auto": "auto", "standard_only": "default"}
# OpenAI takes at most this many stop sequences.
_OPENAI_MAX_STOP = 4
# The OpenAI `response_format.json_schema.name` for a schema from Anthropic (which names none).
_SCHEMA_NAME = "structured_output"

# Request fields each direction carries or maps; the rest are refused or dropped by kind.
_CHAT_CARRIED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "service_tier",
    }
)
_MESSAGES_CARRIED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "temperature",
        "top_p",
        "stop_sequences",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "output_config",
        "output_format",
        "cache_control",  # automatic prompt caching: OpenAI caches prompts by itself
    }
)


def _service_tier(
    body: Mapping[str, Any],
    out: dict[str, Any],
    tiers: Mapping[str, str],
    vendor: str,
    t: Translation,
) -> None:
    """The request's service tier as the target names it (dropped if it has no such tier)."""
    tier = body.get("service_tier")
    if isinstance(tier, str):
        mapped = tiers.get(tier)
        if mapped is None:
            t.drop("service_tier", f"{vendor} has no {tier!r} service tier", Kind.INFO)
        else:
            out["service_tier"] = mapped


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


# --------------------------------------------------------------------------- usage


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage: cached reads and cache writes are prompt tokens."""
    uncached = _int(usage.get("input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    completion = _int(usage.get("output_tokens"))
    prompt = uncached + written + read
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
    }
    if written:
        out["cache_creation_input_tokens"] = written  # billed differently: kept for accounting
    return out


def anthropic_usage(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """OpenAI usage -> Anthropic usage (`input_tokens` excludes cache reads)."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = _int(usage.get("prompt_tokens"))
    return {
        "input_tokens": max(0, prompt - cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": _int(usage.get("completion_tokens")),
    }


# --------------------------------------------------------------------------- OpenAI -> Anthropic


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:...;base64,...` URL."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return media_type, data
    return None


def _image_block(url: str) -> dict[str, Any]:
    inline = _data_url(url)
    if inline is not None:
        media_type, data = inline
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _document_block(file: Any, i: int, t: Translation) -> dict[str, Any]:
    """An OpenAI `file` part (a PDF as a data URL) -> an Anthropic `document` block."""
    data = file.get("file_data") if isinstance(file, dict) else None
    inline = _data_url(data) if isinstance(data, str) else None
    if inline is None or inline[0] != "application/pdf":
        t.refuse(
            f"messages[{i}].content",
            "a file reaches Anthropic only as a PDF inline (file_data: a base64 data URL), "
            "not as a file_id stored at OpenAI",
        )
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": inline[0], "data": inline[1]},
    }
    if isinstance(file, dict) and isinstance(file.get("filename"), str):
        block["title"] = file["filename"]
    return block


def _content_blocks(content: Any, i: int, t: Translation) -> list[dict[str, Any]]:
    """OpenAI message content (string or parts) of message `i` -> Anthropic content blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "refusal"):  # a refusal part of an earlier answer is its text
            text = part.get(kind)
            if text:
                block: dict[str, Any] = {"type": "text", "text": text}
                if "cache_control" in part:
                    block["cache_control"] = part["cache_control"]
                blocks.append(block)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                blocks.append(_image_block(url))
        elif kind == "file":
            blocks.append(_document_block(part.get("file"), i, t))
        else:
            t.refuse(
                f"messages[{i}].content",
                f"content parts of type {kind!r} have no Anthropic equivalent",
            )
    return blocks


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def tool_input(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Consecutive same-role turns merge (tool results of one assistant turn form one user turn)."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _anthropic_messages(
    body: Mapping[str, Any], t: Translation
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chat `messages` -> Anthropic's (system blocks, messages)."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(body.get("messages") or ()):
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system.extend(_content_blocks(content, i, t))
        elif role in ("tool", "function"):
            result = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id") or m.get("name") or "",
                "content": _text_of(content),
            }
            _append(messages, "user", [result])
        elif role == "assistant":
            blocks = _content_blocks(content, i, t)
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or "",
                        "name": fn.get("name") or "",
                        "input": tool_input(fn.get("arguments")),
                    }
                )
            _append(messages, "assistant", blocks)
        else:
            _append(messages, "user", _content_blocks(content, i, t))
    return system, messages


def _anthropic_tools(body: Mapping[str, Any], t: Translation) -> list[dict[str, Any]]:
    """Function tools -> Anthropic tools; `strict` carried where the model can honour it."""
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            t.refuse(
                "tools", f"tools[{i}] is of type {kind!r}: Anthropic takes function tools only"
            )
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        entry: dict[str, Any] = {"name": fn.get("name", ""), "input_schema": schema}
        if isinstance(fn.get("description"), str):
            entry["description"] = fn["description"]
        if fn.get("strict") is True:
            if anthropic_structured_outputs(t.model) and anthropic_expressible(schema):
                entry["input_schema"] = to_anthropic(schema)
                entry["strict"] = True
            else:
                t.drop(
                    "tools[].strict",
                    f"model {t.model} cannot hold tool arguments to this schema (strict tool use "
                    "needs Claude 4.5 or later and a non-recursive schema)",
                )
        tools.append(entry)
    return tools


def _allowed(choice: Mapping[str, Any], tools: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """`allowed_tools` tool_choice -> (Anthropic choice type, the allowed subset of tools)."""
    spec = choice.get("allowed_tools")
    spec = spec if isinstance(spec, dict) else {}
    names = {
        fn.get("name")
        for entry in spec.get("tools") or ()
        if isinstance(entry, dict) and isinstance(fn := entry.get("function"), dict)
    }
    kind = "any" if spec.get("mode") == "required" else "auto"
    return kind, [tool for tool in tools if tool["name"] in names]


def _tool_choice(
    body: Mapping[str, Any], tools: list[dict[str, Any]], t: Translation
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """OpenAI tool_choice and parallel_tool_calls -> Anthropic's tool_choice (and the tools
    it leaves on offer)."""
    choice = body.get("tool_choice")
    mapped: dict[str, Any] | None = None
    if isinstance(choice, str):
        preset = TOOL_CHOICE_TO_ANTHROPIC.get(choice)
        if preset is None:
            t.refuse("tool_choice", f"the value {choice!r} has no Anthropic equivalent")
        mapped = dict(preset)
    elif isinstance(choice, dict):
        kind = choice.get("type")
        fn = choice.get("function")
        if kind == "function" and isinstance(fn, dict):
            mapped = {"type": "tool", "name": fn.get("name", "")}
        elif kind == "allowed_tools":
            allowed, tools = _allowed(choice, tools)
            mapped = {"type": allowed}
        else:
            t.refuse("tool_choice", f"a tool_choice of type {kind!r} has no Anthropic equivalent")
    if body.get("parallel_tool_calls") is False and tools:
        mapped = mapped or {"type": "auto"}
        mapped["disable_parallel_tool_use"] = True
    return mapped, tools


def _answer_tool(out: dict[str, Any], schema: Mapping[str, Any], t: Translation) -> None:
    """Carry a JSON answer in a forced tool call (JSON mode, or a schema Anthropic's
    structured outputs cannot take): the call's input is the answer."""
    if schema.get("type") != "object":
        t.refuse("response_format", "Anthropic can hold an answer only to an object schema")
    tools: list[dict[str, Any]] = out.setdefault("tools", [])
    if any(tool["name"] == ANSWER_TOOL for tool in tools):
        t.refuse("response_format", f"a tool named {ANSWER_TOOL!r} would carry the JSON answer")
    choice = out.get("tool_choice") or {"type": "auto"}
    if choice["type"] in ("any", "tool"):
        return  # the client forces a tool call of its own: the answer is that call
    tools.append(
        {
            "name": ANSWER_TOOL,
            "description": "Give your final answer to the user as this tool's input.",
            "input_schema": dict(schema),
        }
    )
    forced: dict[str, Any] = (
        {"type": "any"}
        if choice["type"] == "auto" and len(tools) > 1
        else {"type": "tool", "name": ANSWER_TOOL}
    )
    if choice.get("disable_parallel_tool_use"):
        forced["disable_parallel_tool_use"] = True
    out["tool_choice"] = forced
    t.answer_tool = ANSWER_TOOL


def _structured_output(body: Mapping[str, Any], out: dict[str, Any], t: Translation) -> None:
    """response_format -> `output_config.format`, or a forced answer tool where that cannot be."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return
    if kind == "json_object":
        _answer_tool(out, {"type": "object"}, t)
        return
    spec = fmt.get("json_schema") if kind == "json_schema" and isinstance(fmt, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        t.refuse(
            "response_format", f"a response_format of type {kind!r} has no Anthropic equivalent"
        )
    if anthropic_structured_outputs(t.model) and anthropic_expressible(schema):
        out["output_config"] = {"format": {"type": "json_schema", "schema": to_anthropic(schema)}}
    else:
        _answer_tool(out, schema, t)


def _answers_tool_results(messages: list[dict[str, Any]]) -> bool:
    """True if the request answers tool results (the model is mid tool loop)."""
    last = messages[-1] if messages else None
    return (
        last is not None
        and last["role"] == "user"
        and any(block.get("type") == "tool_result" for block in last["content"])
    )


def _thinking(body: Mapping[str, Any], out: dict[str, Any], t: Translation) -> None:
    """reasoning_effort -> an Anthropic thinking budget, where Anthropic can think."""
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return
    budget = THINKING_BUDGET.get(effort) if isinstance(effort, str) else None
    client_max = body.get("max_completion_tokens") or body.get("max_tokens")
    if budget is not None:
        # The answer needs room too; without the client's own limit, the total stays within
        # what every thinking model can write (32k: Claude Opus 4 and 4.1).
        room = out["max_tokens"] // 2 if client_max else _MAX_OUTPUT - DEFAULT_MAX_TOKENS
        budget = min(budget, room)
    reason = None
    if budget is None:
        reason = f"the value {effort!r} has no Anthropic thinking budget"
    elif not anthropic_thinks(t.model):
        reason = f"model {t.model} has no extended thinking"
    elif (out.get("tool_choice") or {}).get("type") in ("any", "tool"):
        reason = "Anthropic cannot think while a tool call is forced (tool_choice or a JSON answer)"
    elif _answers_tool_results(out["messages"]):
        reason = (
            "Anthropic thinks after tool results only with the thinking blocks of the turn "
            "that called the tools, which the chat format does not carry"
        )
    elif budget < _MIN_THINKING_BUDGET:
        reason = f"max_tokens leaves no room for Anthropic's {_MIN_THINKING_BUDGET}-token thinking minimum"
    if reason is not None:
        t.drop("reasoning_effort", reason)
        return
    assert budget is not None
    if not client_max:
        out["max_tokens"] = DEFAULT_MAX_TOKENS + budget
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _sampling(body: Mapping[str, Any], out: dict[str, Any], t: Translation) -> None:
    """temperature (OpenAI's 0..2 clamped to Anthropic's 0..1) and top_p, within what
    Anthropic takes: not both at once on its current models, neither while thinking."""
    thinking = "thinking" in out
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        if thinking and temperature != 1:
            t.drop("temperature", "Anthropic takes no temperature but 1 while thinking")
        else:
            out["temperature"] = min(float(temperature), 1.0)
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and not neutral(CHAT_FIELDS["top_p"], top_p):
        if thinking and top_p < 0.95:
            t.drop("top_p", "Anthropic takes top_p below 0.95 only without thinking")
        elif "temperature" in out:
            t.drop("top_p", "Anthropic's current models take temperature or top_p, not both")
        else:
            out["top_p"] = top_p


def chat_to_messages(body: Mapping[str, Any], t: Translation) -> dict[str, Any]:
    """An OpenAI chat request -> an Anthropic Messages request for `t.model`.

    Raises `Unsupported` for a field that changes the answer and has no equivalent; a hint
    with none is dropped and noted in `t.dropped`."""
    t.screen(body, _CHAT_CARRIED, CHAT_FIELDS, _ANTHROPIC)
    system, messages = _anthropic_messages(body, t)
    out: dict[str, Any] = {
        "model": t.model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = system
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream") is True:
        out["stream"] = True
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str):
        out["metadata"] = {"user_id": user}
    tools = _anthropic_tools(body, t)
    choice, tools = _tool_choice(body, tools, t)
    if tools:
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice
    _structured_output(body, out, t)
    _thinking(body, out, t)
    _sampling(body, out, t)
    _service_tier(body, out, SERVICE_TIER_TO_ANTHROPIC, "Anthropic", t)
    return out


def _chat_choice(message: dict[str, Any], stop: str | None, tool_calls: bool) -> dict[str, Any]:
    finish = FINISH_FROM_STOP.get(stop, "stop") if stop else "stop"
    if finish == "tool_calls" and not tool_calls:
        finish = "stop"  # the only tool called was the one carrying the JSON answer
    return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}


def message_to_chat(msg: Mapping[str, Any], t: Translation) -> dict[str, Any]:
    """An Anthropic Messages response -> an OpenAI chat completion."""
    text: list[str] = []
    answer: str | None = None
    tool_calls: list[dict[str, Any]] = []
    for block in msg.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use" and t.answer_tool and block.get("name") == t.answer_tool:
            answer = _json_text(block.get("input") or {})
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": _json_text(block.get("input") or {}),
                    },
                }
            )
    # With a JSON answer, the answer is the content (any words around it would break it).
    content = answer if answer is not None else "".join(text)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": msg.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model", ""),
        "choices": [_chat_choice(message, msg.get("stop_reason"), bool(tool_calls))],
        "usage": openai_usage(msg.get("usage") or {}),
    }


class MessagesToChatStream:
    """Anthropic SSE events -> OpenAI chat chunks (`data: ...`, then `data: [DONE]`).

    Each `tool_use` block becomes the next entry of `tool_calls` (several in one answer:
    parallel calls), announced with its id and name, then its argument pieces. The answer
    tool's input pieces (`Translation.answer_tool`) are the answer's content. Thinking
    blocks are not relayed. The usage chunk (`choices: []`) is emitted only if the client
    asked for it with `stream_options.include_usage`. Error events are not translated: the
    vendor adapter below already turns them into a failed attempt.
    """

    __slots__ = (
        "_answer",
        "_answer_tool",
        "_created",
        "_head",
        "_include_usage",
        "_parser",
        "_tools",
        "_usage",
        "done",
    )

    def __init__(self, request: Mapping[str, Any], t: Translation) -> None:
        options = request.get("stream_options")
        self._include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self._answer_tool = t.answer_tool
        self._parser = SSEParser()
        self._created = int(time.time())
        self._head: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "model": ""}
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._answer: int | None = None  # the block index of the answer tool's call
        self._usage: dict[str, Any] = {}
        self.done = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_event(None, orjson.dumps({**self._head, "choices": [choice]}))

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for name, data in self._parser.feed(chunk):
            if name in (b"ping", b"error") or not data.startswith(b"{"):
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            kind = event.get("type")
            if kind == "message_start":
                message = event.get("message") or {}
                self._head = {
                    "id": message.get("id", ""),
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": message.get("model", ""),
                }
                self._usage.update(message.get("usage") or {})
                out.append(self._chunk({"role": "assistant", "content": ""}))
            elif kind == "content_block_start":
                self._block_start(event, out)
            elif kind == "content_block_delta":
                self._block_delta(event, out)
            elif kind == "message_delta":
                self._usage.update(
                    {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
                )
                stop = (event.get("delta") or {}).get("stop_reason")
                finish = FINISH_FROM_STOP.get(stop, "stop") if stop else "stop"
                if finish == "tool_calls" and not self._tools:
                    finish = "stop"
                out.append(self._chunk({}, finish))
            elif kind == "message_stop":
                if self._include_usage:
                    payload = {**self._head, "choices": [], "usage": openai_usage(self._usage)}
                    out.append(sse_event(None, orjson.dumps(payload)))
                out.append(b"data: [DONE]\n\n")
                self.done = True
        return b"".join(out)

    def _block_start(self, event: Mapping[str, Any], out: list[bytes]) -> None:
        block = event.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use" and self._answer_tool and block.get("name") == self._answer_tool:
            self._answer = event.get("index", 0)
        elif kind == "tool_use":
            index = self._tools.setdefault(event.get("index", 0), len(self._tools))
            call = {
                "index": index,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            out.append(self._chunk({"tool_calls": [call]}))
        elif kind == "text" and block.get("text"):
            out.append(self._chunk({"content": block["text"]}))

    def _block_delta(self, event: Mapping[str, Any], out: list[bytes]) -> None:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        block = event.get("index", 0)
        if kind == "text_delta" and self._answer is None:
            out.append(self._chunk({"content": delta.get("text", "")}))
        elif kind == "input_json_delta" and block == self._answer:
            out.append(self._chunk({"content": delta.get("partial_json", "")}))
        elif kind == "input_json_delta" and block in self._tools:
            fragment = {
                "index": self._tools[block],
                "function": {"arguments": delta.get("partial_json", "")},
            }
            out.append(self._chunk({"tool_calls": [fragment]}))


# --------------------------------------------------------------------------- Anthropic -> OpenAI


def _image_url(source: Mapping[str, Any]) -> str | None:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    url = source.get("url")
    return url if isinstance(url, str) else None


def _block_text(content: Any) -> str:
    """A system prompt's or tool_result's content (string or text blocks) as plain text."""
    if isinstance(content, str):
        return content
    return "".join(
        b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text"
    )


def _image_part(block: Mapping[str, Any]) -> dict[str, Any] | None:
    url = _image_url(block.get("source") or {})
    return {"type": "image_url", "image_url": {"url": url}} if url else None


def _file_part(block: Mapping[str, Any], i: int, t: Translation) -> dict[str, Any]:
    """An Anthropic `document` block -> an OpenAI `file` part (PDF) or text."""
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64" and source.get("media_type") == "application/pdf":
        title = block.get("title")
        return {
            "type": "file",
            "file": {
                "filename": title if isinstance(title, str) and title else "document.pdf",
                "file_data": f"data:application/pdf;base64,{source.get('data', '')}",
            },
        }
    if kind == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    if kind == "content":
        return {"type": "text", "text": _block_text(source.get("content"))}
    t.refuse(
        f"messages[{i}].content",
        f"a document from a {kind!r} source reaches OpenAI only as inline PDF or text",
    )


def _tool_result(block: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """A tool_result's text, and its images (OpenAI tool messages hold text only: the
    images follow in a user message)."""
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and item.get("type") == "image":
                part = _image_part(item)
                if part is not None:
                    images.append(part)
    text = _block_text(content)
    return (f"Error: {text}" if block.get("is_error") else text), images


def _chat_messages(body: Mapping[str, Any], t: Translation) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _block_text(system)})
    for i, m in enumerate(body.get("messages") or ()):
        role = m.get("role")
        content = m.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        tool_calls: list[dict[str, Any]] = []
        for block in content or ():
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image":
                part = _image_part(block)
                if part is not None:
                    parts.append(part)
            elif kind == "document":
                parts.append(_file_part(block, i, t))
            elif kind == "tool_use":
                tool_calls.append(
                    {
                        "id": block.get("id", ""),
                        "type": "function",
                        "function": {
                            "name": block.get("name", ""),
                            "arguments": _json_text(block.get("input") or {}),
                        },
                    }
                )
            elif kind == "tool_result":
                text, images = _tool_result(block)
                messages.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}
                )
                parts.extend(images)
            elif kind not in ("thinking", "redacted_thinking"):  # earlier reasoning stays behind
                t.refuse(
                    f"messages[{i}].content",
                    f"content blocks of type {kind!r} have no OpenAI chat equivalent",
                )
        if role == "assistant":
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            msg: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                msg["tool_calls"] = tool_calls
            if text or tool_calls:
                messages.append(msg)
        elif parts:
            only_text = all(p["type"] == "text" for p in parts)
            value: Any = "".join(p["text"] for p in parts) if only_text else parts
            messages.append({"role": role, "content": value})
    return messages


def _chat_tools(body: Mapping[str, Any], t: Translation) -> list[dict[str, Any]]:
    """Anthropic client tools -> function tools; server tools (web search, code execution,
    computer use...) are Anthropic's own and are refused."""
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict):
            continue
        schema = tool.get("input_schema")
        if tool.get("type") not in (None, "custom") or not isinstance(schema, dict):
            label = tool.get("type") or tool.get("name")
            t.refuse("tools", f"tools[{i}] ({label!r}) is a tool Anthropic runs itself")
        fn: dict[str, Any] = {"name": tool.get("name", ""), "parameters": schema}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        if tool.get("strict") is True:
            if openai_strict(schema):
                fn["strict"] = True
            else:
                t.drop(
                    "tools[].strict",
                    "OpenAI's strict mode needs every object closed and all its properties required",
                )
        tools.append({"type": "function", "function": fn})
    return tools


def _chat_tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
    elif isinstance(kind, str) and kind in TOOL_CHOICE_TO_OPENAI:
        out["tool_choice"] = TOOL_CHOICE_TO_OPENAI[kind]
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _effort_for_budget(budget: Any) -> str:
    for bound, effort in EFFORT_FOR_BUDGET:
        if isinstance(budget, int) and budget < bound:
            return effort
    return "high"


def _reasoning(
    body: Mapping[str, Any], config: Mapping[str, Any], out: dict[str, Any], t: Translation
) -> None:
    """thinking (and output_config.effort) -> reasoning_effort, on models that reason."""
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    effort = config.get("effort")
    asked = [
        name
        for name, present in (
            ("thinking", kind in ("enabled", "adaptive")),
            ("output_config.effort", effort is not None),
        )
        if present
    ]
    if not asked:
        return
    if not openai_reasons(t.model):
        for name in asked:
            t.drop(name, f"model {t.model} takes no reasoning_effort")
        return
    if isinstance(effort, str) and effort in EFFORT_FROM_ANTHROPIC:
        out["reasoning_effort"] = EFFORT_FROM_ANTHROPIC[effort]
    elif effort is not None:
        t.drop("output_config.effort", f"the value {effort!r} has no reasoning_effort equivalent")
    elif kind == "enabled":
        out["reasoning_effort"] = _effort_for_budget(thinking.get("budget_tokens"))  # type: ignore[union-attr]
    # adaptive without an effort: the reasoning model picks its own effort, as Claude would


def _response_format(
    body: Mapping[str, Any], config: Mapping[str, Any], out: dict[str, Any], t: Translation
) -> None:
    """output_config.format (or the beta's output_format) -> response_format json_schema,
    strict where OpenAI's strict mode takes the schema."""
    fmt = config.get("format")
    name = "output_config.format"
    if fmt is None:
        fmt, name = body.get("output_format"), "output_format"
    if fmt is None:
        return
    schema = (
        fmt.get("schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None
    )
    if not isinstance(schema, dict):
        t.refuse(name, "OpenAI takes a json_schema format only")
    out["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": _SCHEMA_NAME, "schema": schema, "strict": openai_strict(schema)},
    }


def messages_to_chat(body: Mapping[str, Any], t: Translation) -> dict[str, Any]:
    """An Anthropic Messages request -> an OpenAI chat request for `t.model`.

    Raises `Unsupported` for a field that changes the answer and has no equivalent; a hint
    with none is dropped and noted in `t.dropped`."""
    t.screen(body, _MESSAGES_CARRIED, MESSAGES_FIELDS, _OPENAI)
    out: dict[str, Any] = {
        "model": t.model,
        "messages": _chat_messages(body, t),
        "max_completion_tokens": body.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    samples = openai_samples(t.model)
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None or (value == 1 and not samples):
            continue
        if samples:
            out[name] = value
        else:
            t.drop(name, f"model {t.model} takes no {name} but 1")
    stop = body.get("stop_sequences")
    if stop:
        if len(stop) > _OPENAI_MAX_STOP:
            t.refuse("stop_sequences", f"OpenAI takes at most {_OPENAI_MAX_STOP} stop sequences")
        out["stop"] = stop
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = _chat_tools(body, t)
    if tools:
        out["tools"] = tools
        _chat_tool_choice(body.get("tool_choice"), out)
    config = body.get("output_config")
    config = config if isinstance(config, dict) else {}
    for key in config:
        if key not in ("format", "effort") and config[key] is not None:
            t.drop(f"output_config.{key}", f"{_OPENAI} has no equivalent")
    _response_format(body, config, out, t)
    _reasoning(body, config, out, t)
    _service_tier(body, out, SERVICE_TIER_TO_OPENAI, "OpenAI", t)
    return out


def _message_id(openai_id: Any) -> str:
    text = openai_id if isinstance(openai_id, str) and openai_id else "proxy"
    return text if text.startswith("msg_") else f"msg_{text}"


def chat_to_message(resp: Mapping[str, Any], t: Translation) -> dict[str, Any]:
    """An OpenAI chat completion -> an Anthropic Messages response (its first choice: the
    request asked for one)."""
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": fn.get("name", ""),
                "input": tool_input(fn.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    stop = STOP_FROM_FINISH.get(finish, "end_turn") if finish else "end_turn"
    return {
        "id": _message_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": resp.get("model", ""),
        "content": content,
        "stop_reason": "refusal" if refusal else stop,
        "stop_sequence": None,
        "usage": anthropic_usage(resp.get("usage")),
    }


class ChatToMessagesStream:
    """OpenAI chat chunks -> the Anthropic event sequence, `message_start` ... `message_stop`.

    Text and each tool call become content blocks in order (several tool calls: several
    `tool_use` blocks, parallel calls); a block is closed when the next one starts. Argument
    pieces go to their call's block by its OpenAI index, so none is lost should a server
    interleave two calls. A refusal is text with `stop_reason: "refusal"`. The final
    `message_delta` carries the usage of OpenAI's usage chunk (the bridge asks for it with
    `stream_options.include_usage`), so it is emitted at `[DONE]`, not at `finish_reason`.
    """

    __slots__ = ("_block", "_index", "_parser", "_started", "_stop", "_tools", "_usage", "done")

    def __init__(self, request: Mapping[str, Any], t: Translation) -> None:
        self._parser = SSEParser()
        self._started = False
        self._block: str | None = None  # "text" or "tool:<openai index>" of the open block
        self._index = -1
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index
        self._stop = "end_turn"
        self._usage: Mapping[str, Any] | None = None
        self.done = False

    @staticmethod
    def _event(kind: str, payload: dict[str, Any]) -> bytes:
        return sse_event(kind, orjson.dumps({"type": kind, **payload}))

    def _open(self, key: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._index += 1
        self._block = key
        out.append(
            self._event("content_block_start", {"index": self._index, "content_block": block})
        )

    def _close(self, out: list[bytes]) -> None:
        if self._block is not None:
            out.append(self._event("content_block_stop", {"index": self._index}))
            self._block = None

    def _start(self, chunk: Mapping[str, Any], out: list[bytes]) -> None:
        self._started = True
        message = {
            "id": _message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out.append(self._event("message_start", {"message": message}))

    def _finish(self, out: list[bytes]) -> None:
        self._close(out)
        usage = anthropic_usage(self._usage)
        out.append(
            self._event(
                "message_delta",
                {"delta": {"stop_reason": self._stop, "stop_sequence": None}, "usage": usage},
            )
        )
        out.append(self._event("message_stop", {}))
        self.done = True

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for _, data in self._parser.feed(chunk):
            if data == b"[DONE]":
                if not self._started:
                    self._start({}, out)
                self._finish(out)
                continue
            if not data.startswith(b"{"):
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict) or "error" in event:
                continue
            if not self._started:
                self._start(event, out)
            if event.get("usage"):
                self._usage = event["usage"]
            for choice in event.get("choices") or ():
                if choice.get("index", 0) == 0:
                    self._choice(choice, out)
        return b"".join(out)

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._block != "text":
            self._open("text", {"type": "text", "text": ""}, out)
        out.append(
            self._event(
                "content_block_delta",
                {"index": self._index, "delta": {"type": "text_delta", "text": text}},
            )
        )

    def _choice(self, choice: Mapping[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._text(text, out)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._text(refusal, out)
            self._stop = "refusal"
        for call in delta.get("tool_calls") or ():
            index = call.get("index", 0)
            fn = call.get("function") or {}
            if index not in self._tools:
                block = {
                    "type": "tool_use",
                    "id": call.get("id", ""),
                    "name": fn.get("name", ""),
                    "input": {},
                }
                self._open(f"tool:{index}", block, out)
                self._tools[index] = self._index
            args = fn.get("arguments")
            if args:
                out.append(
                    self._event(
                        "content_block_delta",
                        {
                            "index": self._tools[index],
                            "delta": {"type": "input_json_delta", "partial_json": args},
                        },
                    )
                )
        finish = choice.get("finish_reason")
        if finish and self._stop != "refusal":
            self._stop = STOP_FROM_FINISH.get(finish, "end_turn")
