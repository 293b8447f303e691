"""Fake OpenAI-compatible vendor: chat, legacy completions, embeddings, model list.

Shapes follow OpenAI's wire format closely enough for the official ``openai`` SDK to
parse every answer (JSON and SSE), and the error bodies/headers are the ones the
proxy's classifier must recognise (VENDOR_WIRE_FORMATS.md 2.1, 3 and 4.1): telling
``insufficient_quota`` from ``rate_limited`` on the same 429 is the point of the fake.
"""

from __future__ import annotations

import base64
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
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
    sse_data,
    sse_event,
    text_chars,
)
from proxy.fakes.chat import ChatAnswer
from proxy.fakes.responses import InFlight, ResponsesAPI

__all__ = ["OPENAI_ERRORS", "FakeAzureOpenAI", "FakeOpenAI"]

_RATE_LIMIT_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."

#: kind -> (status, type, code, param, message template). ``{model}`` is the request's
#: model, ``{retry}`` the retry-after seconds. Texts from OpenAI's documented errors.
OPENAI_ERRORS: dict[str, tuple[int, str, str | None, str | None, str]] = {
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        None,
        "You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    ),
    "rate_limited": (
        429,
        "requests",
        "rate_limit_exceeded",
        None,
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in {retry}s. " + _RATE_LIMIT_DOCS,
    ),
    "request_too_large": (
        429,
        "tokens",
        "rate_limit_exceeded",
        None,
        "Request too large for {model} in organization org-fake on tokens per min (TPM): "
        "Limit 30000, Requested 342389. The input or output tokens must be reduced in order "
        "to run successfully. " + _RATE_LIMIT_DOCS,
    ),
    "overloaded": (
        503,
        "server_error",
        None,
        None,
        "The engine is currently overloaded, please try again later",
    ),
    "server_error": (
        500,
        "server_error",
        None,
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "bad_request": (
        400,
        "invalid_request_error",
        "invalid_value",
        "messages[0].role",
        "Invalid value: 'robot'. Supported values are: 'system', 'assistant', 'user', "
        "'function', 'tool', and 'developer'.",
    ),
    "context_too_long": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
        "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 342389 tokens. Please reduce the length of the messages.",
    ),
    "auth_error": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        None,
        "Incorrect API key provided: sk-fake***************. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    "model_not_found": (
        404,
        "invalid_request_error",
        "model_not_found",
        None,
        "The model `{model}` does not exist or you do not have access to it.",
    ),
}

#: A bare status (no ``error`` kind) renders the closest kind's body.
_KIND_FOR_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "auth_error",
    404: "model_not_found",
    429: "rate_limited",
    500: "server_error",
    502: "bad_gateway",
    503: "overloaded",
}

_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)
_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
    "field (with blank username) if you're accessing the API from your browser and are "
    "prompted for a username. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)

_DONE = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_fake"


