"""The request pipeline every proxied endpoint shares, whatever its API and lane.

authenticate -> read -> validate -> admit -> route -> answer -> settle -> record

A request takes the gateway's current generation once, when it arrives, and runs on it to
its end: a reload never pairs an old model group with a new router. Each endpoint says
only what differs (`Endpoint`: its method and path, body schema, inbound API and, rarely,
its own steps: where the request comes from when it has no JSON body (`resolve`: a `GET`
by id finds the model group that owns the id), how it is routed (`route`), or an upstream
step that is not a model call (`upstream`)); authentication, the model allow-list and the
client's limits are applied here, for every endpoint, so a new route cannot forget them. The request's bookkeeping
(what it tried, what it was answered, how long it took) is one `Exchange`, which records
the request's metrics and access-log line once its answer has gone out.

Streams: until the first byte reaches the client every failure is failed over by the
router; after it, a failure ends the stream with an error event in the inbound API's own
format (never a silent cut), and the response completes only once its usage is durable.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.accesslog import AccessLog
from proxy.api.validation import EndpointSchema, read_json
from proxy.core.errors import ApiError
from proxy.core.outcomes import FinalError, Outcome, OutcomeClass
from proxy.core.usage import Usage
from proxy.gateway import Gateway, Generation
from proxy.limits import OPEN, ClientState, Ticket
from proxy.listener import Answer, InboundRequest
from proxy.metrics import UNKNOWN_GROUP
from proxy.routing.router import AllFailed, Attempt, ModelGroup, Served, Trace
from proxy.vendors.base import AttemptFailed, StreamOut, UpstreamCall

if TYPE_CHECKING:
    from proxy.tracing.spans import RequestSpan

__all__ = [
    "Endpoint",
    "Exchange",
    "Inbound",
    "Resolve",
    "Route",
    "serve",
    "session_key",
    "stream_error_message",
]

_getrandbits = random.getrandbits
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_CLIENT_GONE = Outcome(OutcomeClass.CLIENT_CANCELLED, None, None, "the client disconnected")
# Forwarded header values: visible ASCII and spaces (RFC 9110 field-vchar without obs-text).
_HEADER_VALUE_RE = re.compile(r"^[\x20-\x7e\t]*$")
_MAX_FORWARDED_HEADER = 4096
# Where a client names the conversation a request belongs to (the cache-affinity key), in
# order: `x-session-id`, the session and thread headers Codex sends, then OpenAI's own
# prompt-cache routing key and Codex's turn metadata in the body.
_SESSION_HEADERS = ("x-session-id", "session-id", "session_id", "thread-id", "thread_id")
_SESSION_METADATA = ("session_id", "thread_id")


@dataclass(frozen=True, slots=True)
class Inbound:
    """What differs between the inbound APIs (OpenAI, Anthropic): how requests are checked,
    how errors look to the client, and which client headers go upstream."""

    api: str
    validate: Callable[[Any, EndpointSchema], dict[str, Any]]
    error: Callable[[ApiError, Mapping[str, str]], Answer]
    final_error: Callable[[FinalError, Mapping[str, str]], Answer]
    stream_error: Callable[[str, Outcome], bytes]  # (deployment id, outcome) -> event bytes
    forwarded: tuple[str, ...] = ()  # client headers sent on to a vendor of this API


Upstream = Callable[["Exchange", ModelGroup, dict[str, Any]], Awaitable[Answer]]
Resolve = Callable[["Exchange"], Awaitable[dict[str, Any]]]
Route = Callable[["Exchange", ModelGroup, UpstreamCall, float], Awaitable[Served]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One proxied route. `name` is what an adapter is asked for (`UpstreamCall.endpoint`).

    `resolve` stands in for reading the JSON body of a request that has none (it returns
    the body the rest of the pipeline sees: `model` names the group the allow-list and
    limits apply to); `route` replaces `Router.run(group, call, deadline, trace)` (e.g. to
    send a request to the deployment that holds the state it refers to); `upstream`
    replaces the router for an endpoint that is not a model call (token counts)."""

    path: str
    name: str
    schema: EndpointSchema
    inbound: Inbound
    upstream: Upstream | None = None
    method: str = "POST"
    resolve: Resolve | None = None
    route: Route | None = None


