"""Token usage: what a vendor reported, and what a request may use before it has answered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_COMPLETION_ESTIMATE", "Usage", "estimate_tokens"]

# What a request reserves for its answer when it sets no max_tokens.
DEFAULT_COMPLETION_ESTIMATE = 1024
# Endpoints that reach a vendor but spend no tokens (they still count as requests).
_NO_TOKENS = frozenset({"messages/count_tokens", "responses/input_tokens", "responses/stored"})


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as the vendor reported it, normalised to OpenAI's fields (`prompt`
    includes the cached prompt tokens)."""

    prompt: int = 0
    completion: int = 0
    cached_prompt: int = 0

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """Chat completions' usage (`prompt_tokens` includes the cached ones)."""
        return cls._from(usage, _CHAT_FIELDS)

    @classmethod
    def from_responses(cls, usage: Any) -> Usage | None:
        """The Responses API's usage (`input_tokens` includes the cached ones)."""
        return cls._from(usage, _RESPONSES_FIELDS)

    @classmethod
    def _from(cls, usage: Any, names: tuple[str, str, str]) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt, completion, details_name = names
        details = usage.get(details_name)
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return cls(
            prompt=_int(usage.get(prompt)),
            completion=_int(usage.get(completion)),
            cached_prompt=_int(cached),
        )


# (prompt, completion, prompt details) field names of each OpenAI API's usage object.
_CHAT_FIELDS = ("prompt_tokens", "completion_tokens", "prompt_tokens_details")
_RESPONSES_FIELDS = ("input_tokens", "output_tokens", "input_tokens_details")


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def estimate_tokens(endpoint: str, body: Mapping[str, Any], raw_len: int) -> tuple[int, int]:
    """(prompt, completion) tokens a request may use, before the vendor says.

    The prompt is estimated from the body's size (~4 bytes a token, which over-counts JSON
    syntax: safe, and settled to the real figure anyway); the completion is `max_tokens`
    (or `max_completion_tokens`, `max_output_tokens`) times `n`, else a default.
    """
    if endpoint in _NO_TOKENS:
        return 0, 0
    prompt = raw_len // 4 + 1
    if endpoint == "embeddings":
        return prompt, 0
    cap = (
        body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    )
    completion = cap if isinstance(cap, int) and cap > 0 else DEFAULT_COMPLETION_ESTIMATE
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        completion *= n
    return prompt, completion
