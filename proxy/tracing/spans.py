"""The spans of one request, built as it goes: what the pipeline and the router call when
their generation has tracing on (they hold None otherwise and call nothing).

- `RequestSpan`: the SERVER span (HTTP server conventions, plus the GenAI request and
  usage), the parent of everything below; it continues the client's `traceparent`.
- its `admission` child: the client key's limits checked (only for keyed clients).
- `AttemptSpan`: one CLIENT span per upstream attempt (GenAI client conventions): the
  deployment, vendor type, outcome class, phase of a failure, time to first byte, the
  vendor's retry-after and the cooldown applied. Its context is the `traceparent` the
  vendor receives.
- its `relay` sibling: a stream relayed to the client after the commit point, with the
  number of events and why it ended.

Only a sampled (recording) request builds attributes and child spans through the SDK; an
unsampled one still gets its ids (the server span's from the SDK, which samples; each
attempt's made here), so the trace id reaches the access log and the vendor all the same,
at a fraction of the cost.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from proxy.config import ClientConfig, ClientLimits, DeploymentConfig, VendorConfig
from proxy.core.errors import Unsupported
from proxy.core.outcomes import Outcome, OutcomeClass
from proxy.core.usage import Usage
from proxy.tracing.content import Budget, StreamText, input_messages, output_messages
from proxy.tracing.conventions import (
    ADMISSION_SPAN,
    GEN_AI_PROVIDERS,
    OPERATIONS,
    RELAY_SPAN,
    REQUEST_PARAMS,
)
from proxy.vendors.base import StreamOut, UpstreamCall, UpstreamResponse

if TYPE_CHECKING:
    from proxy.listener import InboundRequest
    from proxy.tracing.export import Tracing

__all__ = ["AttemptSpan", "RelayOut", "RequestSpan"]

Attributes = dict[str, AttributeValue]

# The model a vendor says answered, from the start of its answer (the first event of a
# stream): bounded, so a long answer is never scanned.
_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_MODEL_SCAN = 4096
_REMAINING = "x-ratelimit-remaining-"
_SUCCESS = str(OutcomeClass.SUCCESS)


class Client(Protocol):
    """What the admission span reads of a client key's live state."""

    @property
    def config(self) -> ClientConfig: ...

    @property
    def shared_rpm(self) -> object | None: ...

    @property
    def shared_tpm(self) -> object | None: ...


class Admitted(Protocol):
    """What the admission span reads of an admitted request's hold on its limits."""

    @property
    def tokens(self) -> float: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def _limit_names(limits: ClientLimits) -> list[str]:
    """The limits a client has (a window length is a parameter of one, not a limit)."""
    return [
        f.name
        for f in dataclasses.fields(limits)
        if getattr(limits, f.name) is not None and f.name != "loop_window_s"
    ]


def _number(value: str) -> AttributeValue:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _usage(attrs: Attributes, usage: Usage | None) -> None:
    if usage is None:
        return
    attrs["gen_ai.usage.input_tokens"] = usage.prompt
    attrs["gen_ai.usage.output_tokens"] = usage.completion
    if usage.cached_prompt:
        attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cached_prompt


def _trace_headers(trace: SpanContext, span_id: int) -> dict[str, str]:
    """The W3C trace context naming span `span_id` of `trace` as the parent: `traceparent`
    and, when the trace carries one, `tracestate`."""
    headers = {
        "traceparent": f"00-{trace.trace_id:032x}-{span_id:016x}-{int(trace.trace_flags):02x}"
    }
    if trace.trace_state:
        headers["tracestate"] = trace.trace_state.to_header()
    return headers


def _fail(span: Span, error_type: str, message: str | None = None) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message))