def request_id(headers: Mapping[str, str]) -> str:
    """The client's x-request-id if it is sane (bounded, printable), else a new one."""
    rid = headers.get("x-request-id")
    if rid is not None and _REQUEST_ID_RE.match(rid):
        return rid
    # A correlation id, not a secret: the Mersenne Twister (re-seeded in forked workers by
    # the random module), not a system call per request to os.urandom.
    return f"{_getrandbits(96):024x}"


class Exchange:
    """One request's bookkeeping, from arrival to its access-log line."""

    __slots__ = (
        "client",
        "endpoint",
        "first_byte_s",
        "gateway",
        "generation",
        "group",
        "request",
        "rid",
        "served",
        "span",
        "started",
        "status",
        "stream",
        "ticket",
        "trace",
    )

    def __init__(self, gateway: Gateway, request: InboundRequest, endpoint: Endpoint) -> None:
        self.gateway = gateway
        self.generation: Generation = gateway.current
        self.request = request
        self.endpoint = endpoint
        self.started = time.monotonic()
        self.rid = request_id(request.headers)
        self.trace = Trace()
        # The request's OpenTelemetry span, when this generation traces.
        self.span: RequestSpan | None = None
        tracing = self.generation.tracing
        if tracing is not None:
            self.span = self.trace.span = tracing.request(
                request, endpoint.path, endpoint.name, self.rid
            )
        self.group = UNKNOWN_GROUP
        self.status = 500
        self.client: ClientState | None = None
        self.ticket: Ticket = OPEN
        self.served: Served | None = None
        self.stream = False
        self.first_byte_s: float | None = None

    def end(self) -> None:
        """The answer is settled: give back what the ticket still holds, and record the
        request on the loop's next turn, once the lane has sent the answer (off the client's
        critical path, and before the loop reads another request, so a client that scrapes
        /metrics after its answer sees it counted)."""
        self.ticket.settle(None, None, served=False)  # a no-op once the answer settled it
        self.gateway.loop.call_soon(self._record)

    def _record(self) -> None:
        gw = self.gateway
        duration = time.monotonic() - self.started
        metrics = gw.metrics
        if self.served is not None:
            self.served.finish()  # a JSON answer's; a relayed stream has finished it already
        if self.span is not None:
            self.span.finish(self.status)
        if self.first_byte_s is not None:
            metrics.first_byte(self.group, self.first_byte_s)
        metrics.in_flight.dec()
        metrics.request_done(self.group, self.status, duration)
        if AccessLog.enabled():
            AccessLog.write(self._log_record(duration), gw.loop)

    def _log_record(self, duration: float) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": "request",
            "request_id": self.rid,
            "method": self.request.method,
            "path": self.request.path,
            "client": self.client.name if self.client is not None else None,
            "model_group": self.group,
            "config_version": self.generation.config.version,
            "status": self.status,
            "stream": self.stream,
            "duration_ms": round(duration * 1000, 2),
            "attempts": [_attempt_record(a) for a in self.trace.attempts],
        }
        if self.span is not None:
            record["trace_id"] = self.span.trace_id
        served = self.served
        if served is not None:
            record["deployment"] = served.deployment.id
            if served.response.dropped:
                record["dropped_params"] = list(served.response.dropped)
            usage = served.response.usage
            if usage is not None:
                record["tokens"] = {
                    "prompt": usage.prompt,
                    "completion": usage.completion,
                    "cached_prompt": usage.cached_prompt,
                }
        return record

    async def settle_without_tokens(self) -> None:
        """Account an answer that spent no tokens (a token count, a stored response): a
        request in the ledger, and the ticket's reservation given back."""
        batch = self.ticket.settle(Usage(), None, served=True)
        if batch is not None:
            await self.gateway.ledger.durable(batch)

    def headers(self) -> dict[str, str]:
        """The proxy's headers on a successful answer."""
        served = self.served
        assert served is not None
        headers = {
            "x-request-id": self.rid,
            "x-proxy-deployment": served.deployment.id,
            "x-proxy-attempts": self.trace.header(),
            **self.ticket.headers,
        }
        dropped = served.response.dropped
        if dropped:
            headers["x-proxy-dropped-params"] = ", ".join(dropped)
        if self.span is not None:
            headers["traceresponse"] = self.span.traceresponse
        return headers

    def ids(self) -> dict[str, str]:
        """The headers that identify the request: on every answer, errors too."""
        if self.span is None:
            return {"x-request-id": self.rid}
        return {"x-request-id": self.rid, "traceresponse": self.span.traceresponse}


