"""The OpenAI-compatible inbound API: /v1/chat/completions, /v1/completions, /v1/embeddings,
and /v1/models (the model groups).

The proxied endpoints are `Endpoint`s of the shared pipeline (`proxy.api.pipeline`); what
is OpenAI's here is the error shape, including the stream error event that ends a stream
broken after its first byte: an OpenAI-style error chunk and no `[DONE]`, so SDKs raise
instead of reporting a truncated answer as complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from proxy.api import GATEWAY
from proxy.api.errors import error_answer, error_body
from proxy.api.pipeline import Endpoint, Inbound, stream_error_message
from proxy.api.validation import CHAT, COMPLETIONS, EMBEDDINGS, validate
from proxy.core.errors import ApiError
from proxy.core.outcomes import FinalError, Outcome
from proxy.listener import Answer

__all__ = ["ENDPOINTS", "OPENAI", "final_error_answer", "public_routes"]


def _stream_error(deployment: str, outcome: Outcome) -> bytes:
    message = stream_error_message(deployment, outcome)
    return b"data: " + error_body(message, "server_error", "upstream_stream_error") + b"\n\n"


def final_error_answer(final: FinalError, headers: Mapping[str, str]) -> Answer:
    """Every candidate failed: the aggregated error in OpenAI's shape."""
    return Answer(final.status, headers, orjson.dumps(final.body()))


OPENAI = Inbound("openai", validate, error_answer, final_error_answer, _stream_error)

ENDPOINTS = (
    Endpoint("/v1/chat/completions", "chat/completions", CHAT, OPENAI),
    Endpoint("/v1/completions", "completions", COMPLETIONS, OPENAI),
    Endpoint("/v1/embeddings", "embeddings", EMBEDDINGS, OPENAI),
)


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-proxy"}


async def list_models(request: web.Request) -> web.Response:
    groups = request.app[GATEWAY].groups
    data = [_model_entry(name) for name in groups]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    if name not in request.app[GATEWAY].groups:
        raise ApiError(
            404,
            f"The model '{name}' does not exist on this proxy.",
            code="model_not_found",
            param="model",
        )
    return web.Response(body=orjson.dumps(_model_entry(name)), content_type="application/json")


def public_routes() -> list[web.RouteDef]:
    """Routes that need no client key and reach no vendor."""
    return [
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model:.+}", get_model),
    ]
