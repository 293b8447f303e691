"""The OpenAI-compatible inbound API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Each handler reads and validates the body once, asks the router for a served attempt,
and relays it: JSON as the vendor's bytes, streams chunk by chunk as they arrive. Until
the first byte reaches the client every failure is failed over by the router; after it,
a failure ends the stream with an OpenAI-style error event and no `[DONE]`, so SDKs
raise instead of reporting a truncated answer as complete.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proxy.accesslog import AccessLog
from proxy.api.errors import error_body, json_error
from proxy.api.validation import CHAT, COMPLETIONS, EMBEDDINGS, EndpointSchema, read_json, validate
from proxy.core.errors import ApiError
from proxy.core.outcomes import FinalError, Outcome, OutcomeClass
from proxy.gateway import Gateway
from proxy.limits import OPEN, ClientState, Ticket
from proxy.listener import FastEventStream, FastRequest, ProxiedRequest
from proxy.metrics import UNKNOWN_GROUP
from proxy.routing.router import AllFailed, Attempt, Served, Trace
from proxy.vendors.base import AttemptFailed, UpstreamCall

__all__ = ["GATEWAY", "OPENAI", "Inbound", "proxy_request", "routes"]

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)

_getrandbits = random.getrandbits
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_CLIENT_GONE = Outcome(OutcomeClass.CLIENT_CANCELLED, None, None, "the client disconnected")


def request_id(request: ProxiedRequest) -> str:
    """The client's x-request-id if it is sane (bounded, printable), else a new one."""
    rid = request.headers.get("x-request-id")
    if rid is not None and _REQUEST_ID_RE.match(rid):
        return rid
    # A correlation id, not a secret: the Mersenne Twister (re-seeded in forked workers by
    # the random module) instead of os.urandom, whose syscall cost 1.5% of a request's CPU.
    return f"{_getrandbits(96):024x}"


def stream_error_message(served: Served, outcome: Outcome) -> str:
    return f"Upstream stream failed: {served.deployment.id} {outcome.cls}: {outcome.message}"


def stream_error_event(served: Served, outcome: Outcome) -> bytes:
    message = stream_error_message(served, outcome)
    return b"data: " + error_body(message, "server_error", "upstream_stream_error") + b"\n\n"


def final_error_response(final: FinalError, headers: Mapping[str, str]) -> web.Response:
    return web.Response(
        status=final.status,
        body=orjson.dumps(final.body()),
        content_type="application/json",
        headers=headers,
    )


def _no_forwarded_headers(request: ProxiedRequest) -> Mapping[str, str]:
    return {}


@dataclass(frozen=True, slots=True)
class Inbound:
    """What differs between the inbound APIs (OpenAI, Anthropic) around the shared relay:
    the wire format requests arrive in, validation, and how errors look to the client."""

    api: str
    validate: Callable[[Any, EndpointSchema], dict[str, Any]]
    error: Callable[[ApiError, Mapping[str, str]], web.Response]
    final_error: Callable[[FinalError, Mapping[str, str]], web.Response]
    stream_error: Callable[[Served, Outcome], bytes]
    forward_headers: Callable[[ProxiedRequest], Mapping[str, str]] = _no_forwarded_headers


OPENAI = Inbound("openai", validate, json_error, final_error_response, stream_error_event)


async def proxy_request(
    request: ProxiedRequest,
    endpoint: str,
    schema: EndpointSchema,
    inbound: Inbound = OPENAI,
) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    gw.metrics.in_flight.inc()
    started = time.monotonic()
    rid = request_id(request)
    trace = Trace()
    group_name = UNKNOWN_GROUP
    status = 500
    served: Served | None = None
    stream = False
    client: ClientState | None = None
    ticket: Ticket = OPEN
    first_byte_s: float | None = None
    try:
        client = gw.limits.authenticate(request.headers)
        raw, parsed = await read_json(request, gw.config.server.max_body_bytes)
        body = inbound.validate(parsed, schema)
        model = body["model"]
        group = gw.groups.get(model)
        if group is None:
            raise ApiError(
                404,
                f"The model '{model}' does not exist on this proxy. Use one of its model groups: "
                f"{', '.join(sorted(gw.groups))} (GET /v1/models lists them).",
                code="model_not_found",
                param="model",
            )
        group_name = group.name
        await gw.limits.ready(client, endpoint, body, len(raw))
        ticket = gw.limits.admit(client, group_name, endpoint, body, len(raw))
        stream = body.get("stream") is True
        # A keyed client's stream usage is needed for its limits and the ledger, asked or not.
        call = UpstreamCall(
            endpoint,
            raw,
            body,
            stream,
            rid,
            api=inbound.api,
            forward_headers=inbound.forward_headers(request),
            proxy_usage=stream and client is not None,
            session_id=request.headers.get("x-session-id"),
        )
        served = await gw.router.run(
            group, call, started + gw.config.server.request_timeout_s, trace
        )
        trace.attempts.append(_success_attempt(served))
        headers = {
            "x-request-id": rid,
            "x-proxy-deployment": served.deployment.id,
            "x-proxy-attempts": trace.header(),
            **ticket.headers,
        }
        status = 200
        if stream and served.response.content_type == "text/event-stream":
            return await _relay_stream(request, served, headers, started, ticket, inbound)
        await _settle(gw, ticket, served)
        first_byte_s = time.monotonic() - started
        return web.Response(
            body=served.response.body, content_type="application/json", headers=headers
        )
    except ApiError as err:
        status = err.status
        extra = {"x-request-id": rid}
        if client is not None and not err.headers:
            extra.update(gw.limits.headers(client))
        return inbound.error(err, extra)
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's "client closed request")
        raise
    except AllFailed as failed:
        final = failed.error
        status = final.status
        headers = {
            "x-request-id": rid,
            "x-proxy-attempts": failed.trace.header(),
            **final.headers(),
            **ticket.headers,
        }
        return inbound.final_error(final, headers)
    finally:
        ticket.settle(None, None, served=False)  # a no-op once the answer has settled it
        # The rest (metrics, the router's bookkeeping, the access log) runs on the loop's
        # next turn, once aiohttp has sent the answer: it stays off the client's critical
        # path, and still runs before the loop reads another request (so a client that
        # scrapes /metrics after its answer sees it counted).
        gw.loop.call_soon(
            _request_done,
            gw,
            request,
            rid,
            client,
            group_name,
            status,
            started,
            first_byte_s,
            trace,
            served,
            stream,
        )


