"""What a fake answers, before any wire format: tool calls, structured text, logprobs.

The fakes speak three tool-calling dialects (OpenAI chat, the Responses API, Anthropic
Messages) and three structured-output switches (``response_format``, ``text.format``,
``output_config.format``), but the decisions behind them are the same: which of the
offered tools to call, with which arguments, what JSON to write for a schema, how to
split it into stream pieces. Each vendor module parses its own request shape into the
small types here and renders the result in its own shape; the deciding happens once.

Deterministic by design: a fake "model" calls every tool it may (``auto`` included),
so a test that offers three tools sees three calls, and arguments come from the tools'
schemas seeded by the request (``schema_values``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.fakes.schema_values import object_for, request_seed, value_for

__all__ = [
    "ChoiceMode",
    "PlannedCall",
    "ToolChoice",
    "ToolSpec",
    "plan_calls",
    "split_text",
    "structured_text",
    "thinking_text",
    "token_logprobs",
]

ChoiceMode = Literal["auto", "none", "required"]

#: Alternative tokens offered in ``top_logprobs`` after the chosen one.
_ALTERNATIVES: tuple[str, ...] = (
    " the", " a", " and", " of", " to", " in", " is", " it", " that", " for", " on",
    " with", " as", " at", " by", " this", " be", " or", " from", " an", " was",
)  # fmt: skip
#: ``top_logprobs`` is capped at 20 by OpenAI.
_MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """An offered function: its name and the JSON schema of its arguments."""

    name: str
    schema: Any


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """The request's tool choice, vendor-neutral.

    ``mode``: ``none`` never calls, ``auto`` and ``required`` call (the fake always does
    when it may); ``forced`` names the one tool to call; ``allowed`` restricts the offer
    (OpenAI's ``allowed_tools``); ``parallel`` false means one call at most.
    """

    mode: ChoiceMode = "auto"
    forced: str | None = None
    allowed: frozenset[str] | None = None
    parallel: bool = True


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One tool call to answer with; ``arguments`` is JSON text valid for its schema."""

    name: str
    arguments: str

    @property
    def input(self) -> dict[str, Any]:
        """The arguments as an object (Anthropic's ``input``, Gemini's ``args``)."""
        value = orjson.loads(self.arguments)
        return value if isinstance(value, dict) else {}


def plan_calls(
    tools: Sequence[ToolSpec], choice: ToolChoice, conversation: Any
) -> list[PlannedCall]:
    """The calls to make: every tool the choice allows (one if not parallel), arguments
    generated from each schema and seeded by ``conversation`` and the tool's name."""
    if choice.mode == "none":
        return []
    offered = [t for t in tools if choice.allowed is None or t.name in choice.allowed]
    if choice.forced is not None:
        offered = [t for t in offered if t.name == choice.forced][:1]
    if not choice.parallel:
        offered = offered[:1]
    base = request_seed(conversation)
    return [
        PlannedCall(
            t.name,
            orjson.dumps(object_for(t.schema, base ^ zlib.crc32(t.name.encode()))).decode(),
        )
        for t in offered
    ]


def structured_text(schema: Any, conversation: Any) -> str:
    """The JSON answer to a structured-output request: a value valid for ``schema``."""
    return orjson.dumps(value_for(schema, request_seed(conversation))).decode()


def thinking_text(name: str) -> str:
    """What a fake "thinks" (reasoning summaries, Anthropic thinking blocks)."""
    return f"Thinking as {name}: the user wants a short, friendly answer."


def split_text(text: str, parts: int) -> list[str]:
    """``text`` in at most ``parts`` consecutive non-empty pieces of near-equal length (one
    piece, possibly empty, for an empty text): how arguments and JSON are streamed."""
    if not text:
        return [text]
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    out = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return out


def token_logprobs(pieces: Iterable[str], top: int) -> list[dict[str, Any]]:
    """OpenAI's per-token logprob entries (chat ``logprobs.content``, Responses
    ``output_text.logprobs``): each piece one token, ``top`` alternatives with the token
    itself first and the rest strictly less likely. Deterministic per token text."""
    top = max(0, min(top, _MAX_TOP_LOGPROBS))
    out = []
    for piece in pieces:
        logprob = -round((zlib.crc32(piece.encode()) % 1000) / 2000 + 0.0001, 6)
        candidates = [piece, *(a for a in _ALTERNATIVES if a != piece)][:top]
        out.append(
            {
                "token": piece,
                "bytes": list(piece.encode()),
                "logprob": logprob,
                "top_logprobs": [
                    {"token": t, "bytes": list(t.encode()), "logprob": logprob - 2.0 * rank}
                    for rank, t in enumerate(candidates)
                ],
            }
        )
    return out
