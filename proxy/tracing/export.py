"""The OpenTelemetry SDK set up for one config generation: sampler, resource, and an OTLP
exporter behind the SDK's BatchSpanProcessor, which exports from a thread of its own.

Imported only when tracing is on: the SDK is large to import (the grpc exporter most of
all), and a proxy without tracing never loads it.

A dead or slow collector must never slow a request. Ending a span only appends it to the
processor's queue; the export waits, retries and times out on the processor's thread. The
queue is bounded: `_Bounded` admits a span only while fewer than the queue's size are
waiting for export, and counts the others as dropped (`queue_full`) instead of letting the
SDK's queue push out its oldest spans silently; `_Counted` counts the spans of every batch
the exporter could not deliver (`export_failed`). Both are the SDK's public interfaces
(SpanProcessor, SpanExporter) wrapped, not its internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.config import TracingConfig, VendorConfig
from proxy.core.version import VERSION
from proxy.tracing.drops import SpanDrops

if TYPE_CHECKING:
    from proxy.listener import InboundRequest
    from proxy.tracing.spans import RequestSpan

__all__ = ["Tracing"]

log = logging.getLogger("llmproxy")

_INSTRUMENTATION = "llm-proxy"
_DEFAULT_QUEUE = 2048  # the SDK's defaults: OTEL_BSP_MAX_QUEUE_SIZE,
_DEFAULT_BATCH = 512  # OTEL_BSP_MAX_EXPORT_BATCH_SIZE
# A route parameter with its pattern (aiohttp's `{name:regex}`), up to the end of its segment.
_PARAM_PATTERN = re.compile(r"\{(\w+):.*?\}(?=/|$)")
# Closing waits this long for the last spans to reach the collector, then gives up on them.
CLOSE_TIMEOUT_S = 5.0


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def _batch_sizes() -> tuple[int, int]:
    """The batch queue's size and the largest batch: OTEL_BSP_MAX_QUEUE_SIZE and
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE as the SDK reads them (the batch no larger than the
    queue, which the SDK would refuse)."""
    queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", _DEFAULT_QUEUE)
    return queue, min(queue, _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _DEFAULT_BATCH))


class _Counted(SpanExporter):
    """The OTLP exporter, counting what it takes from the queue and what it fails to deliver."""

    def __init__(self, inner: SpanExporter, drops: SpanDrops) -> None:
        self.inner = inner
        self.drops = drops
        self.taken = 0  # spans handed to `export`; written by the processor's thread only
        self._settled = 0  # of those, spans whose export has returned
        self._closed = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        try:
            result = self.inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        with self._lock:
            self._settled += len(spans)
            if result is not SpanExportResult.SUCCESS and not self._closed:
                self.drops.export_failed(len(spans))
        return result

    def close(self, admitted: int) -> None:
        """Count every span admitted whose export has not succeeded or failed by now as
        dropped; from now on a failing export (a late one) is no longer counted."""
        with self._lock:
            self._closed = True
            self.drops.export_failed(max(0, admitted - self._settled))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _Bounded(SpanProcessor):
    """The batch processor behind an admission count: a span that would overflow the queue
    is dropped and counted here, on the event loop, at the cost of a comparison."""

    def __init__(self, exporter: _Counted, drops: SpanDrops) -> None:
        self.exporter = exporter
        self.drops = drops
        self.queue_size, batch_size = _batch_sizes()
        self.admitted = 0  # written by the event loop's thread only
        self.batch = BatchSpanProcessor(
            exporter, max_queue_size=self.queue_size, max_export_batch_size=batch_size
        )

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        if self.admitted - self.exporter.taken >= self.queue_size:
            self.drops.queue_full(1)
            return
        self.admitted += 1
        self.batch.on_end(span)

    def shutdown(self) -> None:
        self.batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.batch.force_flush(timeout_millis)


def _exporter(config: TracingConfig) -> SpanExporter:
    headers = dict(config.headers) or None
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=config.endpoint, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=config.endpoint, headers=headers)


class Tracing:
    """One config generation's tracing: the tracer its requests' spans come from, and the
    pipeline that takes them to the collector."""

    def __init__(self, config: TracingConfig, replica: str, drops: SpanDrops) -> None:
        self.config = config
        self.drops = drops
        resource = Resource.create(
            {
                "service.name": config.service_name,
                "service.version": VERSION,
                "service.instance.id": replica,  # the replica that served a request
            }
        )
        self._exporter = _Counted(_exporter(config), drops)
        self._processor = _Bounded(self._exporter, drops)
        self._provider = TracerProvider(
            resource=resource,
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            # Closing is ours (`close`, bounded): the SDK's exit hook would wait up to 30 s
            # for a dead collector.
            shutdown_on_exit=False,
        )
        self._provider.add_span_processor(self._processor)
        self.tracer: Tracer = self._provider.get_tracer(_INSTRUMENTATION, VERSION)
        self.propagator = TraceContextTextMapPropagator()
        self._servers: dict[str, tuple[str, int | None]] = {}
        self._routes: dict[str, str] = {}
        # Export errors are logged by the SDK at ERROR once per failed batch; its retry
        # warnings in between would be one line per second with a collector down.
        logging.getLogger("opentelemetry").setLevel(logging.ERROR)

    def request(
        self, request: InboundRequest, route: str, endpoint: str, request_id: str
    ) -> RequestSpan:
        """The server span of a request that just arrived (continuing the client's trace).
        `route` is the endpoint's path template, `endpoint` its name (`Endpoint.name`)."""
        from proxy.tracing.spans import RequestSpan

        return RequestSpan(self, request, route, endpoint, request_id)

    def route(self, path: str) -> str:
        """http.route of an endpoint's path: its parameters by name, without their patterns
        (`/v1/responses/{response_id}`)."""
        found = self._routes.get(path)
        if found is None:
            found = self._routes[path] = _PARAM_PATTERN.sub(r"{\1}", path)
        return found

    def server(self, vendor: VendorConfig) -> tuple[str, int | None]:
        """server.address and server.port of a vendor (parsed once per vendor)."""
        found = self._servers.get(vendor.base_url)
        if found is None:
            url = urlsplit(vendor.base_url)
            port = url.port or {"http": 80, "https": 443}.get(url.scheme)
            found = self._servers[vendor.base_url] = (url.hostname or "", port)
        return found

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Export what is queued, for at most `timeout_s`; then drop the rest (counted).

        The SDK's shutdown blocks (it joins the export thread), so it runs on a daemon
        thread of its own: neither the event loop nor the interpreter's exit waits for a
        collector that does not answer.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def shut() -> None:
            try:
                self._provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits now
                    loop.call_soon_threadsafe(_resolve, done)

        threading.Thread(target=shut, name="llm-proxy-tracing-close", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            self._exporter.inner.shutdown()  # stops the exporter's retries
            log.warning(
                "tracing: the collector did not take the last spans within %.0f s; dropped",
                timeout_s,
                extra={"event": "tracing_close", "endpoint": self.config.endpoint},
            )
        self._exporter.close(self._processor.admitted)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
