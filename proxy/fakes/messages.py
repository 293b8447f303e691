"""Anthropic Messages answers: thinking, several tool uses, structured output.

``MessageAnswer.plan`` decides the content blocks once; the fake renders them as the
JSON ``content`` or as the stream's block events, which the SDK's accumulator
(``anthropic.lib.streaming``) rebuilds into the same message:

- ``thinking`` requested (``enabled`` or ``adaptive``) → a ``thinking`` block first, with a
  ``signature``; streamed as ``thinking_delta`` pieces then one ``signature_delta``;
- tools offered and the last user turn not a ``tool_result`` → one ``tool_use`` block per
  tool ``tool_choice`` allows (``auto``/``any``: all, ``tool``: that one, ``none``: none,
  ``disable_parallel_tool_use``: the first), ``input`` generated from its
  ``input_schema``; streamed as a block start with an empty ``input`` and
  ``input_json_delta`` pieces; ``stop_reason: "tool_use"``;
- else a ``text`` block: the fake's usual text, or, with ``output_config.format`` (or the
  older beta ``output_format``) a JSON text valid for its schema.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.fakes.answers import (
    ChoiceMode,
    ToolChoice,
    ToolSpec,
    plan_calls,
    split_text,
    structured_text,
    thinking_text,
)
from proxy.fakes.base import Rejected

__all__ = ["Block", "MessageAnswer"]


def _tools(body: dict[str, Any]) -> list[ToolSpec]:
    """Client tools (``name`` + ``input_schema``); server tools (web search...) are the
    vendor's own business and never come back as ``tool_use``."""
    tools = body.get("tools")
    return [
        ToolSpec(t["name"], t.get("input_schema") or {})
        for t in (tools if isinstance(tools, list) else ())
        if isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and t.get("type") in (None, "custom")
    ]


def _choice(body: dict[str, Any], names: Sequence[str]) -> ToolChoice:
    raw = body.get("tool_choice")
    if not isinstance(raw, dict):
        return ToolChoice()
    parallel = raw.get("disable_parallel_tool_use") is not True
    kind = raw.get("type")
    if kind == "tool":
        name = raw.get("name")
        if name not in names:
            raise Rejected(f"tool_choice.name: Tool '{name}' not found in tools")
        return ToolChoice(mode="required", forced=name, parallel=parallel)
    mode: ChoiceMode = "auto"
    if kind == "any":
        mode = "required"
    elif kind == "none":
        mode = "none"
    return ToolChoice(mode=mode, parallel=parallel)


def _answered(messages: Any) -> bool:
    """True if the last turn carries a ``tool_result`` (the model answers it with text)."""
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) else None
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _output_schema(body: dict[str, Any]) -> Any:
    """The JSON schema of ``output_config.format`` (or the beta's ``output_format``)."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict):
        fmt = body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt.get("schema") or {}
    return None


def _thinking(body: dict[str, Any]) -> tuple[bool, bool]:
    """Whether to think, and whether the thinking text is shown (``display: omitted``
    keeps only the signature)."""
    raw = body.get("thinking")
    if not isinstance(raw, dict) or raw.get("type") not in ("enabled", "adaptive"):
        return False, False
    return True, raw.get("display") != "omitted"


@dataclass(frozen=True, slots=True)
class Block:
    """One content block as the JSON answer has it, and the pieces it streams in."""

    content: dict[str, Any]
    pieces: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MessageAnswer:
    """A decided message: its content blocks and ``stop_reason``."""

    blocks: tuple[Block, ...]
    stop_reason: str

    @property
    def output_tokens(self) -> int:
        """One token per streamed piece."""
        return sum(len(b.pieces) for b in self.blocks)

    @classmethod
    def plan(
        cls,
        body: dict[str, Any],
        pieces: tuple[str, ...],
        *,
        chunks: int,
        name: str,
        new_id: Callable[[], str],
    ) -> MessageAnswer:
        """Decide the answer to a valid ``/v1/messages`` body (``pieces``: the usual text);
        raises ``Rejected`` for a ``tool_choice`` naming no offered tool."""
        messages = body.get("messages")
        conversation = [body.get("system"), messages]
        blocks: list[Block] = []
        think, shown = _thinking(body)
        if think:
            thought = tuple(split_text(thinking_text(name), chunks)) if shown else ()
            text = "".join(thought)
            signature = base64.b64encode(hashlib.sha256(text.encode()).digest() * 2).decode()
            blocks.append(
                Block({"type": "thinking", "thinking": text, "signature": signature}, thought)
            )
        tools = _tools(body)
        choice = _choice(body, [t.name for t in tools])
        calls = plan_calls(tools, choice, conversation) if tools and not _answered(messages) else []
        if calls:
            for call in calls:
                content = {
                    "type": "tool_use",
                    "id": "toolu_" + new_id(),
                    "name": call.name,
                    "input": call.input,
                }
                blocks.append(Block(content, tuple(split_text(call.arguments, chunks))))
            return cls(tuple(blocks), "tool_use")
        schema = _output_schema(body)
        if schema is not None:
            pieces = tuple(split_text(structured_text(schema, conversation), chunks))
        stop = "end_turn"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(pieces):
            pieces, stop = pieces[:max_tokens], "max_tokens"
        blocks.append(Block({"type": "text", "text": "".join(pieces)}, pieces))
        return cls(tuple(blocks), stop)

    def content(self) -> list[dict[str, Any]]:
        """The JSON answer's ``content``."""
        return [b.content for b in self.blocks]

    def block_events(self, event: Callable[[str, dict[str, Any]], bytes]) -> list[bytes]:
        """Every block's stream events (start, deltas, stop), a ``ping`` after the first
        start as Anthropic sends it; ``event`` frames one event."""
        out: list[bytes] = []
        for index, block in enumerate(self.blocks):
            kind = block.content["type"]
            start: dict[str, Any]
            deltas: list[dict[str, str]]
            if kind == "thinking":
                start = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": p} for p in block.pieces]
                deltas.append({"type": "signature_delta", "signature": block.content["signature"]})
            elif kind == "tool_use":
                start = {**block.content, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in block.pieces]
            else:
                start = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in block.pieces]
            out.append(event("content_block_start", {"index": index, "content_block": start}))
            if not index:
                out.append(event("ping", {}))
            out.extend(event("content_block_delta", {"index": index, "delta": d}) for d in deltas)
            out.append(event("content_block_stop", {"index": index}))
        return out
