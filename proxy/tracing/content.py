"""Prompt and completion text for spans: only with `tracing.record_content: true`.

The text is shaped as the GenAI semantic conventions' `gen_ai.input.messages`,
`gen_ai.output.messages` and `gen_ai.system_instructions` (JSON: messages of roles and
parts), whatever the inbound API. Text parts are kept, key-shaped tokens redacted
(`proxy.core.redact`), at most `cap` characters of text per span in all; any other part
(an image, a tool call, a file) is recorded by its type only, never its data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy.core.redact import redact_text

__all__ = ["Budget", "StreamText", "input_messages", "output_messages"]

_TRUNCATED = "…"
# How far past the cap a text is redacted before it is cut: a key cut in half by the cap
# must still be recognised as one.
_REDACT_MARGIN = 256


class Budget:
    """Characters of text one span may still record."""

    __slots__ = ("left",)

    def __init__(self, cap: int) -> None:
        self.left = cap

    def take(self, text: str) -> str | None:
        """`text` redacted and cut to what is left (None once nothing is)."""
        if self.left <= 0:
            return None
        clean = redact_text(text[: self.left + _REDACT_MARGIN], None)
        if len(clean) <= self.left:
            self.left -= len(clean)
            return clean
        cut = clean[: self.left] + _TRUNCATED
        self.left = 0
        return cut


def _parts(content: Any, budget: Budget) -> list[dict[str, str]]:
    """A message's content (a string, or a list of typed parts in any inbound API)."""
    items = content if isinstance(content, list) else [content]
    parts: list[dict[str, str]] = []
    for item in items:
        text = item if isinstance(item, str) else None
        kind = "text"
        if isinstance(item, dict):
            text = item.get("text") if isinstance(item.get("text"), str) else None
            kind = str(item.get("type") or "text") if text is None else "text"
        if text is None:
            if isinstance(item, dict):
                parts.append({"type": kind})
            continue
        taken = budget.take(text)
        if taken is None:
            break
        parts.append({"type": "text", "content": taken})
    return parts


def _messages(messages: Any, budget: Budget) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages if isinstance(messages, list) else [messages]:
        if isinstance(message, dict):
            role = str(message.get("role") or "user")
            out.append({"role": role, "parts": _parts(message.get("content"), budget)})
        elif isinstance(message, str):
            out.append({"role": "user", "parts": _parts(message, budget)})
        if budget.left <= 0:
            break
    return out


def input_messages(body: Mapping[str, Any], budget: Budget) -> tuple[str | None, str | None]:
    """(gen_ai.system_instructions, gen_ai.input.messages) of a request body in any of the
    inbound APIs: chat `messages`, Anthropic `system` + `messages`, Responses `instructions`
    + `input`, completions `prompt`, embeddings `input`."""
    system = body.get("system", body.get("instructions"))
    instructions = orjson.dumps(_parts(system, budget)).decode() if system else None
    for key in ("messages", "input", "prompt"):
        if key in body:
            return instructions, orjson.dumps(_messages(body[key], budget)).decode()
    return instructions, None


def output_messages(body: bytes, budget: Budget) -> str | None:
    """gen_ai.output.messages of a JSON answer: chat `choices`, Anthropic `content`,
    Responses `output`; None for anything else (an embedding)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    out: list[dict[str, Any]] = []
    if isinstance(doc.get("choices"), list):
        for choice in doc["choices"]:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else choice.get("text")
            out.append(
                {
                    "role": "assistant",
                    "parts": _parts(content, budget) if content is not None else [],
                    "finish_reason": str(choice.get("finish_reason") or ""),
                }
            )
    elif isinstance(doc.get("content"), list):
        out.append(
            {
                "role": "assistant",
                "parts": _parts(doc["content"], budget),
                "finish_reason": str(doc.get("stop_reason") or ""),
            }
        )
    elif isinstance(doc.get("output"), list):
        for item in doc["output"]:
            if isinstance(item, dict) and item.get("type") == "message":
                out.append({"role": "assistant", "parts": _parts(item.get("content"), budget)})
    else:
        return None
    return orjson.dumps(out).decode()


def _delta_text(event: Any) -> str | None:
    """The text an event of a relayed stream adds, in any inbound API's stream format."""
    if not isinstance(event, dict):
        return None
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choices[0].get("text")
        return text if isinstance(text, str) else None
    delta = event.get("delta")
    if isinstance(delta, dict):  # Anthropic content_block_delta
        text = delta.get("text")
        return text if isinstance(text, str) else None
    if event.get("type") == "response.output_text.delta" and isinstance(delta, str):
        return delta
    return None


class StreamText:
    """The completion text of a relayed stream, gathered event by event until there is more
    than the budget can take (then the stream is no longer parsed); redacted as a whole,
    so a key split across two events is still recognised."""

    __slots__ = ("_budget", "_left", "_partial", "_texts")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._left = budget.left + _REDACT_MARGIN
        self._partial = b""
        self._texts: list[str] = []

    def feed(self, data: bytes) -> None:
        if self._left <= 0:
            return
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        for line in data[:cut].splitlines():
            if not line.startswith(b"data:"):
                continue
            try:
                event = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                continue
            text = _delta_text(event)
            if text:
                self._texts.append(text)
                self._left -= len(text)

    def messages(self) -> str:
        """gen_ai.output.messages of what was relayed."""
        text = self._budget.take("".join(self._texts)) if self._texts else None
        parts = [{"type": "text", "content": text}] if text else []
        return orjson.dumps([{"role": "assistant", "parts": parts}]).decode()