class RequestSpan:
    """One request's server span and the spans under it."""

    __slots__ = (
        "_admission",
        "_attempts",
        "_budget",
        "_context",
        "_error",
        "_relay",
        "_served",
        "operation",
        "recording",
        "span",
        "trace_id",
        "traceresponse",
        "tracing",
    )

    def __init__(
        self, tracing: Tracing, request: InboundRequest, route: str, endpoint: str, request_id: str
    ) -> None:
        self.tracing = tracing
        self.operation = OPERATIONS.get(endpoint)
        route = tracing.route(route)
        attrs: Attributes = {
            "http.request.method": request.method,
            "http.route": route,
            "llmproxy.request_id": request_id,
        }
        if request.path != route:  # a route with a parameter (a stored response's id)
            attrs["url.path"] = request.path
        agent = request.headers.get("user-agent")
        if agent:
            attrs["user_agent.original"] = agent
        if self.operation is not None:
            attrs["gen_ai.operation.name"] = self.operation
        span = tracing.tracer.start_span(
            f"{request.method} {route}",
            context=tracing.propagator.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=attrs,
        )
        self.span = span
        self.recording = span.is_recording()
        context = span.get_span_context()
        self.trace_id = f"{context.trace_id:032x}"
        # W3C Trace Context level 2: what a client hands ops (its second field is the trace id).
        self.traceresponse = (
            f"00-{self.trace_id}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        )
        # What child spans hang from, and the content recorder's budget: sampled requests only.
        self._context = set_span_in_context(span) if self.recording else None
        self._budget = Budget(tracing.config.content_max_chars)
        self._admission: Span | None = None
        self._relay: RelayOut | None = None
        self._served: AttemptSpan | None = None
        self._attempts = 0
        self._error: tuple[str, str] | None = None  # (attribute, value) of what went wrong

    def child(self, name: str, kind: SpanKind, attrs: Attributes) -> Span:
        """A span under the server span (of a sampled request: an unsampled one has none)."""
        return self.tracing.tracer.start_span(
            name, context=self._context, kind=kind, attributes=attrs
        )

    # The pipeline's steps ------------------------------------------------------------

    def admitting(self, group: str, body: Mapping[str, Any], client: Client | None) -> None:
        """The request is valid and names `group`; a keyed client's limits are checked next
        (the admission span starts here)."""
        if self.recording:
            attrs: Attributes = {
                "llmproxy.model_group": group,
                "gen_ai.request.model": str(body.get("model")),
                "llmproxy.stream": body.get("stream") is True,
            }
            for key, name in REQUEST_PARAMS.items():
                value = body.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    attrs[name] = value
            if client is not None:
                attrs["llmproxy.client"] = client.config.name
            if self.tracing.config.record_content:
                system, messages = input_messages(body, self._budget)
                if system is not None:
                    attrs["gen_ai.system_instructions"] = system
                if messages is not None:
                    attrs["gen_ai.input.messages"] = messages
            self.span.set_attributes(attrs)
        if client is None or not self.recording:
            return  # an open proxy (no key, no limits to check), or an unsampled request
        self._admission = self.child(
            ADMISSION_SPAN,
            SpanKind.INTERNAL,
            {
                "llmproxy.client": client.config.name,
                "llmproxy.admission.limits": _limit_names(client.config.limits),
                # rpm/tpm counted across replicas (grants from the shared backend)
                "llmproxy.admission.shared": client.shared_rpm is not None
                or client.shared_tpm is not None,
            },
        )

    def admitted(self, ticket: Admitted) -> None:
        span, self._admission = self._admission, None
        if span is None:
            return
        if self.recording:
            attrs: Attributes = {
                "llmproxy.admission.result": "admitted",
                "llmproxy.admission.estimated_tokens": int(ticket.tokens),
            }
            for name, value in ticket.headers.items():
                if name.startswith(_REMAINING):
                    attrs[f"llmproxy.admission.remaining.{name[len(_REMAINING) :]}"] = _number(
                        value
                    )
            span.set_attributes(attrs)
        span.end()

    def failed(self, attribute: str, value: str) -> None:
        """The request was refused or not served: `llmproxy.error_code` (the proxy's own
        4xx, e.g. a limit) or `llmproxy.outcome_class` (what the vendors' failures came to)."""
        self._error = (attribute, value)
        span, self._admission = self._admission, None
        if span is not None:  # refused by a limit
            span.set_attribute("llmproxy.admission.result", value)
            span.end()

    def attempt(
        self,
        deployment: DeploymentConfig,
        vendor: VendorConfig,
        first_byte_s: float,
        call: UpstreamCall,
    ) -> AttemptSpan:
        self._attempts += 1
        return AttemptSpan(self, deployment, vendor, first_byte_s, call)

    def served_by(self, attempt: AttemptSpan) -> None:
        """`attempt` is the one whose answer the client got."""
        self._served = attempt

    def relay(self, out: StreamOut) -> StreamOut:
        """The client's end of a relayed stream, counted (and its text gathered if asked)."""
        if not self.recording:
            return out
        text = StreamText(self._budget) if self.tracing.config.record_content else None
        relay = self._relay = RelayOut(self.child(RELAY_SPAN, SpanKind.INTERNAL, {}), out, text)
        return relay

    def relayed(self, failure: Outcome | None) -> None:
        """The relay ended: cleanly, or broken off by the vendor or the client."""
        relay = self._relay
        if relay is None:
            return
        span = relay.span
        span.set_attributes(
            {
                "llmproxy.relay.events": relay.events,
                "llmproxy.relay.bytes": relay.sent,
                "llmproxy.relay.end": "done" if failure is None else str(failure.cls),
            }
        )
        if failure is not None and failure.cls is not OutcomeClass.CLIENT_CANCELLED:
            _fail(span, str(failure.cls), failure.message)
            self._error = ("llmproxy.outcome_class", str(failure.cls))
        span.end()

    def finish(self, status: int) -> None:
        """The answer is out (and a stream relayed): the server span ends."""
        span = self.span
        if self._admission is not None:  # cancelled while its limits were checked
            self._admission.end()
            self._admission = None
        # The served attempt points back at this span: let go of it, so that reference
        # counting frees both now (a cycle would be left for the garbage collector).
        served, self._served = self._served, None
        if self.recording:
            attrs: Attributes = {
                "http.response.status_code": status,
                "llmproxy.attempts": self._attempts,
            }
            if served is not None:
                attrs.update(served.summary)
                output = self._output(served)
                if output is not None:
                    attrs["gen_ai.output.messages"] = output
            if self._error is not None:
                attrs[self._error[0]] = self._error[1]
            span.set_attributes(attrs)
            if status >= 500 or (self._error is not None and status < 300):
                _fail(span, self._error[1] if self._error is not None else str(status))
        span.end()

    def _output(self, served: AttemptSpan) -> str | None:
        if not self.tracing.config.record_content:
            return None
        if self._relay is not None and self._relay.text is not None:
            return self._relay.text.messages()
        response = served.response
        if response is None or response.content_type != "application/json":
            return None
        return output_messages(response.body, self._budget)


class AttemptSpan:
    """One upstream attempt's CLIENT span; `call` carries its context to the vendor."""

    __slots__ = ("_request", "call", "response", "span", "summary")

    def __init__(
        self,
        request: RequestSpan,
        deployment: DeploymentConfig,
        vendor: VendorConfig,
        first_byte_s: float,
        call: UpstreamCall,
    ) -> None:
        self._request = request
        self.response: UpstreamResponse | None = None
        # What the request span shows of the attempt that served it.
        self.summary: Attributes = {"llmproxy.deployment": deployment.id}
        attrs: Attributes = {}
        if request.recording:
            address, port = request.tracing.server(vendor)
            provider = GEN_AI_PROVIDERS[vendor.type]
            attrs = {
                "llmproxy.deployment": deployment.id,
                "llmproxy.vendor_type": vendor.type,
                "gen_ai.provider.name": provider,
                "gen_ai.system": provider,  # its name before semantic conventions 1.37
                "gen_ai.request.model": deployment.model,
                "llmproxy.attempt.first_byte_budget_s": round(first_byte_s, 3),
                "server.address": address,
            }
            if port is not None:
                attrs["server.port"] = port
            if request.operation is not None:
                attrs["gen_ai.operation.name"] = request.operation
        if request.recording:
            name = f"{request.operation or 'call'} {deployment.model}"  # GenAI's span name
            self.span = request.child(name, SpanKind.CLIENT, attrs)
            span_id = self.span.get_span_context().span_id
        else:
            # Unsampled: the attempt shares the request's no-op span; only its id, in the
            # trace context the vendor gets, is its own.
            self.span = request.span
            span_id = random.getrandbits(64) or 1
        headers = _trace_headers(request.span.get_span_context(), span_id)
        self.call = dataclasses.replace(call, trace_headers=headers)

    def unsupported(self, unsupported: Unsupported) -> None:
        """The deployment cannot serve the request as asked: nothing was sent."""
        self.span.set_attributes(
            {"llmproxy.outcome_class": "unsupported", "llmproxy.unsupported": unsupported.message}
        )
        self.span.end()

    def failed(self, outcome: Outcome, cooldown_s: float) -> None:
        span = self.span
        if self._request.recording:
            attrs: Attributes = {
                "llmproxy.outcome_class": str(outcome.cls),
                "llmproxy.attempt.phase": outcome.phase or "response",
            }
            if outcome.status is not None:
                attrs["http.response.status_code"] = outcome.status
            if outcome.retry_after_s is not None:
                attrs["llmproxy.attempt.retry_after_s"] = outcome.retry_after_s
            if cooldown_s > 0:
                attrs["llmproxy.attempt.cooldown_s"] = round(cooldown_s, 3)
            span.set_attributes(attrs)
            _fail(span, str(outcome.cls), outcome.message)
        span.end()

    def cancelled(self, outcome_class: str) -> None:
        """Cancelled before it answered: the client left, or another hedged attempt won."""
        self.span.set_attribute("llmproxy.outcome_class", outcome_class)
        self.span.end()

    def answered(self, ttfb_s: float, response: UpstreamResponse) -> None:
        """A 2xx reached its commit point; the span ends with the relay (`finished`)."""
        if not self._request.recording:
            return
        self.response = response
        attrs: Attributes = {"llmproxy.attempt.time_to_first_byte_s": round(ttfb_s, 6)}
        found = _MODEL_RE.search(response.body, 0, _MODEL_SCAN)
        if found is not None:
            model = found.group(1).decode("utf-8", "replace")
            attrs["gen_ai.response.model"] = model
            self.summary["gen_ai.response.model"] = model
        self.span.set_attributes(attrs)

    def finished(
        self, failure: Outcome | None, abandoned_as: str | None, usage: Usage | None
    ) -> None:
        """The answer was relayed (or broken off after its commit point, or abandoned)."""
        span = self.span
        if abandoned_as is None:
            self._request.served_by(self)
        if self._request.recording:
            attrs: Attributes = {}
            _usage(attrs, usage)
            self.summary.update(attrs)
            if abandoned_as is not None:
                attrs["llmproxy.outcome_class"] = abandoned_as
            elif failure is None:
                attrs["llmproxy.outcome_class"] = _SUCCESS
            else:
                attrs["llmproxy.outcome_class"] = str(failure.cls)
                attrs["llmproxy.attempt.phase"] = "relay"
                if failure.cls is not OutcomeClass.CLIENT_CANCELLED:
                    _fail(span, str(failure.cls), failure.message)
            span.set_attributes(attrs)
        span.end()


class RelayOut:
    """The client's end of a relayed stream, counting what goes through it."""

    __slots__ = ("_out", "events", "sent", "span", "text")

    def __init__(self, span: Span, out: StreamOut, text: StreamText | None) -> None:
        self.span = span
        self._out = out
        self.text = text
        self.events = 0
        self.sent = 0

    def send(self, data: bytes) -> bool:
        self.events += data.count(b"\n\n") + data.count(b"\r\n\r\n")
        self.sent += len(data)
        if self.text is not None:
            self.text.feed(data)
        return self._out.send(data)

    async def drained(self) -> None:
        await self._out.drained()
