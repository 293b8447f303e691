"""Incremental Server-Sent Events parsing: bytes in (any chunking), complete events out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

__all__ = ["SSEParser", "sse_event"]


def sse_event(event: str | None, data: bytes) -> bytes:
    """One framed event: `event: NAME` (if any) and one `data:` line."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class SSEParser:
    """Splits a byte stream into (event name, data) pairs.

    Upstream chunking is arbitrary (an event may span reads, a read may hold many events)
    and line endings may be CRLF (Gemini); only complete events (ended by a blank line) are
    returned. `tail` is whatever never formed a complete event, e.g. a raw JSON error a
    vendor appended at EOF.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # A CR at the very end may be the first half of a CRLF split across reads.
            keep_cr = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n")
            if keep_cr:
                buf, self._buf = buf[:-1], b"\r"
            else:
                self._buf = b""
        else:
            self._buf = b""
        events: list[tuple[bytes, bytes]] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            event = b""
            data: list[bytes] = []
            for line in buf[start:end].split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                elif line.startswith(b"event:"):
                    event = line[6:].strip()
            if data or event:
                events.append((event, b"\n".join(data)))
            start = end + 2
        rest = buf[start:]
        self._buf = rest + self._buf if self._buf else rest
        return events

    def objects(self, chunk: bytes) -> Iterator[tuple[bytes, dict[str, Any] | None]]:
        """`feed`, with each event's data parsed: (name, the JSON object), or (name, None)
        for OpenAI's `[DONE]`; events whose data is anything else are skipped."""
        for name, data in self.feed(chunk):
            if data == b"[DONE]":
                yield name, None
                continue
            if not data.startswith(b"{"):
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield name, event

    @property
    def tail(self) -> bytes:
        return self._buf.strip()
