"""The Anthropic-compatible inbound API: `POST /v1/messages` and `/v1/messages/count_tokens`.

So that the Anthropic SDK and Claude Code (`ANTHROPIC_BASE_URL=http://proxy:4000`) fail over
like OpenAI clients do. Both are endpoints of the shared pipeline (`proxy.api.pipeline`):
an Anthropic deployment gets the client's bytes (and its `anthropic-beta` header) passed
through, any other vendor gets a translation. Only the edges differ: validation, and errors
in Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`), including the
`event: error` that ends a stream broken after its first byte. A token count needs the
client's key, its model allow-list and its limits like every other endpoint that reaches a
vendor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy.api.pipeline import Endpoint, Exchange, Inbound, stream_error_message
from proxy.api.validation import EndpointSchema, validate
from proxy.core.errors import ApiError
from proxy.core.outcomes import FinalError, Outcome, OutcomeClass
from proxy.listener import Answer
from proxy.routing.router import ModelGroup

__all__ = ["ANTHROPIC", "ENDPOINTS", "MESSAGES", "error_type"]

_NUM = (int, float)
MESSAGES = EndpointSchema(
    "messages",
    required=("model", "max_tokens", "messages"),
    fields={
        "model": (str,),
        "max_tokens": (int,),
        "messages": (list,),
        "system": (str, list),
        "stream": (bool,),
        "temperature": _NUM,
        "top_p": _NUM,
        "top_k": (int,),
        "stop_sequences": (list,),
        "tools": (list,),
        "tool_choice": (dict,),
        "metadata": (dict,),
        "thinking": (dict,),
        "service_tier": (str,),
    },
    items={"messages": (dict, ("role",))},
)
COUNT_TOKENS = EndpointSchema(
    "count_tokens",
    required=("model", "messages"),
    fields={k: v for k, v in MESSAGES.fields.items() if k not in ("max_tokens", "stream")},
    items=MESSAGES.items,
)

# HTTP status -> Anthropic error type (https://docs.claude.com/en/api/errors).
_TYPE_FOR_STATUS: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
# Aggregated failure class -> Anthropic error type, where the status alone would mislead.
_TYPE_FOR_CLASS: Mapping[OutcomeClass, str] = {
    OutcomeClass.OVERLOADED: "overloaded_error",
    OutcomeClass.QUOTA_EXHAUSTED: "billing_error",
    OutcomeClass.AUTH_ERROR: "api_error",  # the proxy's credentials, not the client's
    OutcomeClass.RATE_LIMITED: "rate_limit_error",
}
_ROLES = frozenset({"user", "assistant"})


def error_type(status: int) -> str:
    return _TYPE_FOR_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(type_: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})


def _error(err: ApiError, headers: Mapping[str, str]) -> Answer:
    return Answer(
        err.status, {**err.headers, **headers}, error_body(error_type(err.status), err.message)
    )


def _final_error(final: FinalError, headers: Mapping[str, str]) -> Answer:
    type_ = _TYPE_FOR_CLASS.get(final.cls) or error_type(final.status)
    return Answer(final.status, headers, error_body(type_, final.message))


def _stream_error(deployment: str, outcome: Outcome) -> bytes:
    type_ = _TYPE_FOR_CLASS.get(outcome.cls, "api_error")
    message = stream_error_message(deployment, outcome)
    return b"event: error\ndata: " + error_body(type_, message) + b"\n\n"


def _validate(body: Any, schema: EndpointSchema) -> dict[str, Any]:
    """The generic field checks plus what Anthropic itself would reject with a 400."""
    checked = validate(body, schema)
    if "max_tokens" in schema.required and checked["max_tokens"] < 1:
        raise ApiError(400, "max_tokens: must be at least 1.", param="max_tokens")
    for i, message in enumerate(checked["messages"]):
        if message["role"] not in _ROLES:
            raise ApiError(
                400,
                f"messages.{i}.role: Input should be 'user' or 'assistant' (put system prompts "
                "in the top-level 'system' field).",
                param=f"messages.{i}.role",
            )
        content = message.get("content")
        if not isinstance(content, str | list):
            raise ApiError(
                400,
                f"messages.{i}.content: must be a string or a list of content blocks.",
                param=f"messages.{i}.content",
            )
        if isinstance(content, list) and not all(
            isinstance(b, dict) and isinstance(b.get("type"), str) for b in content
        ):
            raise ApiError(
                400,
                f"messages.{i}.content: every content block must be an object with a 'type'.",
                param=f"messages.{i}.content",
            )
    return checked


ANTHROPIC = Inbound(
    "anthropic", _validate, _error, _final_error, _stream_error, forwarded=("anthropic-beta",)
)


async def _count_tokens(ex: Exchange, group: ModelGroup, body: dict[str, Any]) -> Answer:
    """Input tokens of a Messages body, from the first deployment of the group that can count
    them (an Anthropic vendor asks the vendor), else estimated (~4 characters a token)."""
    adapters = ex.generation.adapters
    count: int | None = None
    for dep, _ in group.members:
        count = await adapters[dep.config.vendor].count_tokens(dep.config, body)
        if count is not None:
            break
    if count is None:  # ~4 bytes of JSON per token: a deliberate over- rather than under-estimate
        sized = [body.get("system"), body["messages"], body.get("tools")]
        count = max(1, len(orjson.dumps(sized)) // 4)
    await ex.settle_without_tokens()
    return Answer(
        200, {"x-request-id": ex.rid, **ex.ticket.headers}, orjson.dumps({"input_tokens": count})
    )


ENDPOINTS = (
    Endpoint("/v1/messages", "messages", MESSAGES, ANTHROPIC),
    Endpoint(
        "/v1/messages/count_tokens", "messages/count_tokens", COUNT_TOKENS, ANTHROPIC, _count_tokens
    ),
)
