"""Reading and validating inbound request bodies, as data-driven checks.

The body is read once, size-limited, parsed once (orjson) and checked against a small
per-endpoint table of known fields. Unknown fields are not errors: they are passed
through, so clients can use vendor parameters this proxy has never heard of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson

from proxy.core.errors import ApiError
from proxy.listener import BodyTooLarge, InboundRequest

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "EndpointSchema", "read_json", "validate"]


@dataclass(frozen=True, slots=True)
class EndpointSchema:
    name: str
    required: tuple[str, ...]
    # field -> accepted Python types (JSON null is accepted for every optional field)
    fields: Mapping[str, tuple[type, ...]]
    streamable: bool = True
    # list field -> required item type and keys each item must have
    items: Mapping[str, tuple[type, tuple[str, ...]]] | None = None


_NUM = (int, float)
_COMMON: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "stream": (bool,),
    "stream_options": (dict,),
    "temperature": _NUM,
    "top_p": _NUM,
    "n": (int,),
    "max_tokens": (int,),
    "presence_penalty": _NUM,
    "frequency_penalty": _NUM,
    "logit_bias": (dict,),
    "stop": (str, list),
    "user": (str,),
    "seed": (int,),
    "logprobs": (bool, int),
}

CHAT = EndpointSchema(
    "chat completions",
    required=("model", "messages"),
    fields={
        **_COMMON,
        "messages": (list,),
        "max_completion_tokens": (int,),
        "top_logprobs": (int,),
        "tools": (list,),
        "tool_choice": (str, dict),
        "parallel_tool_calls": (bool,),
        "response_format": (dict,),
        "metadata": (dict,),
        "logprobs": (bool,),
    },
    items={"messages": (dict, ("role",)), "tools": (dict, ("type",))},
)
COMPLETIONS = EndpointSchema(
    "completions",
    required=("model", "prompt"),
    fields={**_COMMON, "prompt": (str, list), "suffix": (str,), "echo": (bool,), "best_of": (int,)},
)
EMBEDDINGS = EndpointSchema(
    "embeddings",
    required=("model", "input"),
    fields={
        "model": (str,),
        "input": (str, list),
        "encoding_format": (str,),
        "dimensions": (int,),
        "user": (str,),
    },
    streamable=False,
)

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


def _describe(types: tuple[type, ...]) -> str:
    names = [_TYPE_NAMES[t] for t in types if not (t is float and int in types)]
    if types == _NUM:
        names = ["a number"]
    return " or ".join(names)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "an array"),
        (dict, "an object"),
    ):
        if isinstance(value, t):
            return name
    return type(value).__name__


def validate(body: Any, schema: EndpointSchema) -> dict[str, Any]:
    """Check a parsed body against `schema`; raise ApiError(400) naming the first problem."""
    if not isinstance(body, dict):
        raise ApiError(400, f"The request body must be a JSON object, got {_json_type(body)}.")
    for name in schema.required:
        value = body.get(name)
        if value is None:
            raise ApiError(
                400,
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
    fields = schema.fields
    for name, value in body.items():
        types = fields.get(name)
        if types is None or value is None:
            continue
        # bool is a subclass of int in Python but not a number in JSON.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ApiError(
                400,
                f"Invalid type for '{name}': expected {_describe(types)}, but got {_json_type(value)}.",
                param=name,
                code="invalid_type",
            )
    if not schema.streamable and body.get("stream"):
        raise ApiError(
            400,
            f"Streaming is not supported for {schema.name}.",
            param="stream",
            code="invalid_value",
        )
    if schema.items:
        for name, (item_type, keys) in schema.items.items():
            items = body.get(name)
            if items is None:
                continue
            if name in schema.required and not items:
                raise ApiError(
                    400, f"'{name}' must not be empty.", param=name, code="invalid_value"
                )
            for i, item in enumerate(items):
                if not isinstance(item, item_type):
                    raise ApiError(
                        400,
                        f"Invalid type for '{name}[{i}]': expected {_TYPE_NAMES[item_type]}, "
                        f"but got {_json_type(item)}.",
                        param=f"{name}[{i}]",
                        code="invalid_type",
                    )
                for key in keys:
                    if not isinstance(cast(dict[str, Any], item).get(key), str):
                        raise ApiError(
                            400,
                            f"Missing required parameter: '{name}[{i}].{key}'.",
                            param=f"{name}[{i}].{key}",
                            code="missing_required_parameter",
                        )
    return body


async def read_json(request: InboundRequest, limit: int) -> tuple[bytes, Any]:
    """Read the body once (at most `limit` bytes) and parse it. Raises ApiError on bad input."""
    ctype = request.content_type
    if (
        ctype != "application/json"
        and not ctype.endswith("+json")
        and request.headers.get("Content-Type")
    ):
        raise ApiError(
            415,
            f"Unsupported Content-Type '{ctype}': send the body as JSON with 'Content-Type: application/json'.",
            code="unsupported_media_type",
        )
    try:
        raw = await request.read_body(limit)
    except BodyTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        raise ApiError(
            408,
            "The request body did not arrive in time (server.body_timeout_s).",
            code="request_timeout",
        ) from None
    if not raw:
        raise ApiError(400, "The request body is empty: send a JSON object.")
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400, f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than this proxy accepts ({limit} bytes; server.max_body_bytes).",
        code="request_too_large",
    )