def _attempt_record(attempt: Attempt) -> dict[str, Any]:
    record: dict[str, Any] = {
        "deployment": attempt.deployment,
        "outcome_class": attempt.outcome_class,
        "status": attempt.status,
        "latency_ms": round(attempt.latency_s * 1000, 2),
    }
    if attempt.detail is not None:
        record["detail"] = attempt.detail
    return record


async def serve(gateway: Gateway, request: InboundRequest, endpoint: Endpoint) -> Answer:
    """Run one request through the pipeline; the answer to send (never raises ApiError)."""
    ex = Exchange(gateway, request, endpoint)
    gen = ex.generation
    inbound = endpoint.inbound
    gateway.metrics.in_flight.inc()
    streaming = False
    try:
        ex.client = gen.limits.authenticate(request.headers)
        if endpoint.resolve is None:
            raw, parsed = await read_json(request, gen.config.server.max_body_bytes)
            body = inbound.validate(parsed, endpoint.schema)
        else:
            raw, body = b"", await endpoint.resolve(ex)
        group = _group(gen, body["model"])
        ex.group = group.name
        forwarded = _forwarded(request.headers, inbound.forwarded)
        if ex.span is not None:
            ex.span.admitting(group.name, body, ex.client)
        await gen.limits.ready(ex.client, endpoint.name, body, len(raw))
        ex.ticket = gen.limits.admit(ex.client, group.name, endpoint.name, body, len(raw))
        if ex.span is not None:
            ex.span.admitted(ex.ticket)
        if endpoint.upstream is not None:
            answer = await endpoint.upstream(ex, group, body)
            ex.status = answer.status
            return answer
        ex.stream = body.get("stream") is True
        # A keyed client's stream usage is needed for its limits and the ledger, asked or not.
        call = UpstreamCall(
            endpoint.name,
            raw,
            body,
            ex.stream,
            ex.rid,
            api=inbound.api,
            forward_headers=forwarded,
            proxy_usage=ex.stream and ex.client is not None,
            session_id=session_key(request.headers, body),
            strict_params=group.config.strict_params,
        )
        deadline = ex.started + gen.config.server.request_timeout_s
        if endpoint.route is None:
            served = ex.served = await gen.router.run(group, call, deadline, ex.trace)
        else:
            served = ex.served = await endpoint.route(ex, group, call, deadline)
        ex.trace.attempts.append(
            Attempt(
                served.deployment.id, OutcomeClass.SUCCESS, served.ttfb_s, served.response.status
            )
        )
        ex.status = 200
        if ex.stream and served.response.content_type == "text/event-stream":
            streaming = True
            headers = {**ex.headers(), "Cache-Control": "no-cache"}
            return Answer(200, headers, content_type="text/event-stream", stream=_relay(ex))
        await _settle(ex)
        ex.first_byte_s = time.monotonic() - ex.started
        return Answer(200, ex.headers(), served.response.body)
    except ApiError as err:
        ex.status = err.status
        extra = ex.ids()
        if ex.trace.attempts:  # deployments skipped as unable to serve the request (Unsupported)
            extra["x-proxy-attempts"] = ex.trace.header()
        if ex.span is not None:
            ex.span.failed("llmproxy.error_code", err.code or str(err.status))
        if ex.client is not None and not err.headers:
            extra.update(gen.limits.headers(ex.client))
        return inbound.error(err, extra)
    except asyncio.CancelledError:
        ex.status = 499  # the client went away (nginx's "client closed request")
        raise
    except AllFailed as failed:
        final = failed.error
        ex.status = final.status
        if ex.span is not None:
            ex.span.failed("llmproxy.outcome_class", str(final.cls))
        headers = {
            **ex.ids(),
            "x-proxy-attempts": failed.trace.header(),
            **final.headers(),
            **ex.ticket.headers,
        }
        return inbound.final_error(final, headers)
    finally:
        if not streaming:
            ex.end()


