"""OpenAI Chat Completions answers: tool calls, ``n`` choices, logprobs, structured output.

``ChatAnswer.plan`` reads what a request asks for and decides the answer once; the fake
then renders it as one JSON body (``choices``) or as stream chunks (``chunks``), so both
carry the same content. Chunk shapes follow OpenAI's stream exactly as the SDK's
accumulators (``openai.lib.streaming.chat``) consume them: a choice's first chunk has the
role; a tool call's first delta carries ``index``, ``id``, ``type`` and ``function.name``
with empty ``arguments``, later deltas only ``index`` and argument pieces; the choices of
``n > 1`` are interleaved, each one's first chunk before the next choice's (the SDK grows
its snapshot by index); the finish chunk has an empty delta.

The plain request (no tools, ``n`` 1, no logprobs, no ``response_format``) costs a few
dict lookups more than before: no schema work unless asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.fakes.answers import (
    ChoiceMode,
    PlannedCall,
    ToolChoice,
    ToolSpec,
    plan_calls,
    split_text,
    structured_text,
    token_logprobs,
)
from proxy.fakes.base import Rejected, sse_data

__all__ = ["ChatAnswer", "chat_tool_choice", "chat_tools", "json_object_text"]

#: OpenAI's bounds on ``n``.
_MAX_N = 128


def chat_tools(body: dict[str, Any]) -> list[ToolSpec]:
    """The function tools of a Chat Completions request (``{"type": "function",
    "function": {"name", "parameters"}}``); other tool types and malformed entries are
    skipped."""
    tools = body.get("tools")
    out = []
    for tool in tools if isinstance(tools, list) else ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out.append(ToolSpec(fn["name"], fn.get("parameters") or {}))
    return out


def chat_tool_choice(body: dict[str, Any], names: Sequence[str]) -> ToolChoice:
    """``tool_choice`` and ``parallel_tool_calls`` as a ``ToolChoice``; raises ``Rejected``
    as OpenAI does for a choice without tools or naming a function not offered."""
    raw = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls") is not False
    if raw is None:
        return ToolChoice(parallel=parallel)
    if not names:
        raise Rejected(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
        )
    if raw == "auto" or raw == "none" or raw == "required":
        return ToolChoice(mode=raw, parallel=parallel)
    if isinstance(raw, dict) and raw.get("type") == "function":
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in names:
            raise Rejected(
                f"Invalid value for 'tool_choice': function {name!r} not found in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
        return ToolChoice(mode="required", forced=name, parallel=parallel)
    if isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        spec = raw.get("allowed_tools")
        spec = spec if isinstance(spec, dict) else {}
        allowed = frozenset(
            fn["name"]
            for tool in spec.get("tools") or ()
            if isinstance(tool, dict)
            and isinstance(fn := tool.get("function"), dict)
            and isinstance(fn.get("name"), str)
        )
        mode: ChoiceMode = "required" if spec.get("mode") == "required" else "auto"
        return ToolChoice(mode=mode, allowed=allowed, parallel=parallel)
    raise Rejected(
        f"Invalid value for 'tool_choice': {orjson.dumps(raw).decode()}.",
        param="tool_choice",
        code="invalid_value",
    )


def json_object_text(pieces: Sequence[str]) -> str:
    """The answer to JSON mode (``json_object``): the usual text, inside an object."""
    return orjson.dumps({"answer": "".join(pieces)}).decode()


def _count(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise Rejected(
            f"Invalid type for '{key}': expected an integer, but got {type(value).__name__} "
            "instead.",
            param=key,
            code="invalid_type",
        )
    if value < lo:
        raise Rejected(
            f"Invalid '{key}': integer below minimum value. Expected a value >= {lo}, but got "
            f"{value} instead.",
            param=key,
            code="integer_below_min_value",
        )
    if value > hi:
        raise Rejected(
            f"Invalid '{key}': integer above maximum value. Expected a value <= {hi}, but got "
            f"{value} instead.",
            param=key,
            code="integer_above_max_value",
        )
    return value


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """One chat answer, decided: every choice has the same content (the fake is
    deterministic), its own tool call ids."""

    pieces: tuple[str, ...]
    finish: str
    calls: tuple[PlannedCall, ...]
    #: Per choice, per call: the call id.
    call_ids: tuple[tuple[str, ...], ...]
    #: ``top_logprobs`` when logprobs were asked for, else None.
    top_logprobs: int | None
    chunks: int

    @property
    def n(self) -> int:
        return len(self.call_ids)

    @classmethod
    def plan(
        cls, body: dict[str, Any], pieces: tuple[str, ...], chunks: int, new_id: Callable[[], str]
    ) -> ChatAnswer:
        """Decide the answer to ``body`` (``pieces`` is the fake's usual text); raises
        ``Rejected`` for an ``n``, ``top_logprobs`` or ``tool_choice`` OpenAI refuses."""
        n = _count(body, "n", 1, 1, _MAX_N)
        top = _count(body, "top_logprobs", 0, 0, 20) if body.get("logprobs") is True else None
        messages = body.get("messages")
        calls: list[PlannedCall] = []
        if "tools" in body or "tool_choice" in body:
            tools = chat_tools(body)
            choice = chat_tool_choice(body, [t.name for t in tools])
            last = messages[-1] if isinstance(messages, list) and messages else None
            answered = isinstance(last, dict) and last.get("role") in ("tool", "function")
            if not answered:
                calls = plan_calls(tools, choice, messages)
        if calls:
            ids = tuple(tuple("call_" + new_id() for _ in calls) for _ in range(n))
            return cls((), "tool_calls", tuple(calls), ids, top, chunks)
        fmt = body.get("response_format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_schema":
            spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
            schema = spec.get("schema") if isinstance(spec, dict) else None
            pieces = tuple(split_text(structured_text(schema or {}, messages), chunks))
        elif kind == "json_object":
            pieces = tuple(split_text(json_object_text(pieces), chunks))
        finish = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        return cls(pieces, finish, (), ((),) * n, top, chunks)

    # ------------------------------------------------------------------ accounting

    def _arguments(self) -> list[list[str]]:
        return [split_text(call.arguments, self.chunks) for call in self.calls]

    @property
    def completion_tokens(self) -> int:
        """One token per streamed piece (text or argument piece), for every choice."""
        per_choice = sum(map(len, self._arguments())) if self.calls else len(self.pieces)
        return per_choice * self.n

    # ------------------------------------------------------------------ JSON

    def _logprobs(self) -> dict[str, Any] | None:
        if self.top_logprobs is None:
            return None
        return {"content": token_logprobs(self.pieces, self.top_logprobs), "refusal": None}

    def choices(self) -> list[dict[str, Any]]:
        """The ``choices`` of the JSON answer."""
        logprobs = self._logprobs()
        out = []
        for index, ids in enumerate(self.call_ids):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if self.calls else "".join(self.pieces),
                "refusal": None,
            }
            if self.calls:
                message["tool_calls"] = [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call_id, call in zip(ids, self.calls, strict=True)
                ]
            out.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": self.finish,
                }
            )
        return out

    # ------------------------------------------------------------------ stream

    def _stream_choices(self, index: int, ids: tuple[str, ...]) -> list[dict[str, Any]]:
        """One choice's stream ``choices`` entries, in order (finish chunk last)."""
        out: list[dict[str, Any]] = []
        if self.calls:
            for position, (call_id, call, parts) in enumerate(
                zip(ids, self.calls, self._arguments(), strict=True)
            ):
                head = {
                    "index": position,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                delta: dict[str, Any] = {"tool_calls": [head]}
                if not position:
                    delta = {"role": "assistant", "content": None, **delta}
                out.append(_stream_choice(index, delta, None))
                out.extend(
                    _stream_choice(
                        index, {"tool_calls": [{"index": position, "function": {"arguments": p}}]}
                    )
                    for p in parts
                )
        else:
            top = self.top_logprobs
            for i, piece in enumerate(self.pieces):
                delta = {"role": "assistant", "content": piece} if not i else {"content": piece}
                logprobs = (
                    None
                    if top is None
                    else {"content": token_logprobs((piece,), top), "refusal": None}
                )
                out.append(_stream_choice(index, delta, logprobs))
        out.append(_stream_choice(index, {}, None, self.finish))
        return out

    def stream_chunks(self, head: dict[str, Any]) -> list[bytes]:
        """The SSE chunks (without the usage chunk and ``[DONE]``); ``head`` holds the
        fields every chunk repeats (id, object, created, model...). Several choices are
        interleaved step by step, so each one's first chunk precedes the next one's."""
        per_choice = [self._stream_choices(i, ids) for i, ids in enumerate(self.call_ids)]
        if len(per_choice) == 1:
            return [sse_data({**head, "choices": [choice]}) for choice in per_choice[0]]
        out = []
        for step in range(max(map(len, per_choice))):
            for choices in per_choice:
                if step < len(choices):
                    out.append(sse_data({**head, "choices": [choices[step]]}))
        return out


def _stream_choice(
    index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