def _error_body(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _vector(item: Any, dims: int) -> list[float]:
    """Deterministic pseudo-embedding in [-1, 1): same input, same vector, any process."""
    data = item.encode() if isinstance(item, str) else orjson.dumps(item)
    h = zlib.crc32(data) or 1
    out = []
    for _ in range(dims):
        h = (h * 1103515245 + 12345) & 0x7FFFFFFF
        out.append(round(h / 0x40000000 - 1.0, 6))
    return out


class FakeOpenAI(FakeVendor):
    """An OpenAI-compatible vendor (``base_url`` ends in ``/v1``).

    Answers ``f"Hello from {name}"`` plus filler words in ``chunks`` pieces
    (``completion_tokens`` = pieces, honouring ``max_tokens``/``max_completion_tokens``
    with ``finish_reason: "length"``); ``prompt_tokens`` ≈ prompt characters // 4.
    """

    vendor_type: ClassVar[str] = "openai"
    base_path: ClassVar[str] = "/v1"
    default_models: ClassVar[tuple[str, ...]] = (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
    )

    def __init__(
        self,
        name: str = "openai",
        *,
        models: Iterable[str] | None = None,
        chunks: int = 5,
        chunk_delay_s: float = 0.0,
        api_key: str | None = None,
        cached_tokens: int = 0,
        embedding_dims: int = 8,
        fault: Fault | None = None,
        seed: int = 0,
        max_recorded: int = 64,
    ) -> None:
        super().__init__(
            name,
            models=models,
            chunks=chunks,
            chunk_delay_s=chunk_delay_s,
            api_key=api_key,
            cached_tokens=cached_tokens,
            fault=fault,
            seed=seed,
            max_recorded=max_recorded,
        )
        self.embedding_dims = embedding_dims
        #: The Responses API endpoints and the responses this fake stored (``.store``).
        self.responses = ResponsesAPI(self)
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": name}
                    for m in self.models
                ],
            }
        )

    # ------------------------------------------------------------------ routes

    def llm_routes(self) -> Sequence[Route]:
        return (*self._model_routes(), *self.responses.routes("/v1"))

    def _model_routes(self) -> tuple[Route, ...]:
        """The endpoints that name their model in the body (Azure: in the path)."""
        return (
            Route("POST", "/v1/chat/completions", self._chat),
            Route("POST", "/v1/completions", self._completions),
            Route("POST", "/v1/embeddings", self._embeddings),
        )

    def probe_routes(self) -> Sequence[Route]:
        return (Route("GET", "/v1/models", self._list_models),)

    # ------------------------------------------------------------------ renderers

    def error_response(self, call: Call, fault: Fault) -> web.Response:
        kind = fault.error or _KIND_FOR_STATUS.get(fault.status or 500)
        headers: dict[str, str] = {}
        if fault.retry_after_s is not None:
            headers["retry-after"] = seconds_text(fault.retry_after_s)
            headers["retry-after-ms"] = str(round(fault.retry_after_s * 1000))
        if kind == "rate_limited":
            retry = fault.retry_after_s if fault.retry_after_s is not None else 1.0
            headers["x-ratelimit-limit-requests"] = "3"
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = f"{seconds_text(retry)}s"
        if kind == "bad_gateway" and fault.body is None:
            return bad_gateway(fault, headers)
        status = fault.status
        body = overridden_body(fault)
        if body is None and kind in OPENAI_ERRORS:
            default_status, type_, code, param, template = OPENAI_ERRORS[kind]
            retry_s = seconds_text(fault.retry_after_s if fault.retry_after_s is not None else 1.0)
            message = fault.message or template.format(model=_model(call), retry=retry_s)
            body = _error_body(message, type_, code, param)
            status = status or default_status
        elif body is None:
            assert status is not None  # is_error without a known kind means a bare status
            type_ = "server_error" if status >= 500 else "invalid_request_error"
            body = _error_body(fault.message or f"Fake {status} error", type_)
        return web.Response(
            status=status or 500, body=body, headers=headers, content_type="application/json"
        )

    def auth_error_response(self, call: Call) -> web.Response:
        auth = call.request.headers.get("Authorization")
        if not auth:
            body = _error_body(_NO_KEY_MESSAGE, "invalid_request_error")
        else:
            key = auth.removeprefix("Bearer ").strip()
            shown = f"{key[:4]}{'*' * max(0, len(key) - 8)}{key[-4:]}" if len(key) > 8 else "***"
            body = _error_body(
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        return web.Response(status=401, body=body, content_type="application/json")

    def bad_request_response(self, call: Call, message: str | None) -> web.Response:
        body = _error_body(message or _BAD_JSON_MESSAGE, "invalid_request_error")
        return web.Response(status=400, body=body, content_type="application/json")

    def rejected_response(self, call: Call, rejected: Rejected) -> web.Response:
        body = _error_body(rejected.message, "invalid_request_error", rejected.code, rejected.param)
        return web.Response(status=rejected.status, body=body, content_type="application/json")

    def stream_error_event(self, call: Call, fault: Fault, sent: int) -> bytes:
        if isinstance(call.state, InFlight):
            return self._responses_error_event(call.state, fault, sent)
        if isinstance(fault.body, bytes):
            return b"data: " + fault.body + b"\n\n"
        if fault.body is not None:
            return sse_data(fault.body)
        message = fault.message or OPENAI_ERRORS["server_error"][4]
        return b"data: " + _error_body(message, "server_error") + b"\n\n"

    def _responses_error_event(self, flight: InFlight, fault: Fault, sent: int) -> bytes:
        """A Responses stream fails with ``response.failed`` (the response, ``status:
        failed``, with its ``error``); ``fault.body`` replaces it, sent as the event its
        ``type`` names (e.g. OpenAI's bare ``error`` event)."""
        if isinstance(fault.body, bytes):
            return b"event: error\ndata: " + fault.body + b"\n\n"
        if fault.body is not None:
            kind = fault.body.get("type")
            return sse_event(kind if isinstance(kind, str) else "error", fault.body)
        message = fault.message or OPENAI_ERRORS["server_error"][4]
        return flight.failed_event("server_error", message, sent)

    # ------------------------------------------------------------------ handlers

    def _plan(self, call: Call) -> tuple[tuple[str, ...], str]:
        """The pieces this answer gets, and its finish_reason (``max_tokens`` honoured)."""
        body = call.body
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        pieces = self.pieces
        if isinstance(limit, int) and 0 < limit < len(pieces):
            return pieces[:limit], "length"
        return pieces, "stop"

    def _missing(self, call: Call, param: str) -> web.Response:
        body = _error_body(
            f"Missing required parameter: '{param}'.",
            "invalid_request_error",
            "missing_required_parameter",
            param,
        )
        return web.Response(status=400, body=body, content_type="application/json")

    async def _chat(self, call: Call) -> web.StreamResponse:
        body = call.body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._missing(call, "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._missing(call, "messages")
        answer = ChatAnswer.plan(body, self.pieces, self.chunks, self.next_id)
        cached = self.cached_tokens
        # Cached tokens are part of prompt_tokens: never report more cached than prompt.
        prompt = max(estimate_tokens(text_chars(messages)), cached)
        completion = answer.completion_tokens
        usage = Usage(prompt, completion, cached)
        usage_json = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        rid = "chatcmpl-" + self.next_id()
        created = int(time.time())
        if body.get("stream") is not True:
            return await self.json_response(
                call,
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": _FINGERPRINT,
                    "choices": answer.choices(),
                    "usage": usage_json,
                },
                usage,
            )
        include_usage = _include_usage(body)
        head = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": _FINGERPRINT,
        }
        if include_usage:
            head["usage"] = None
        events = answer.stream_chunks(head)
        if include_usage:
            events.append(sse_data({**head, "choices": [], "usage": usage_json}))
        return await self.stream_response(call, events, trailer=_DONE, usage=usage)

    async def _completions(self, call: Call) -> web.StreamResponse:
        body = call.body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._missing(call, "model")
        if "prompt" not in body:
            return self._missing(call, "prompt")
        pieces, finish = self._plan(call)
        prompt = estimate_tokens(text_chars(body["prompt"]))
        usage = Usage(prompt, len(pieces))
        usage_json = {
            "prompt_tokens": prompt,
            "completion_tokens": len(pieces),
            "total_tokens": prompt + len(pieces),
        }
        rid = "cmpl-" + self.next_id()
        created = int(time.time())
        head = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": _FINGERPRINT,
        }
        if body.get("stream") is not True:
            choice = {
                "text": "".join(pieces),
                "index": 0,
                "logprobs": None,
                "finish_reason": finish,
            }
            return await self.json_response(
                call, {**head, "choices": [choice], "usage": usage_json}, usage
            )
        include_usage = _include_usage(body)
        if include_usage:
            head["usage"] = None

        def chunk(text: str, finish_reason: str | None) -> bytes:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
            return sse_data({**head, "choices": [choice]})

        events = [chunk(p, None) for p in pieces]
        events.append(chunk("", finish))
        if include_usage:
            events.append(sse_data({**head, "choices": [], "usage": usage_json}))
        return await self.stream_response(call, events, trailer=_DONE, usage=usage)

    async def _embeddings(self, call: Call) -> web.StreamResponse:
        body = call.body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._missing(call, "model")
        raw = body.get("input")
        if raw is None or raw == "" or raw == []:
            return self._missing(call, "input")
        # A list of strings (or of token arrays) is a batch; a string or one token array
        # is a single input.
        items: list[Any] = (
            raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        )
        dims = body.get("dimensions")
        if not isinstance(dims, int) or dims <= 0:
            dims = self.embedding_dims
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        prompt = 0
        for index, item in enumerate(items):
            prompt += estimate_tokens(text_chars(item))
            vector = _vector(item, dims)
            embedding: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return await self.json_response(
            call,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            },
            Usage(prompt, 0),
        )

    async def _list_models(self, call: Call) -> web.StreamResponse:
        return web.Response(body=self._models_body, content_type="application/json")


