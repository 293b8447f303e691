"""OpenAI Chat Completions <-> Anthropic Messages, both directions, JSON and streams.

Two uses, one module:
- an OpenAI-SDK client served by an Anthropic deployment (`chat_to_messages`,
  `message_to_chat`, `MessagesToChatStream`);
- an Anthropic-SDK client (`/v1/messages`, Claude Code) served by an OpenAI-shaped
  deployment (`messages_to_chat`, `chat_to_message`, `ChatToMessagesStream`).

Mapping tables follow VENDOR_WIRE_FORMATS.md 4.2 and 5: stop reasons, tool calls as
`tool_use`/`tool_result` blocks, `system` as a top-level field, and usage normalised so
that cached prompt tokens are part of OpenAI's `prompt_tokens` and Anthropic's
`input_tokens` is the uncached part only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.formats.sse import SSEParser, sse_event

__all__ = [
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


def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (string or parts) -> Anthropic content blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and part.get("text"):
            block: dict[str, Any] = {"type": "text", "text": part["text"]}
            if "cache_control" in part:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                blocks.append(_image_block(url))
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


def chat_to_messages(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat request -> an Anthropic Messages request for `model`."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system.extend(_content_blocks(content))
        elif role in ("tool", "function"):
            result = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id") or m.get("name") or "",
                "content": _text_of(content),
            }
            _append(messages, "user", [result])
        elif role == "assistant":
            blocks = _content_blocks(content)
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
            _append(messages, "user", _content_blocks(content))
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = system
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        out["temperature"] = min(float(temperature), 1.0)  # OpenAI's range is 0..2
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream") is True:
        out["stream"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools = [
        {
            "name": t["function"].get("name", ""),
            "description": t["function"].get("description", ""),
            "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
        }
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        mapped: dict[str, Any] | None = None
        if isinstance(choice, str):
            mapped = dict(TOOL_CHOICE_TO_ANTHROPIC.get(choice, {"type": "auto"}))
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            mapped = {"type": "tool", "name": choice["function"].get("name", "")}
        if body.get("parallel_tool_calls") is False:
            mapped = mapped or {"type": "auto"}
            mapped["disable_parallel_tool_use"] = True
        if mapped is not None:
            out["tool_choice"] = mapped
    return out


def message_to_chat(msg: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages response -> an OpenAI chat completion."""
    text: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in msg.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(block.get("text", ""))
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
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text) if text or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    stop = msg.get("stop_reason")
    return {
        "id": msg.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH_FROM_STOP.get(stop, "stop") if stop else "stop",
            }
        ],
        "usage": openai_usage(msg.get("usage") or {}),
    }


