"""Fake Gemini (Google AI Studio) vendor: `generateContent` and `streamGenerateContent?alt=sse`.

Errors follow the Google RPC model (VENDOR_WIRE_FORMATS.md 2.4): `RESOURCE_EXHAUSTED` 429s
with `QuotaFailure` and `RetryInfo.retryDelay` (per-minute: a rate limit; per-day: a quota),
`UNAVAILABLE` 503s, an invalid key reported as a 400 with `API_KEY_INVALID`. Streams are
CRLF-framed `data:` events with no terminator; usage (`usageMetadata`, with
`cachedContentTokenCount`) rides on the final chunk; a mid-stream error is a chunk with an
`error` object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
from aiohttp import web

from proxy.fakes.answers import ToolChoice, ToolSpec, plan_calls
from proxy.fakes.base import (
    Call,
    FakeVendor,
    Fault,
    Route,
    Usage,
    bad_gateway,
    estimate_tokens,
    overridden_body,
    seconds_text,
)

__all__ = ["GEMINI_ERRORS", "FakeGemini"]

_HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [
        {"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}
    ],
}

#: kind -> (HTTP status, RPC status, message template); ``{model}`` is the path's model.
GEMINI_ERRORS: dict[str, tuple[int, str, str]] = {
    "insufficient_quota": (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "rate_limited": (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. "
        "Please retry in {retry}s.",
    ),
    "request_too_large": (
        400,
        "INVALID_ARGUMENT",
        "Request payload size exceeds the limit: 20971520 bytes.",
    ),
    "overloaded": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "server_error": (
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    "bad_request": (
        400,
        "INVALID_ARGUMENT",
        'Invalid JSON payload received. Unknown name "foo": Cannot find field.',
    ),
    "context_too_long": (
        400,
        "INVALID_ARGUMENT",
        "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).",
    ),
    "auth_error": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    "model_not_found": (
        404,
        "NOT_FOUND",
        "models/{model} is not found for API version v1beta, or is not supported for generateContent.",
    ),
}

_KIND_FOR_STATUS: dict[int, str] = {
    400: "bad_request",
    403: "auth_error",
    404: "model_not_found",
    429: "rate_limited",
    500: "server_error",
    502: "bad_gateway",
    503: "overloaded",
}

_SEP = b"\r\n\r\n"


def _quota_failure(per: str, model: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": f"GenerateRequestsPer{per}PerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": model},
                "quotaValue": "10",
            }
        ],
    }


def _error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


def _prompt_chars(body: dict[str, Any]) -> int:
    total = 0
    system = body.get("systemInstruction") or body.get("system_instruction") or {}
    for content in [system, *(body.get("contents") or [])]:
        for part in content.get("parts") or () if isinstance(content, dict) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
    return total


def _declarations(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            decls = tool.get("functionDeclarations") or tool.get("function_declarations") or ()
            out.extend(d for d in decls if isinstance(d, dict))
    return out


def _wants_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function to call: the first declared, unless the last turn answers a call."""
    decls = _declarations(body)
    if not decls:
        return None
    contents = body.get("contents") or []
    last = contents[-1] if contents and isinstance(contents[-1], dict) else {}
    if any(
        isinstance(p, dict) and ("functionResponse" in p or "function_response" in p)
        for p in last.get("parts") or ()
    ):
        return None
    return decls[0]