def _model(call: Call) -> str:
    model = call.body.get("model")
    return model if isinstance(model, str) and model else "gpt-4o"


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class FakeAzureOpenAI(FakeOpenAI):
    """Azure OpenAI's data plane: the OpenAI wire format under
    ``/openai/deployments/{deployment}/...?api-version=...`` with an ``api-key`` header.

    The deployment in the path selects the model (the body's ``model`` is ignored, as on
    Azure); a request without ``api-version`` gets Azure's 404.
    """

    vendor_type: ClassVar[str] = "azure"
    base_path: ClassVar[str] = ""

    def llm_routes(self) -> Sequence[Route]:
        prefix = "/openai/deployments/{deployment}"
        deployment_routes = tuple(
            Route(r.method, prefix + r.path.removeprefix("/v1"), self._azure(r.handler))
            for r in self._model_routes()
        )
        # The Responses API is not under a deployment: the body's model names it. Dated
        # surface (api-version required) and the v1 surface (none needed).
        dated = tuple(
            Route(r.method, r.path, self._versioned(r.handler))
            for r in self.responses.routes("/openai")
        )
        return (*deployment_routes, *dated, *self.responses.routes("/openai/v1"))

    def probe_routes(self) -> Sequence[Route]:
        return (Route("GET", "/openai/models", self._list_models),)

    def is_authorized(self, request: web.Request) -> bool:
        return request.headers.get("api-key") == self.api_key

    def _azure(self, handler: Any) -> Any:
        async def serve(call: Call) -> web.StreamResponse:
            call.body["model"] = call.request.match_info["deployment"]
            response: web.StreamResponse = await handler(call)
            return response

        return self._versioned(serve)

    @staticmethod
    def _versioned(handler: Any) -> Any:
        """Azure's 404 for a request without ``api-version`` (dated surface)."""

        async def serve(call: Call) -> web.StreamResponse:
            if not call.request.query.get("api-version"):
                body = orjson.dumps({"error": {"code": "404", "message": "Resource not found"}})
                return web.Response(status=404, body=body, content_type="application/json")
            response: web.StreamResponse = await handler(call)
            return response

        return serve
