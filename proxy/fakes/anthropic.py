"""Fake Anthropic vendor: the Messages API (JSON and the full SSE event sequence),
`count_tokens` and the model list.

Errors are Anthropic's (VENDOR_WIRE_FORMATS.md 2.3): `{"type": "error", "error": {...}}`
bodies, 529 `overloaded_error`, the credit-balance 400 that is really a quota, `retry-after`
and `anthropic-ratelimit-*` headers on 429s, and mid-stream `event: error`. Answers report
cache usage the Anthropic way: `input_tokens` is the uncached part only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from aiohttp import web

from proxy.fakes.base import (
    Call,
    FakeVendor,
    Fault,
    Rejected,
    Route,
    Usage,
    bad_gateway,
    estimate_tokens,
    overridden_body,
    seconds_text,
    text_chars,
)
from proxy.fakes.messages import MessageAnswer

__all__ = ["ANTHROPIC_ERRORS", "FakeAnthropic"]

#: kind -> (status, error type, message template); ``{model}`` is the request's model.
ANTHROPIC_ERRORS: dict[str, tuple[int, str, str]] = {
    "insufficient_quota": (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits.",
    ),
    "rate_limited": (
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit "
        "(https://docs.claude.com/en/api/rate-limits); see the response headers for current "
        "usage. Please reduce the prompt length or the maximum tokens requested, or try again "
        "later.",
    ),
    "request_too_large": (
        413,
        "request_too_large",
        "Request exceeds the maximum allowed number of bytes.",
    ),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
    "bad_request": (
        400,
        "invalid_request_error",
        'messages: roles must alternate between "user" and "assistant", but found multiple '
        '"user" roles in a row',
    ),
    "context_too_long": (
        400,
        "invalid_request_error",
        "prompt is too long: 207791 tokens > 200000 maximum",
    ),
    "auth_error": (401, "authentication_error", "invalid x-api-key"),
    "model_not_found": (404, "not_found_error", "model: {model}"),
}

_KIND_FOR_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "auth_error",
    404: "model_not_found",
    413: "request_too_large",
    429: "rate_limited",
    500: "server_error",
    502: "bad_gateway",
    529: "overloaded",
    503: "overloaded",
}


def _error_body(type_: str, message: str, request_id: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}
    )


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return (
        b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"
    )


def _prompt_chars(body: dict[str, Any]) -> int:
    return text_chars(body.get("system")) + text_chars(body.get("messages"))


class FakeAnthropic(FakeVendor):
    """An Anthropic Messages vendor (``base_url`` is the origin, no path).

    Answers ``f"Hello from {name}"`` plus filler words in ``chunks`` pieces (``output_tokens``
    = pieces, ``max_tokens`` honoured with ``stop_reason: "max_tokens"``); with ``tools`` it
    calls each tool ``tool_choice`` allows unless the last user turn holds a
    ``tool_result``; ``thinking`` and ``output_config.format`` are honoured (see
    ``proxy.fakes.messages``).
    """

    vendor_type: ClassVar[str] = "anthropic"
    base_path: ClassVar[str] = ""
    default_models: ClassVar[tuple[str, ...]] = ("claude-sonnet-4-5", "claude-haiku-4-5")

    def llm_routes(self) -> Sequence[Route]:
        return (
            Route("POST", "/v1/messages", self._messages),
            Route("POST", "/v1/messages/count_tokens", self._count_tokens),
        )

    def probe_routes(self) -> Sequence[Route]:
        return (Route("GET", "/v1/models", self._list_models),)

    def is_authorized(self, request: web.Request) -> bool:
        return request.headers.get("x-api-key") == self.api_key

    # ------------------------------------------------------------------ renderers

    def _request_id(self) -> str:
        return "req_" + self.next_id()

    def error_response(self, call: Call, fault: Fault) -> web.Response:
        kind = fault.error or _KIND_FOR_STATUS.get(fault.status or 500)
        headers: dict[str, str] = {"request-id": self._request_id()}
        if fault.retry_after_s is not None:
            headers["retry-after"] = seconds_text(max(1.0, fault.retry_after_s))
        if kind == "rate_limited":
            retry = fault.retry_after_s if fault.retry_after_s is not None else 1.0
            reset = datetime.now(UTC) + timedelta(seconds=retry)
            headers["anthropic-ratelimit-requests-limit"] = "50"
            headers["anthropic-ratelimit-requests-remaining"] = "0"
            headers["anthropic-ratelimit-requests-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        if kind == "bad_gateway" and fault.body is None:
            return bad_gateway(fault, headers)
        status = fault.status
        body = overridden_body(fault)
        if body is None and kind in ANTHROPIC_ERRORS:
            default_status, type_, template = ANTHROPIC_ERRORS[kind]
            model = call.body.get("model") if isinstance(call.body.get("model"), str) else "claude"
            body = _error_body(
                type_, fault.message or template.format(model=model), headers["request-id"]
            )
            status = status or default_status
        elif body is None:
            assert status is not None
            type_ = "api_error" if status >= 500 else "invalid_request_error"
            body = _error_body(
                type_, fault.message or f"Fake {status} error", headers["request-id"]
            )
        return web.Response(
            status=status or 500, body=body, headers=headers, content_type="application/json"
        )

    def auth_error_response(self, call: Call) -> web.Response:
        body = _error_body("authentication_error", "invalid x-api-key", self._request_id())
        return web.Response(status=401, body=body, content_type="application/json")

    def bad_request_response(self, call: Call, message: str | None) -> web.Response:
        text = (
            message
            or "There was an issue with the formatting of your request: the body is not valid JSON."
        )
        body = _error_body("invalid_request_error", text, self._request_id())
        return web.Response(status=400, body=body, content_type="application/json")

    def stream_error_event(self, call: Call, fault: Fault, sent: int) -> bytes:
        if isinstance(fault.body, bytes):
            return b"event: error\ndata: " + fault.body + b"\n\n"
        if fault.body is not None:
            return b"event: error\ndata: " + orjson.dumps(fault.body) + b"\n\n"
        _, type_, template = ANTHROPIC_ERRORS.get(
            fault.error or "overloaded", ANTHROPIC_ERRORS["overloaded"]
        )
        message = fault.message or template.format(model=call.body.get("model"))
        return _event("error", {"error": {"type": type_, "message": message}})

    def rejected_response(self, call: Call, rejected: Rejected) -> web.Response:
        type_ = "not_found_error" if rejected.status == 404 else "invalid_request_error"
        body = _error_body(type_, rejected.message, self._request_id())
        return web.Response(status=rejected.status, body=body, content_type="application/json")

    # ------------------------------------------------------------------ handlers

    def _invalid(self, message: str) -> web.Response:
        body = _error_body("invalid_request_error", message, self._request_id())
        return web.Response(status=400, body=body, content_type="application/json")

    def _usage(self, body: dict[str, Any], completion: int) -> tuple[Usage, dict[str, int]]:
        cached = self.cached_tokens
        prompt = max(estimate_tokens(_prompt_chars(body)), cached)
        usage = {
            "input_tokens": prompt - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": completion,
        }
        return Usage(prompt, completion, cached), usage

    async def _messages(self, call: Call) -> web.StreamResponse:
        body = call.body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._invalid("model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return self._invalid("max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._invalid("messages: Field required")
        answer = MessageAnswer.plan(
            body, self.pieces, chunks=self.chunks, name=self.name, new_id=self.next_id
        )
        completion = answer.output_tokens
        usage, usage_json = self._usage(body, completion)
        msg_id = "msg_" + self.next_id()
        if body.get("stream") is not True:
            return await self.json_response(
                call,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": answer.content(),
                    "stop_reason": answer.stop_reason,
                    "stop_sequence": None,
                    "usage": usage_json,
                },
                usage,
            )
        start_usage = {**usage_json, "output_tokens": 1}
        events = [
            _event(
                "message_start",
                {
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    }
                },
            ),
            *answer.block_events(_event),
            _event(
                "message_delta",
                {
                    "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": completion},
                },
            ),
            _event("message_stop", {}),
        ]
        return await self.stream_response(call, events, trailer=None, usage=usage)

    async def _count_tokens(self, call: Call) -> web.StreamResponse:
        body = call.body
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            return self._invalid("model and messages are required")
        return web.Response(
            body=orjson.dumps({"input_tokens": estimate_tokens(_prompt_chars(body))}),
            content_type="application/json",
        )

    async def _list_models(self, call: Call) -> web.StreamResponse:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in self.models
        ]
        payload = {"data": data, "has_more": False, "first_id": None, "last_id": None}
        return web.Response(body=orjson.dumps(payload), content_type="application/json")
