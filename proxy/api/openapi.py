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

from proxy.api.anthropic import COUNT_TOKENS, MESSAGES
from proxy.api.responses import CREATE, INPUT_TOKENS
from proxy.api.validation import CHAT, COMPLETIONS, EMBEDDINGS, EndpointSchema
from proxy.core.version import VERSION

__all__ = ["ADMIN_PATHS", "openapi_document", "routes"]

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


_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}

_LLM_ERRORS = ("400", "404", "413", "415", "429", "500", "502", "503", "504")
# Anthropic's front door also speaks its vendor's statuses: 401/403 for client keys, 529.
_ANTHROPIC_ERRORS = (*_LLM_ERRORS, "401", "403", "529")
_ADMIN_ERRORS = ("400", "401", "403", "404", "413", "415")


def _field_schema(types: tuple[type, ...]) -> dict[str, Any]:
    names = sorted({_JSON_TYPES[t] for t in types if not (t is int and float in types)})
    return {"type": [*names, "null"]}


def _request_schema(schema: EndpointSchema) -> dict[str, Any]:
    properties = {name: _field_schema(types) for name, types in schema.fields.items()}
    for name in schema.required:
        properties[name] = {**properties[name], "type": properties[name]["type"][:-1]}  # not null
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


def _responses(
    ok: dict[str, Any],
    codes: tuple[str, ...] = _LLM_ERRORS,
    error_schema: dict[str, Any] = _ERROR,
) -> dict[str, Any]:
    error = {
        "description": "An error ("
        + ("Anthropic" if error_schema is _ANTHROPIC_ERROR else "OpenAI")
        + " style)",
        "content": {"application/json": {"schema": error_schema}},
    }
    return {"200": ok, **{code: error for code in codes}}


def _llm_operation(
    summary: str, schema: EndpointSchema, *, anthropic: bool = False
) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if schema.streamable:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    ok = {"description": "The vendor's answer, relayed", "content": content}
    request = _request_schema(schema)
    if anthropic:  # what Anthropic itself would reject with a 400 (proxy.api.anthropic)
        if "max_tokens" in schema.required:
            request["properties"]["max_tokens"]["minimum"] = 1
        item = request["properties"]["messages"]["items"]
        item["properties"]["role"] = {"enum": ["user", "assistant"]}
        item["properties"]["content"] = {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"type": "string"}},
                    },
                },
            ]
        }
        item["required"] = [*item["required"], "content"]
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request}},
            },
            "responses": _responses(ok, _ANTHROPIC_ERRORS, _ANTHROPIC_ERROR)
            if anthropic
            else _responses(ok),
        }
    }


def _stored_response(method: str, summary: str) -> dict[str, Any]:
    """An operation on a stored response (sent to the vendor that holds it)."""
    return {
        method: {
            "summary": summary,
            "parameters": [
                {
                    "name": "response_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            ],
            "responses": _responses(
                {
                    "description": "The vendor's answer, relayed",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                (*_LLM_ERRORS, "401", "403"),
            ),
        }
    }


def _admin(
    method: str,
    summary: str,
    *,
    path_param: str | None = None,
    query: dict[str, dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An admin operation: `Authorization: Bearer <admin key>` (or loopback with none set)."""
    params = [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in (query or {}).items()
    ]
    if path_param is not None:
        params.append(
            {"name": path_param, "in": "path", "required": True, "schema": {"type": "string"}}
        )
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"adminKey": []}],
        "responses": _responses(
            {
                "description": summary,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            _ADMIN_ERRORS,
        ),
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return {method: op}


#: The documented admin paths (tests check they match `proxy.api.admin.ADMIN_ROUTES`).
ADMIN_PATHS: dict[str, dict[str, Any]] = {
    "/admin/status": _admin("get", "Deployments, breakers, cooldowns, clients, state backend"),
    "/admin/usage": _admin(
        "get",
        "Usage per client and day",
        query={
            "client": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 366},
        },
    ),
    "/admin/clients/{name}/reset-usage": _admin(
        "post", "Reset a client's usage counters", path_param="name"
    ),
    "/admin/deployments/{id}/breaker": _admin(
        "post",
        "Force a deployment's breaker open (drain) or closed",
        path_param="id",
        body={
            "type": "object",
            "required": ["state"],
            "properties": {"state": {"enum": ["open", "closed"]}},
        },
    ),
    "/admin/deployments/{id}/cooldown": _admin(
        "delete", "End a deployment's cooldown now", path_param="id"
    ),
    "/admin/reload": _admin("post", "Re-read and apply the config file (validated first)"),
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
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-failover-proxy",
            "version": VERSION,
            "description": "An OpenAI-compatible endpoint that fails over across LLM vendors.",
        },
        "paths": {
            "/v1/chat/completions": _llm_operation("Chat completion (JSON or SSE stream)", CHAT),
            "/v1/completions": _llm_operation("Text completion (JSON or SSE stream)", COMPLETIONS),
            "/v1/embeddings": _llm_operation("Embeddings", EMBEDDINGS),
            "/v1/responses": _llm_operation(
                "OpenAI Responses API: create a response (JSON or SSE stream)", CREATE
            ),
            "/v1/responses/input_tokens": _llm_operation(
                "Count a Responses API request's input tokens", INPUT_TOKENS
            ),
            "/v1/responses/{response_id}": {
                **_stored_response("get", "A stored response"),
                **_stored_response("delete", "Delete a stored response"),
            },
            "/v1/responses/{response_id}/input_items": _stored_response(
                "get", "The input items of a stored response"
            ),
            "/v1/responses/{response_id}/cancel": _stored_response(
                "post", "Cancel a background response"
            ),
            "/v1/messages": _llm_operation(
                "Anthropic Messages (JSON or SSE stream)", MESSAGES, anthropic=True
            ),
            "/v1/messages/count_tokens": _llm_operation(
                "Anthropic token count", COUNT_TOKENS, anthropic=True
            ),
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
            **ADMIN_PATHS,
        },
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def _document_bytes() -> bytes:
    return orjson.dumps(openapi_document())


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [web.get("/openapi.json", openapi)]
