"""What a translation does with a request field it cannot carry: refuse it, or drop it visibly.

A translation between wire formats (OpenAI chat -> Anthropic Messages, Messages -> chat,
chat -> a litellm vendor) maps every field that has an equivalent. For the rest, the kind
of field decides, and the tables here say which kind each field is:

- `SHAPE`: the field changes the answer's shape or contract (`n`, `logprobs`, `tools`,
  `response_format`, `top_k`...). It is never dropped: the translation raises `Unsupported`,
  the router tries a deployment that can honour it, and only when none can does the client
  get a 400 naming the field and the vendor.
- `HINT`: a sampling hint (`seed`, penalties, `logit_bias`, `verbosity`...). It may be
  dropped, visibly: it is listed in the answer's `x-proxy-dropped-params` header and the
  access log's `dropped_params`. A group with `strict_params` refuses it instead.
- `INFO`: a field that does not change the answer (an end-user id, metadata, a service
  tier, a cache key, storage at the vendor). Dropped visibly like a hint, but never
  refused: `strict_params` is about the answer.

A field a table does not know is a `HINT`: its meaning is unknown, so it is dropped and
said so rather than refusing every new parameter a client SDK starts sending. A field set
to its neutral value (`n: 1`, `logprobs: false`, `presence_penalty: 0`) asks for nothing
and is neither refused nor reported.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from proxy.core.errors import Unsupported

__all__ = [
    "CHAT_FIELDS",
    "MESSAGES_FIELDS",
    "Field",
    "Kind",
    "Translation",
    "neutral",
]


class Kind(enum.Enum):
    SHAPE = "shape"  # never dropped: mapped or refused
    HINT = "hint"  # dropped visibly when it has no equivalent (refused under strict_params)
    INFO = "info"  # dropped visibly when it has no equivalent; it does not change the answer


@dataclass(frozen=True, slots=True)
class Field:
    kind: Kind
    # Values that ask for nothing (the vendor's default): not refused, not reported.
    neutral: tuple[Any, ...] = ()


_SHAPE = Field(Kind.SHAPE)
_HINT = Field(Kind.HINT)
_INFO = Field(Kind.INFO)

# OpenAI Chat Completions request fields, by kind (fields every translation carries, such as
# `messages`, `model`, `stream` or `max_tokens`, need no entry).
CHAT_FIELDS: Mapping[str, Field] = {
    "n": Field(Kind.SHAPE, (1,)),
    "logprobs": Field(Kind.SHAPE, (False,)),
    "top_logprobs": Field(Kind.SHAPE, (0,)),
    "response_format": Field(Kind.SHAPE, ({"type": "text"},)),
    "tools": Field(Kind.SHAPE, ([],)),
    "tool_choice": Field(Kind.SHAPE, ("auto", "none")),
    "parallel_tool_calls": Field(Kind.SHAPE, (True,)),
    "functions": Field(Kind.SHAPE, ([],)),
    "function_call": Field(Kind.SHAPE, ("auto", "none")),
    "stop": Field(Kind.SHAPE, ([],)),
    "audio": _SHAPE,
    "modalities": Field(Kind.SHAPE, (["text"],)),
    "web_search_options": _SHAPE,
    "seed": _HINT,
    "temperature": _HINT,
    "top_p": Field(Kind.HINT, (1, 1.0)),
    "frequency_penalty": Field(Kind.HINT, (0, 0.0)),
    "presence_penalty": Field(Kind.HINT, (0, 0.0)),
    "logit_bias": Field(Kind.HINT, ({},)),
    "reasoning_effort": _HINT,
    "verbosity": _HINT,
    "prediction": _INFO,
    "service_tier": Field(Kind.INFO, ("auto",)),
    "store": Field(Kind.INFO, (False,)),
    "metadata": Field(Kind.INFO, ({},)),
    "user": _INFO,
    "safety_identifier": _INFO,
    "prompt_cache_key": _INFO,
    "prompt_cache_retention": _INFO,
}

# Anthropic Messages request fields, by kind.
MESSAGES_FIELDS: Mapping[str, Field] = {
    "top_k": _SHAPE,
    "tools": Field(Kind.SHAPE, ([],)),
    "tool_choice": Field(Kind.SHAPE, ({"type": "auto"},)),
    "stop_sequences": Field(Kind.SHAPE, ([],)),
    "output_config": Field(Kind.SHAPE, ({},)),
    "output_format": _SHAPE,
    "mcp_servers": Field(Kind.SHAPE, ([],)),
    "container": _SHAPE,
    "thinking": Field(Kind.HINT, ({"type": "disabled"},)),
    "temperature": _HINT,
    "top_p": _HINT,
    "context_management": _HINT,
    "service_tier": Field(Kind.INFO, ("auto",)),
    "metadata": Field(Kind.INFO, ({},)),
    "inference_geo": _INFO,
}


def neutral(spec: Field, value: Any) -> bool:
    """True if `value` asks for nothing (null, or the field's neutral value)."""
    return value is None or any(
        type(value) is type(n) and value == n  # `False == 0`, but `logprobs: 0` is no answer
        for n in spec.neutral
    )


@dataclass(slots=True)
class Translation:
    """One request's translation for one deployment: where it goes and what was dropped.

    `refuse` and `drop` are the only ways a translation leaves a field behind.
    """

    vendor: str  # the vendor's name in the config: what the client's 400 names
    model: str  # the deployment's model (capabilities differ between a vendor's models)
    strict: bool = False  # the group's strict_params: refuse hints instead of dropping them
    dropped: list[str] = field(default_factory=list)
    # A tool the translation added to carry a JSON answer (structured output where the
    # vendor has no equivalent of the client's `response_format`): its input is the answer.
    answer_tool: str | None = None
    # The client's request, for an answer that echoes it (a Responses API response object
    # repeats the request's settings and tools).
    request: Mapping[str, Any] = field(default_factory=dict)

    def refuse(self, name: str, detail: str) -> NoReturn:
        raise Unsupported(
            name,
            self.vendor,
            f"{detail}. Leave it out, or use a model group with a deployment that takes it",
        )

    def drop(self, name: str, detail: str, kind: Kind = Kind.HINT) -> None:
        """Leave out a field the target cannot honour (a hint is refused under strict_params)."""
        if self.strict and kind is Kind.HINT:
            self.refuse(name, f"{detail}; the model group sets strict_params, so it is not dropped")
        if name not in self.dropped:
            self.dropped.append(name)

    def screen(
        self,
        body: Mapping[str, Any],
        carried: Collection[str],
        fields: Mapping[str, Field],
        target: str,
    ) -> None:
        """Refuse or drop every field of `body` that is not `carried` (mapped or passed on by
        the translation), as its kind in `fields` says; `target` names the vendor's API in
        the messages."""
        for name, value in body.items():
            if name in carried:
                continue
            spec = fields.get(name, _HINT)
            if neutral(spec, value):
                continue
            if spec.kind is Kind.SHAPE:
                self.refuse(name, f"{target} has no equivalent and it changes the answer")
            self.drop(name, f"{target} has no equivalent", spec.kind)
