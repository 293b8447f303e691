"""OpenTelemetry traces of each request's journey: a server span per request, with child
spans for its admission (the client's limits), each upstream attempt (deployment, outcome
class, failure phase, time to first byte, cooldown applied) and the relay of a stream.

Off by default, and then free: a generation without tracing holds `tracing = None`, the
pipeline and the router check that one attribute, and the OpenTelemetry SDK is never
imported. With `tracing.enabled`, `start_tracing` loads the SDK (`proxy.tracing.export`)
and the spans (`proxy.tracing.spans`) for the generation.

W3C trace context: a client's `traceparent`/`tracestate` is continued, and each attempt
sends its own span as the vendor's parent. The trace id is in the access log
(`trace_id`) and in the `traceresponse` response header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.config import TracingConfig
from proxy.tracing.drops import DROP_REASONS, SpanDrops

if TYPE_CHECKING:
    from proxy.tracing.export import Tracing

__all__ = ["DROP_REASONS", "SpanDrops", "start_tracing"]


def start_tracing(config: TracingConfig, replica: str, drops: SpanDrops) -> Tracing | None:
    """The tracing of a generation with `config` (None when it is off). Imports the SDK."""
    if not config.enabled:
        return None
    from proxy.tracing.export import Tracing

    return Tracing(config, replica, drops)