class FakeGemini(FakeVendor):
    """A Gemini vendor (``base_url`` is the origin; the API lives under ``/v1beta``)."""

    vendor_type: ClassVar[str] = "gemini"
    base_path: ClassVar[str] = ""
    default_models: ClassVar[tuple[str, ...]] = ("gemini-2.5-pro", "gemini-2.5-flash")

    def llm_routes(self) -> Sequence[Route]:
        return (Route("POST", "/v1beta/models/{target}", self._generate),)

    def probe_routes(self) -> Sequence[Route]:
        return (Route("GET", "/v1beta/models", self._list_models),)

    def is_authorized(self, request: web.Request) -> bool:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        return key == self.api_key

    # ------------------------------------------------------------------ renderers

    @staticmethod
    def _model(call: Call) -> str:
        target = call.request.match_info.get("target", "")
        return target.split(":", 1)[0] or "gemini-2.5-flash"

    def error_response(self, call: Call, fault: Fault) -> web.Response:
        kind = fault.error or _KIND_FOR_STATUS.get(fault.status or 500)
        headers: dict[str, str] = {}
        if kind == "bad_gateway" and fault.body is None:
            return bad_gateway(fault, headers)
        status = fault.status
        body = overridden_body(fault)
        if body is None and kind in GEMINI_ERRORS:
            default_status, rpc, template = GEMINI_ERRORS[kind]
            model = self._model(call)
            retry = fault.retry_after_s if fault.retry_after_s is not None else 1.0
            message = fault.message or template.format(model=model, retry=seconds_text(retry))
            details: list[dict[str, Any]] = []
            if kind == "rate_limited":
                details = [
                    _quota_failure("Minute", model),
                    _HELP,
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{seconds_text(retry)}s",
                    },
                ]
            elif kind == "insufficient_quota":
                details = [_quota_failure("Day", model), _HELP]
            elif kind == "auth_error":
                details = [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ]
            status = status or default_status
            body = orjson.dumps(_error(status, rpc, message, details))
        elif body is None:
            assert status is not None
            rpc = "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"
            body = orjson.dumps(_error(status, rpc, fault.message or f"Fake {status} error"))
        if fault.retry_after_s is not None and kind not in ("rate_limited",):
            headers["retry-after"] = seconds_text(fault.retry_after_s)
        return web.Response(
            status=status or 500, body=body, headers=headers, content_type="application/json"
        )

    def auth_error_response(self, call: Call) -> web.Response:
        return self.error_response(call, Fault(error="auth_error"))

    def bad_request_response(self, call: Call, message: str | None) -> web.Response:
        text = message or "Invalid JSON payload received. Unexpected token."
        return web.Response(
            status=400,
            body=orjson.dumps(_error(400, "INVALID_ARGUMENT", text)),
            content_type="application/json",
        )

    def stream_error_event(self, call: Call, fault: Fault, sent: int) -> bytes:
        if isinstance(fault.body, bytes):
            return b"data: " + fault.body + _SEP
        if fault.body is not None:
            return b"data: " + orjson.dumps(fault.body) + _SEP
        status, rpc, template = GEMINI_ERRORS.get(
            fault.error or "overloaded", GEMINI_ERRORS["overloaded"]
        )
        message = fault.message or template.format(model=self._model(call), retry="1")
        return b"data: " + orjson.dumps(_error(status, rpc, message)) + _SEP

    # ------------------------------------------------------------------ handlers

    async def _generate(self, call: Call) -> web.StreamResponse:
        target = call.request.match_info["target"]
        model, _, method = target.partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return web.Response(
                status=404,
                body=orjson.dumps(_error(404, "NOT_FOUND", f"Method {method!r} not found.")),
                content_type="application/json",
            )
        body = call.body
        if not isinstance(body.get("contents"), list) or not body["contents"]:
            return self.bad_request_response(
                call, "* GenerateContentRequest.contents: contents is not specified"
            )
        config = body.get("generationConfig") or {}
        limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
        pieces = self.pieces
        finish = "STOP"
        decl = _wants_call(body)
        if decl is None and isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, finish = pieces[:limit], "MAX_TOKENS"
        cached = self.cached_tokens
        prompt = max(estimate_tokens(_prompt_chars(body)), cached)
        completion = len(pieces) if decl is None else 3
        usage = Usage(prompt, completion, cached)
        meta: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": completion,
            "totalTokenCount": prompt + completion,
        }
        if cached:
            meta["cachedContentTokenCount"] = cached
        response_id = self.next_id()

        def chunk(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            out: dict[str, Any] = {
                "candidates": [candidate],
                "modelVersion": model,
                "responseId": response_id,
            }
            if last:
                candidate["finishReason"] = finish
                out["usageMetadata"] = meta
            return out

        if decl is not None:
            name = decl.get("name")
            name = name if isinstance(name, str) else ""
            schema = decl.get("parameters") or decl.get("parametersJsonSchema") or {}
            (planned,) = plan_calls([ToolSpec(name, schema)], ToolChoice(), body["contents"])
            call_part: dict[str, Any] = {"functionCall": {"name": name, "args": planned.input}}
            parts_seq: list[list[dict[str, Any]]] = [[call_part]]
        else:
            parts_seq = [[{"text": p}] for p in pieces]
        if method == "generateContent":
            merged = parts_seq[0] if decl is not None else [{"text": "".join(pieces)}]
            return await self.json_response(call, chunk(merged, True), usage)
        events = [
            b"data: " + orjson.dumps(chunk(parts, i == len(parts_seq) - 1)) + _SEP
            for i, parts in enumerate(parts_seq)
        ]
        return await self.stream_response(call, events, trailer=None, usage=usage)

    async def _list_models(self, call: Call) -> web.StreamResponse:
        data = {
            "models": [
                {
                    "name": f"models/{m}",
                    "displayName": m,
                    "supportedGenerationMethods": ["generateContent"],
                }
                for m in self.models
            ]
        }
        return web.Response(body=orjson.dumps(data), content_type="application/json")
