"""`GET /openapi.json`: an OpenAPI 3.1 description of the proxy's own endpoints.

Request schemas are generated from the same tables the handlers validate with
(`proxy.api.validation`), so the description cannot drift from what is enforced.
Unknown fields are allowed (`additionalProperties: true`): they are passed through.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

from proxy.api.validation import CHAT, COMPLETIONS, EMBEDDINGS, EndpointSchema

__all__ = ["openapi_document", "routes"]

_JSON_TYPES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _field_schema(types: tuple[type, ...]) -> dict[str, Any]:
    names = sorted({_JSON_TYPES[t] for t in types if not (t is int and float in types)})
    return {"type": [*names, "null"]}


def _request_schema(schema: EndpointSchema) -> dict[str, Any]:
    properties = {name: _field_schema(types) for name, types in schema.fields.items()}
    for name in schema.required:
        properties[name] = {"type": properties[name]["type"][:-1]}  # required: not null
    for name, (item_type, keys) in (schema.items or {}).items():
        item: dict[str, Any] = {"type": _JSON_TYPES[item_type]}
        if keys:
            item["required"] = list(keys)
            item["properties"] = {k: {"type": "string"} for k in keys}
        properties[name] = {**properties[name], "items": item}
        if name in schema.required:
            properties[name]["minItems"] = 1
    if not schema.streamable:
        properties["stream"] = {"type": ["boolean", "null"], "enum": [False, None]}
    return {
        "type": "object",
        "required": list(schema.required),
        "properties": properties,
        "additionalProperties": True,
    }


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    error = {
        "description": "An OpenAI-style error",
        "content": {"application/json": {"schema": _ERROR}},
    }
    return {
        "200": ok,
        **{code: error for code in ("400", "404", "413", "415", "429", "500", "502", "503", "504")},
    }


def _llm_operation(summary: str, schema: EndpointSchema) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if schema.streamable:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _request_schema(schema)}},
            },
            "responses": _responses(
                {"description": "The vendor's answer, relayed", "content": content}
            ),
        }
    }


def _get(
    summary: str, ok_type: str = "application/json", statuses: tuple[str, ...] = ()
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": summary, "content": {ok_type: {"schema": {}}}}
    }
    for status in statuses:
        responses[status] = {"description": "Not available"}
    return {"get": {"summary": summary, "responses": responses}}


def openapi_document() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("llm-failover-proxy")
    except PackageNotFoundError:  # pragma: no cover
        ours = "0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-failover-proxy",
            "version": ours,
            "description": "An OpenAI-compatible endpoint that fails over across LLM vendors.",
        },
        "paths": {
            "/v1/chat/completions": _llm_operation("Chat completion (JSON or SSE stream)", CHAT),
            "/v1/completions": _llm_operation("Text completion (JSON or SSE stream)", COMPLETIONS),
            "/v1/embeddings": _llm_operation("Embeddings", EMBEDDINGS),
            "/v1/models": _get("The model groups clients can ask for"),
            "/v1/models/{model}": {
                "get": {
                    "summary": "One model group",
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The model group",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "404": {
                            "description": "No such model group",
                            "content": {"application/json": {"schema": _ERROR}},
                        },
                    },
                }
            },
            "/health/live": _get("Liveness"),
            "/health/ready": _get("Readiness (503 while starting or draining)", statuses=("503",)),
            "/metrics": _get("Prometheus metrics", "text/plain"),
            "/openapi.json": _get("This document"),
        },
    }


@functools.cache
def _document_bytes() -> bytes:
    return orjson.dumps(openapi_document())


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [web.get("/openapi.json", openapi)]