def _group(gen: Generation, model: str) -> ModelGroup:
    group = gen.groups.get(model)
    if group is None:
        raise ApiError(
            404,
            f"The model '{model}' does not exist on this proxy. Use one of its model groups: "
            f"{', '.join(sorted(gen.groups))} (GET /v1/models lists them).",
            code="model_not_found",
            param="model",
        )
    return group


def session_key(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The conversation this request belongs to, as the client named it (or None)."""
    for name in _SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return value
    key = body.get("prompt_cache_key")
    if isinstance(key, str) and key:
        return key
    metadata = body.get("client_metadata")
    if isinstance(metadata, dict):
        for name in _SESSION_METADATA:
            value = metadata.get(name)
            if isinstance(value, str) and value:
                return value
    return None


def _forwarded(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The client headers that go upstream, checked here: a value no vendor request may
    carry is the client's error (a 400 naming the header), never a vendor's failure."""
    out: dict[str, str] = {}
    for name in names:
        value = headers.get(name)
        if not value:
            continue
        if len(value) > _MAX_FORWARDED_HEADER or not _HEADER_VALUE_RE.match(value):
            raise ApiError(
                400,
                f"The '{name}' header has a value this proxy cannot forward: it must be at most "
                f"{_MAX_FORWARDED_HEADER} characters of visible ASCII.",
                code="invalid_header",
                param=name,
            )
        out[name] = value
    return out


async def _settle(ex: Exchange) -> None:
    """Account the served answer and wait (bounded) until its usage is durable."""
    served = ex.served
    assert served is not None
    batch = ex.ticket.settle(served.response.usage, served.deployment.config.price, served=True)
    if batch is not None:
        await ex.gateway.ledger.durable(batch)


def _relay(ex: Exchange) -> Callable[[StreamOut], Awaitable[None]]:
    """The body of a streamed answer: the vendor's events as they arrive, then the settle."""

    async def relay(out: StreamOut) -> None:
        served = ex.served
        assert served is not None
        failure: Outcome | None = None
        if ex.span is not None:
            out = ex.span.relay(out)
        try:
            if out.send(served.response.body):
                await out.drained()
            ex.gateway.metrics.first_byte(ex.group, time.monotonic() - ex.started)
            try:
                await served.response.relay(out)
            except AttemptFailed as failed:
                failure = failed.outcome
                if not failed.error_event_sent:
                    out.send(ex.endpoint.inbound.stream_error(served.deployment.id, failure))
            # The response completes only once its usage is on disk: a crash loses in-flight
            # requests only.
            await _settle(ex)
        except ConnectionResetError:
            failure = _CLIENT_GONE
            raise
        except asyncio.CancelledError:
            failure = _CLIENT_GONE
            ex.status = 499
            raise
        finally:
            if ex.span is not None:
                ex.span.relayed(failure)
            served.finish(failure)
            ex.ticket.settle(served.response.usage, served.deployment.config.price, served=True)
            ex.end()

    return relay


def stream_error_message(deployment: str, outcome: Outcome) -> str:
    return f"Upstream stream failed: {deployment} {outcome.cls}: {outcome.message}"