def _request_done(
    gw: Gateway,
    request: ProxiedRequest,
    rid: str,
    client: ClientState | None,
    group: str,
    status: int,
    started: float,
    first_byte_s: float | None,
    trace: Trace,
    served: Served | None,
    stream: bool,
) -> None:
    duration = time.monotonic() - started
    metrics = gw.metrics
    if served is not None:
        served.finish()  # a JSON answer's; a relayed stream has finished it already
    if first_byte_s is not None:
        metrics.first_byte(group, first_byte_s)
    metrics.in_flight.dec()
    metrics.request_done(group, status, duration)
    if AccessLog.enabled():
        _log(gw.loop, request, rid, client, group, status, duration, trace, served, stream)


def _success_attempt(served: Served) -> Attempt:
    return Attempt(
        served.deployment.id, OutcomeClass.SUCCESS, served.ttfb_s, served.response.status
    )


async def _settle(gw: Gateway, ticket: Ticket, served: Served) -> None:
    """Account the served answer and wait (bounded) until its usage is durable."""
    batch = ticket.settle(served.response.usage, served.deployment.config.price, served=True)
    if batch is not None:
        await gw.ledger.durable(batch)


class _EventStream(web.StreamResponse):
    """The headers leave with the first chunk, which is already in hand when the response is
    prepared: one send to the client instead of two (a send is most of a stream's CPU)."""

    _send_headers_immediately = False


async def _relay_stream(
    request: ProxiedRequest,
    served: Served,
    headers: dict[str, str],
    started: float,
    ticket: Ticket,
    inbound: Inbound,
) -> web.StreamResponse:
    headers["Content-Type"] = "text/event-stream"
    headers["Cache-Control"] = "no-cache"
    resp: web.StreamResponse
    if isinstance(request, FastRequest):
        resp = request.event_stream(200, headers)  # its head leaves with the first chunk
    else:
        resp = _EventStream(status=200, headers=headers)
    failure: Outcome | None = None
    try:
        if not isinstance(request, FastRequest):
            await resp.prepare(request)
        await resp.write(served.response.body)
        request.app[GATEWAY].metrics.first_byte(served.group.name, time.monotonic() - started)
        try:
            if isinstance(resp, FastEventStream):
                await served.response.relay(resp)
            else:
                async for chunk in served.response.rest():
                    await resp.write(chunk)
        except AttemptFailed as failed:
            failure = failed.outcome
            if not failed.error_event_sent:
                await resp.write(inbound.stream_error(served, failure))
        # The response completes only once its usage is on disk: a crash loses in-flight requests only.
        await _settle(request.app[GATEWAY], ticket, served)
        await resp.write_eof()
    except ConnectionResetError:
        failure = _CLIENT_GONE
    except asyncio.CancelledError:
        failure = _CLIENT_GONE
        raise
    finally:
        served.finish(failure)
        ticket.settle(served.response.usage, served.deployment.config.price, served=True)
    return resp


def _log(
    loop: asyncio.AbstractEventLoop,
    request: ProxiedRequest,
    rid: str,
    client: ClientState | None,
    group: str,
    status: int,
    duration: float,
    trace: Trace,
    served: Served | None,
    stream: bool,
) -> None:
    record: dict[str, Any] = {
        "event": "request",
        "request_id": rid,
        "method": request.method,
        "path": request.path,
        "client": client.name if client is not None else None,
        "model_group": group,
        "status": status,
        "stream": stream,
        "duration_ms": round(duration * 1000, 2),
        "attempts": [_attempt_record(a) for a in trace.attempts],
    }
    if served is not None:
        record["deployment"] = served.deployment.id
        usage = served.response.usage
        if usage is not None:
            record["tokens"] = {
                "prompt": usage.prompt,
                "completion": usage.completion,
                "cached_prompt": usage.cached_prompt,
            }
    AccessLog.write(record, loop)


def _attempt_record(attempt: Attempt) -> dict[str, Any]:
    record: dict[str, Any] = {
        "deployment": attempt.deployment,
        "outcome": attempt.outcome_class,
        "status": attempt.status,
        "latency_ms": round(attempt.latency_s * 1000, 2),
    }
    if attempt.detail is not None:
        record["detail"] = attempt.detail
    return record


async def chat_completions(request: ProxiedRequest) -> web.StreamResponse:
    return await proxy_request(request, "chat/completions", CHAT)


async def completions(request: ProxiedRequest) -> web.StreamResponse:
    return await proxy_request(request, "completions", COMPLETIONS)


async def embeddings(request: ProxiedRequest) -> web.StreamResponse:
    return await proxy_request(request, "embeddings", EMBEDDINGS)


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
        return json_error(
            ApiError(
                404,
                f"The model '{name}' does not exist on this proxy.",
                code="model_not_found",
                param="model",
            )
        )
    return web.Response(body=orjson.dumps(_model_entry(name)), content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/chat/completions", chat_completions),
        web.post("/v1/completions", completions),
        web.post("/v1/embeddings", embeddings),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model:.+}", get_model),
    ]
