"""Spans that never reached the collector, for `llmproxy_tracing_spans_dropped_total`."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Final

__all__ = ["DROP_REASONS", "SpanDrops"]

# The `reason` label: the export queue was full when the span ended (a slow or dead
# collector), or its batch was not delivered (refused, unreachable, or still queued when the
# proxy shut down).
DROP_REASONS: Final = ("queue_full", "export_failed")


class SpanDrops:
    """Dropped-span counts of the whole process, across config generations.

    `queue_full` is counted on the event loop's thread, `export_failed` on the export
    threads (one per generation's tracer, two while a reload retires the old one).
    """

    __slots__ = ("_export_failed", "_lock", "_queue_full")

    def __init__(self) -> None:
        self._queue_full = 0
        self._export_failed = 0
        self._lock = threading.Lock()

    def queue_full(self, spans: int) -> None:
        self._queue_full += spans

    def export_failed(self, spans: int) -> None:
        with self._lock:
            self._export_failed += spans

    def counts(self) -> Mapping[str, int]:
        """Reason -> spans dropped so far."""
        return {"queue_full": self._queue_full, "export_failed": self._export_failed}