class MessagesToChatStream:
    """Anthropic SSE events -> OpenAI chat chunks (`data: ...`, then `data: [DONE]`).

    The usage chunk (`choices: []`) is emitted only if the client asked for it with
    `stream_options.include_usage`. Error events are not translated: the vendor adapter
    below already turns them into a failed attempt.
    """

    __slots__ = ("_created", "_head", "_include_usage", "_parser", "_tools", "_usage", "done")

    def __init__(self, request: Mapping[str, Any]) -> None:
        options = request.get("stream_options")
        self._include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self._parser = SSEParser()
        self._created = int(time.time())
        self._head: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "model": ""}
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
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
                block = event.get("content_block") or {}
                if block.get("type") == "tool_use":
                    index = self._tools.setdefault(event.get("index", 0), len(self._tools))
                    call = {
                        "index": index,
                        "id": block.get("id", ""),
                        "type": "function",
                        "function": {"name": block.get("name", ""), "arguments": ""},
                    }
                    out.append(self._chunk({"tool_calls": [call]}))
                elif block.get("type") == "text" and block.get("text"):
                    out.append(self._chunk({"content": block["text"]}))
            elif kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta":
                    out.append(self._chunk({"content": delta.get("text", "")}))
                elif delta.get("type") == "input_json_delta":
                    index = self._tools.get(event.get("index", 0), 0)
                    fragment = {
                        "index": index,
                        "function": {"arguments": delta.get("partial_json", "")},
                    }
                    out.append(self._chunk({"tool_calls": [fragment]}))
            elif kind == "message_delta":
                self._usage.update(
                    {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
                )
                stop = (event.get("delta") or {}).get("stop_reason")
                out.append(self._chunk({}, FINISH_FROM_STOP.get(stop, "stop") if stop else "stop"))
            elif kind == "message_stop":
                if self._include_usage:
                    payload = {**self._head, "choices": [], "usage": openai_usage(self._usage)}
                    out.append(sse_event(None, orjson.dumps(payload)))
                out.append(b"data: [DONE]\n\n")
                self.done = True
        return b"".join(out)


# --------------------------------------------------------------------------- Anthropic -> OpenAI


def _image_url(source: Mapping[str, Any]) -> str | None:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    url = source.get("url")
    return url if isinstance(url, str) else None


def _block_text(content: Any) -> str:
    """A tool_result's content (string or text blocks) as plain text."""
    if isinstance(content, str):
        return content
    return "".join(
        b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text"
    )


def messages_to_chat(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages request -> an OpenAI chat request for `model`."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _block_text(system)})
    for m in body.get("messages") or ():
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
                url = _image_url(block.get("source") or {})
                if url:
                    parts.append({"type": "image_url", "image_url": {"url": url}})
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
                text = _block_text(block.get("content"))
                if block.get("is_error"):
                    text = f"Error: {text}"
                messages.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}
                )
            # thinking / redacted_thinking / server-tool blocks have no OpenAI equivalent
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
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_completion_tokens": body.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ):
        if body.get(src) is not None:
            out[dst] = body[src]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.get("name", ""),
                "description": t.get("description", ""),
                "parameters": t["input_schema"],
            },
        }
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("input_schema"), dict)
    ]
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "tool":
                out["tool_choice"] = {
                    "type": "function",
                    "function": {"name": choice.get("name", "")},
                }
            elif isinstance(kind, str) and kind in TOOL_CHOICE_TO_OPENAI:
                out["tool_choice"] = TOOL_CHOICE_TO_OPENAI[kind]
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    return out


def _message_id(openai_id: Any) -> str:
    text = openai_id if isinstance(openai_id, str) and openai_id else "proxy"
    return text if text.startswith("msg_") else f"msg_{text}"


def chat_to_message(resp: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion -> an Anthropic Messages response."""
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
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
    return {
        "id": _message_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": resp.get("model", ""),
        "content": content,
        "stop_reason": STOP_FROM_FINISH.get(finish, "end_turn") if finish else "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(resp.get("usage")),
    }


class ChatToMessagesStream:
    """OpenAI chat chunks -> the Anthropic event sequence, `message_start` ... `message_stop`.

    Text and each tool call become content blocks in order; a block is closed when the
    next one starts. The final `message_delta` carries the usage of OpenAI's usage chunk
    (the bridge asks for it with `stream_options.include_usage`), so it is emitted at
    `[DONE]`, not at `finish_reason`.
    """

    __slots__ = ("_block", "_index", "_parser", "_started", "_stop", "_tools", "_usage", "done")

    def __init__(self, request: Mapping[str, Any]) -> None:
        self._parser = SSEParser()
        self._started = False
        self._block: str | None = None  # "text" or "tool:<openai index>" of the open block
        self._index = -1
        self._tools: set[int] = set()
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
                self._choice(choice, out)
        return b"".join(out)

    def _choice(self, choice: Mapping[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._block != "text":
                self._open("text", {"type": "text", "text": ""}, out)
            out.append(
                self._event(
                    "content_block_delta",
                    {"index": self._index, "delta": {"type": "text_delta", "text": text}},
                )
            )
        for call in delta.get("tool_calls") or ():
            index = call.get("index", 0)
            fn = call.get("function") or {}
            key = f"tool:{index}"
            if index not in self._tools:
                self._tools.add(index)
                block = {
                    "type": "tool_use",
                    "id": call.get("id", ""),
                    "name": fn.get("name", ""),
                    "input": {},
                }
                self._open(key, block, out)
            args = fn.get("arguments")
            if args and self._block == key:
                out.append(
                    self._event(
                        "content_block_delta",
                        {
                            "index": self._index,
                            "delta": {"type": "input_json_delta", "partial_json": args},
                        },
                    )
                )
        finish = choice.get("finish_reason")
        if finish:
            self._stop = STOP_FROM_FINISH.get(finish, "end_turn")
