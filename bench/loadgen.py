"""The load generator: raw asyncio HTTP/1.1 keep-alive clients, one per concurrency slot.

Why not aiohttp's client: on a 2-core machine its ~100 us of CPU per request would be
the bottleneck for the direct baseline and would steal the CPU the targets need. This
client pre-builds each request's bytes and parses only what it measures: the status,
the end of the response (Content-Length or chunked), the time its first body byte
arrived (time to first byte, for streams), and whether a stream ended properly.

For a stream it also records how its events arrived: each read that completes SSE events
(a b"\n\n" in the body) is timed, and an event that completes in the same read as an
earlier event of its stream counts as coalesced. Against an upstream that paces its
events, a proxy that relays each event as it arrives shows the upstream's gaps and no
more coalescing than the direct call; one that buffers shows coalesced events (gap 0)
and longer gaps. The reader's own scheduling can coalesce too (two events in the socket
before it reads), which is why the figures are compared with the direct call's.

Every request is counted: a non-2xx status, a broken connection or a stream that ended
without its terminator is a client error.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["LoadResult", "Request", "run_load"]


@dataclass(frozen=True, slots=True)
class Request:
    """One request, sent as the same bytes every time."""

    host: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    # A successful response must contain this (e.g. b"[DONE]" for an OpenAI stream).
    expect: bytes = b""
    # An SSE stream: record how its events arrive (LoadResult.events, coalesced, event_gaps_s).
    stream: bool = False

    def wire(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(slots=True)
class LoadResult:
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # successful requests only
    ttfb_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    # Streams (successful ones only): SSE events received, how many of them arrived in the
    # same read as an earlier event of their stream, and the time from each event to the
    # next as the client saw it (0 for a coalesced event; the first event is the TTFB).
    events: int = 0
    coalesced: int = 0
    event_gaps_s: list[float] = field(default_factory=list)
    # Requests sent and not yet answered whole: for long streams, the streams open now.
    open_now: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def coalesced_pct(self) -> float:
        return 100 * self.coalesced / self.events if self.events else float("nan")


class _Response:
    """One response as it arrives. A stream's body is not kept (a 30 s stream at 50 events/s
    is 1,500 events): its events are counted as they complete, and only its last bytes are
    kept, to find the terminator the success check looks for."""

    __slots__ = (
        "body",
        "coalesced",
        "events",
        "expected",
        "gaps",
        "last_event",
        "pending",
        "status",
        "stream",
        "tail",
        "ttfb",
    )

    def __init__(self, stream: bool) -> None:
        self.status = 0
        self.ttfb = 0.0
        self.stream = stream
        self.body = bytearray()  # JSON answers only
        self.tail = b""  # a stream's last bytes
        self.expected = False  # a stream: its `expect` bytes were seen
        self.events = 0
        self.pending = 0  # events completed by the read being handled
        self.coalesced = 0
        self.gaps: list[float] = []
        self.last_event = 0.0

    def add(self, data: bytes, expect: bytes) -> None:
        if not self.stream or self.status >= 300:
            self.body += data
            return
        joined = self.tail + data
        self.pending += joined.count(b"\n\n") - self.tail.count(b"\n\n")
        if not self.expected and expect and expect in joined:
            self.expected = True
        self.tail = joined[-16:]

    def ok(self, expect: bytes) -> bool:
        if not 200 <= self.status < 300:
            return False
        if self.stream:
            return self.expected or not expect
        return not expect or expect in self.body

    def note_events(self, now: float) -> None:
        """Count the events the last read completed, read at `now`."""
        n, self.pending = self.pending, 0
        if not n:
            return
        if self.last_event:
            self.gaps.append(now - self.last_event)
        if n > 1:
            self.gaps += [0.0] * (n - 1)
            self.coalesced += n - 1
        self.events += n
        self.last_event = now


class _ClientProtocol(asyncio.Protocol):
    """Parses one response at a time off a keep-alive connection."""

    def __init__(self, expect: bytes = b"") -> None:
        self.transport: asyncio.Transport | None = None
        self._expect = expect
        self._buf = b""
        self._waiter: asyncio.Future[_Response] | None = None
        self._resp: _Response | None = None
        self._headers_done = False
        self._length = -1  # -1: chunked; else bytes of body left
        self._chunk_left = 0  # chunked: bytes left in the current chunk (+2 for CRLF)
        self._stream = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def send(self, data: bytes, stream: bool = False) -> asyncio.Future[_Response]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._resp = _Response(stream)
        self._stream = stream
        self._headers_done = False
        self._buf = b""
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        resp = self._resp
        if resp is None:
            return
        if not self._headers_done:
            buf = self._buf + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            head = buf[:end].lower()
            resp.status = int(head[9:12])
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                self._length = int(head[i + 17 : j if j >= 0 else len(head)])
            elif b"transfer-encoding: chunked" in head:
                self._length = -1
                self._chunk_left = 0
            else:
                self._length = 1 << 62  # read to close (not expected from any target)
            self._headers_done = True
            self._buf = b""
            data = buf[end + 4 :]
            if not data and self._length != 0:
                return
        now = time.perf_counter() if data and (self._stream or not resp.ttfb) else 0.0
        if now and not resp.ttfb:
            resp.ttfb = now
        # The waiter's callbacks run on a later turn of the loop, so counting the events
        # after _complete() still counts them before the worker reads the response.
        if self._length >= 0:
            resp.add(data, self._expect)
            self._length -= len(data)
            if self._length <= 0:
                self._complete()
        else:
            self._feed_chunked(data)
        if now and self._stream:
            resp.note_events(now)

    def _feed_chunked(self, data: bytes) -> None:
        resp = self._resp
        assert resp is not None
        buf = self._buf + data if self._buf else data
        pos = 0
        n = len(buf)
        while pos < n:
            if self._chunk_left:
                take = min(self._chunk_left, n - pos)
                resp.add(buf[pos : pos + take], self._expect)
                self._chunk_left -= take
                pos += take
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if eol == pos:  # the CRLF after a chunk's data
                pos += 2
                continue
            size = int(buf[pos:eol].split(b";")[0], 16)
            if size == 0:
                if buf.find(b"\r\n", eol + 2) < 0:
                    break  # trailer's empty line not here yet
                self._buf = b""
                self._complete()
                return
            self._chunk_left = size
            pos = eol + 2
        self._buf = buf[pos:]

    def _complete(self) -> None:
        waiter, resp = self._waiter, self._resp
        self._waiter = self._resp = None
        if waiter is not None and not waiter.done() and resp is not None:
            waiter.set_result(resp)


async def _connect(req: Request) -> _ClientProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: _ClientProtocol(req.expect), req.host, req.port)
    return proto


async def run_load(
    req: Request,
    *,
    concurrency: int,
    requests: int,
    max_seconds: float,
    rate: float | None = None,
    timeout_s: float = 30.0,
    result: LoadResult | None = None,
) -> LoadResult:
    """Send `requests` requests (or as many as fit in `max_seconds`) from `concurrency` clients.

    With `rate`, request i is not sent before `start + i / rate`: a fixed request rate with at
    most `concurrency` in flight. Below the target's saturation point this measures what
    each request costs rather than how long it queued; a target too slow for the rate falls
    behind (its `requests/s` shows by how much) instead of piling up unbounded work. Latency
    is measured from the moment a request is sent. `result` (else a new one) is filled in as
    requests complete, so another thread can watch `open_now`.
    """
    result = LoadResult() if result is None else result
    wire = req.wire()
    expect = req.expect
    stream = req.stream
    issued = 0
    started = time.perf_counter()
    deadline = started + max_seconds
    interval = 1.0 / rate if rate else 0.0

    async def worker() -> None:
        nonlocal issued
        proto: _ClientProtocol | None = None
        while issued < requests and time.perf_counter() < deadline:
            due = started + issued * interval
            issued += 1
            if interval:
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            t0 = time.perf_counter()
            result.open_now += 1
            try:
                if proto is None or proto.closed:
                    proto = await _connect(req)
                resp = await asyncio.wait_for(proto.send(wire, stream), timeout_s)
            except (OSError, TimeoutError) as exc:
                result.open_now -= 1
                result.requests += 1
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(f"{type(exc).__name__}: {exc}")
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
                proto = None
                continue
            t1 = time.perf_counter()
            result.open_now -= 1
            result.requests += 1
            result.statuses[resp.status] += 1
            if resp.ok(expect):
                result.latencies_s.append(t1 - t0)
                result.ttfb_s.append((resp.ttfb or t1) - t0)
                if stream:
                    result.events += resp.events
                    result.coalesced += resp.coalesced
                    result.event_gaps_s += resp.gaps
            else:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(f"{resp.status}: {bytes(resp.body[:300])!r}")
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result
