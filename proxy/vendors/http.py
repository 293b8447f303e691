"""The native HTTP path shared by every vendor we speak ourselves (OpenAI-compatible,
Azure OpenAI, Anthropic): one connection pool per vendor (`proxy.http1`), the attempt's
phases and budgets, error classification, and the relay of a stream chunk by chunk.

A subclass says only what differs per wire format: the request (`prepare`), how to watch
its stream (`new_scan`: usage, in-stream errors, the terminator, the commit point) and
how to read a JSON answer (`json_usage`).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from proxy.config import DeploymentConfig, VendorConfig
from proxy.core.errors import ApiError
from proxy.core.outcomes import Outcome, OutcomeClass
from proxy.core.redact import redact
from proxy.core.usage import Usage
from proxy.http1 import (
    Headers,
    InvalidHeader,
    Pool,
    PoolState,
    Response,
    ResponseTooLarge,
    tls_context,
)
from proxy.metrics import Metrics
from proxy.vendors.base import (
    AttemptFailed,
    StreamOut,
    UpstreamCall,
    UpstreamResponse,
    VendorAdapter,
)
from proxy.vendors.classify import (
    classify_response,
    classify_stream_error,
    classify_transport,
    without_secret,
)
from proxy.vendors.idle import idle_wheel

__all__ = ["HTTPAdapter", "JSONResponse", "StreamFilter", "StreamScan", "invalid_json"]

log = logging.getLogger("llmproxy")

# Error bodies read for classification (and health probes' bodies) are capped at this.
MAX_ERROR_BODY = 64 * 1024


class StreamScan(ABC):
    """Watches a relayed stream for what the proxy must act on."""

    __slots__ = ()

    done: bool  # the vendor's success terminator was seen
    error: bytes | None  # an in-stream error event's data
    usage: Usage | None

    @abstractmethod
    def feed(self, chunk: bytes) -> None: ...

    @property
    def committed(self) -> bool:
        """True once the buffered start of the stream holds content worth committing to.

        Until then the adapter keeps reading (within the first-byte budget), so an error
        event right after a vendor's preamble still fails over instead of reaching the client.
        """
        return True


def json_object(data: bytes) -> dict[str, Any]:
    """A 200's JSON object body; anything else is a failed attempt (a vendor's garbage)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise invalid_json()
    return doc


def invalid_json() -> AttemptFailed:
    return AttemptFailed(
        classify_transport(
            aiohttp.ClientPayloadError("invalid JSON in a 200 response"), phase="body"
        )
    )


class StreamFilter(Protocol):
    """Rewrites a relayed stream on the way to the client (e.g. drops an event the proxy added)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def tail(self) -> bytes: ...


class JSONResponse(UpstreamResponse):
    __slots__ = ("_body", "content_type", "headers", "status", "usage")

    def __init__(
        self,
        status: int,
        body: bytes,
        usage: Usage | None,
        headers: Mapping[str, str] = UpstreamResponse.headers,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content_type = "application/json"
        self._body = body
        self.usage = usage

    @property
    def body(self) -> bytes:
        return self._body

    async def relay(self, out: StreamOut) -> None:
        return None  # the whole answer is in `body`

    def close(self) -> None:
        return None


def _event_ends(previous: bytes, chunk: bytes) -> bool:
    """True if ``chunk`` completes an SSE event: a blank line (LF LF, CRLF CRLF or CR CR,
    all three are SSE), also across the edge with the chunk before it."""
    if chunk.endswith(_EVENT_END):  # the common case: one whole event per chunk
        return True
    joined = previous[-3:] + chunk
    return b"\n\n" in joined or b"\n\r\n" in joined or b"\r\r" in joined


_EVENT_END = (b"\n\n", b"\r\n\r\n")


def _data_payloads(lines: list[bytes]) -> list[bytes]:
    return [line[5:].strip() for line in lines if line.startswith(b"data:")]


def first_events_valid(data: bytes) -> tuple[int, bool]:
    """(complete events carrying data, whether every one of them is valid JSON) in the
    start of a stream: what the commit point needs. `[DONE]` counts as valid."""
    events = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n")
    complete = 0
    for event in events[:-1]:  # the last piece is an unfinished event (or empty)
        payloads = _data_payloads(event.split(b"\n"))
        if not payloads:
            continue  # a comment or a keep-alive: not an event
        complete += 1
        payload = b"\n".join(payloads)
        if payload == b"[DONE]":
            continue
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError:
            return complete, False
    return complete, True


class EventShape:
    """A cheap check that each later event of a relayed stream is shaped like JSON.

    The first events are parsed whole before the commit point (`first_events_valid`); after
    it, parsing every event would cost more than the rest of the relay. A chunk of whole
    events that each end in `}` (or are `[DONE]`) costs three byte counts; anything else
    has each complete `data:` line checked for a JSON object's braces (or `[DONE]`). It
    catches a truncated or garbage event, not every invalid JSON text."""

    __slots__ = ("partial",)

    def __init__(self) -> None:
        self.partial = b""  # an unfinished line

    def ok(self, chunk: bytes) -> bool:
        if (
            not self.partial
            and chunk.endswith(b"\n\n")
            and chunk.count(b"\n\n") == chunk.count(b"}\n\n") + chunk.count(b"[DONE]\n\n")
        ):
            return True
        data = self.partial + chunk
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        self.partial = data[cut:]
        for payload in _data_payloads(data[:cut].replace(b"\r", b"\n").split(b"\n")):
            if payload != b"[DONE]" and not (payload.startswith(b"{") and payload.endswith(b"}")):
                return False
        return True


def malformed_event() -> AttemptFailed:
    return AttemptFailed(
        Outcome(
            OutcomeClass.SERVER_ERROR, 200, None, "the stream carried an event that is not JSON"
        )
    )


class _StreamResponse(UpstreamResponse):
    """A relayed stream after its commit point.

    ``stream_idle_s`` bounds the time between *events*, not only between bytes (the socket
    read timeout): a vendor that drips a byte at a time never trips a read timeout, but
    it does not complete an event either, and would otherwise hold the client forever.
    """

    __slots__ = (
        "_filter",
        "_finished",
        "_first",
        "_idle_s",
        "_resp",
        "_scan",
        "_secret",
        "_vendor_type",
        "content_type",
        "headers",
        "status",
        "usage",
    )

    def __init__(
        self,
        resp: Response,
        first: bytes,
        scan: StreamScan,
        vendor_type: str,
        stream_filter: StreamFilter | None,
        idle_s: float,
        secret: str | None,
    ) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.content_type = "text/event-stream"
        self._resp = resp
        self._filter = stream_filter
        self._first = stream_filter.feed(first) if stream_filter is not None else first
        self._scan = scan
        self._vendor_type = vendor_type
        self._finished = False
        self._idle_s = idle_s
        self._secret = secret
        self.usage = scan.usage

    @property
    def body(self) -> bytes:
        return self._first

    def _tail(self) -> bytes:
        """What the stream filter still holds at the end of the stream."""
        filt = self._filter
        return filt.tail() if filt is not None else b""

    def _ended(self) -> None:
        """The vendor's stream ended: it is an answer only if it ended with its terminator."""
        self.usage = self._scan.usage
        if not self._scan.done:
            raise AttemptFailed(
                classify_transport(
                    aiohttp.ClientPayloadError("stream ended without its terminator"),
                    phase="body",
                )
            )
        self._finished = True

    async def relay(self, out: StreamOut) -> None:
        """The stream after its first bytes, without a task wake-up per chunk: the vendor
        connection hands each piece to `_Splice.on_data`, which checks it and sends it on at
        once; this task wakes only at the end, on a failure (the idle budget's included:
        the loop's `IdleWheel` keeps it, not a timer of this stream's), or when the client
        falls behind (reading from the vendor pauses until it catches up)."""
        resp = self._resp
        loop = resp.loop
        splice = _Splice(self, out, loop)
        wheel = idle_wheel(loop)
        resp.deliver_to(splice.on_data, splice.on_end)
        wheel.watch(splice, splice.last_event + self._idle_s)
        try:
            while True:
                if splice.failure is not None:
                    raise splice.failure
                if splice.ended:
                    break
                if splice.congested:
                    await out.drained()
                    splice.congested = False
                    resp.resume()
                    continue
                waiter = splice.waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    splice.waiter = None
        finally:
            wheel.unwatch(splice)
            resp.stop_delivery()
            self.usage = self._scan.usage
        if tail := self._tail():
            out.send(tail)
        self._ended()

    def close(self) -> None:
        if self._finished:
            self._resp.release()
        else:
            self._resp.close()  # abort: the vendor sees the disconnect and stops generating


def _no_complete_event() -> AttemptFailed:
    return AttemptFailed(classify_transport(TimeoutError("no complete event"), phase="body"))


class _Splice:
    """What a relayed stream's every chunk goes through before it is sent on to `out`:
    the idle budget between events, the scan (usage, in-stream errors, the terminator),
    our credential out of a relayed error event, the filter.

    `relay` runs `on_data` inside the vendor connection's callback, once per relayed event,
    so it is kept flat. The idle budget between events is checked there for a chunk that
    does not end an event, and by the loop's `IdleWheel` (`idle_deadline`) when nothing
    comes at all."""

    __slots__ = (
        "clock",
        "congested",
        "ended",
        "failure",
        "filter",
        "idle_s",
        "idle_slot",
        "last_event",
        "out",
        "previous",
        "scan",
        "shape",
        "stream",
        "waiter",
    )

    def __init__(
        self, stream: _StreamResponse, out: StreamOut, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.stream = stream
        self.shape = EventShape()
        self.scan = stream._scan
        self.filter = stream._filter
        self.idle_s = stream._idle_s
        self.out = out
        self.clock = loop.time
        self.last_event = loop.time()
        self.previous = stream._first
        self.failure: BaseException | None = None
        self.ended = False
        self.congested = False
        self.waiter: asyncio.Future[None] | None = None
        self.idle_slot = 0

    def idle_deadline(self, now: float) -> float | None:
        """For the wheel: when the silence since the last event runs over the budget; fails
        the stream if it has. A stream paused because its client is not reading is not
        silent: it is looked at again a budget later."""
        if self.failure is not None or self.ended:
            return None
        if self.congested:
            return now + self.idle_s
        deadline = self.last_event + self.idle_s
        if now < deadline:
            return deadline
        self._fail(_no_complete_event())
        return None

    def on_data(self, chunk: bytes) -> None:
        if self.failure is not None:
            return
        now = self.clock()
        if chunk.endswith(_EVENT_END) or _event_ends(self.previous, chunk):
            self.last_event = now
        elif now - self.last_event > self.idle_s:
            self._fail(_no_complete_event())
            return
        self.previous = chunk
        scan = self.scan
        scan.feed(chunk)
        if scan.error is not None:
            self._error_event(chunk, scan.error)
            return
        if not self.shape.ok(chunk):
            self._fail(malformed_event())
            return
        filt = self.filter
        data = chunk if filt is None else filt.feed(chunk)
        if not data:
            return
        try:
            congested = self.out.send(data)
        except ConnectionResetError as exc:
            self._fail(exc)
            return
        if congested and not self.congested:
            self.congested = True
            self.stream._resp.pause()
            self._wake()

    def _error_event(self, chunk: bytes, error: bytes) -> None:
        # The vendor's error event is relayed as it came, minus our credentials (some
        # vendors echo the key they were sent); the stream has failed after it.
        stream = self.stream
        chunk = redact(chunk, stream._secret)
        filt = self.filter
        data = chunk if filt is None else filt.feed(chunk)
        stream.usage = self.scan.usage
        outcome = classify_stream_error(stream._vendor_type, error)
        if data:
            try:
                self.out.send(data)
            except ConnectionResetError as exc:
                self._fail(exc)
                return
        self._fail(AttemptFailed(without_secret(outcome, stream._secret), error_event_sent=True))

    def on_end(self, error: BaseException | None) -> None:
        self.ended = True
        if error is not None and self.failure is None:
            self.failure = AttemptFailed(classify_transport(error, phase="body"))
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.stream._resp.stop_delivery()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class HTTPAdapter(VendorAdapter):
    """One connection pool per vendor; subclasses supply the wire format."""

    def __init__(self, config: VendorConfig) -> None:
        super().__init__(config)
        self._pool: Pool | None = None
        self._on_pool_wait: Callable[[float], None] | None = None

    async def start(self) -> None:
        config = self.config
        self._pool = Pool(
            limit=config.max_connections,
            egress=config.egress,
            ssl_context=tls_context(config.ca_file),
            max_body=config.max_response_bytes,
            max_decoded=config.max_decompressed_bytes,
            on_wait=self._on_pool_wait,
            name=config.name,
        )
        log.info(
            "vendor %s: connections to %s go %s; at most %d at once",
            config.name,
            urlsplit(config.base_url).hostname,
            config.egress.describe_url(config.base_url),
            self._pool.limit,
            extra={"event": "vendor_egress", "vendor": config.name},
        )

    def bind_metrics(self, metrics: Metrics) -> None:
        self._on_pool_wait = metrics.pool_wait_observer(self.config.name)
        if self._pool is not None:
            self._pool.on_wait = self._on_pool_wait

    def pool_state(self) -> PoolState | None:
        return None if self._pool is None else self._pool.state()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("adapter used before start()")
        return self._pool

    @abstractmethod
    def prepare(
        self, deployment: DeploymentConfig, call: UpstreamCall
    ) -> tuple[str, bytes, Mapping[str, str]]:
        """URL, body and headers of one attempt."""

    @abstractmethod
    def new_scan(self, call: UpstreamCall) -> StreamScan: ...

    def models_url(self) -> str | None:
        """The vendor's model list (a health probe that costs no tokens), if it has one."""
        return None

    def probe_headers(self) -> Mapping[str, str]:
        """Headers (credentials) for a health probe request."""
        return {}

    async def probe(
        self, deployment: DeploymentConfig, kind: str, timeout_s: float
    ) -> Outcome | None:
        """`models`: GET the vendor's model list; other kinds as the base class does them."""
        url = self.models_url() if kind == "models" else None
        if url is None:
            return await super().probe(deployment, kind, timeout_s)
        phase = "connect"
        pool = self.pool
        deadline = pool.loop.time() + timeout_s

        def sent() -> None:
            nonlocal phase
            phase = "first_byte"

        try:
            resp = await pool.request(
                "GET",
                url,
                self.probe_headers(),
                deadline=deadline,
                connect_s=deployment.timeouts.connect_s,
                pool_wait_s=deployment.timeouts.pool_wait_s,
                on_sent=sent,
            )
            phase = "body"
            try:
                body = await resp.read(MAX_ERROR_BODY, deadline)
            finally:
                resp.release()
            if resp.status >= 300:
                return classify_response(self.config.type, resp.status, resp.headers, body)
            return None
        except Exception as exc:
            return classify_transport(exc, phase=phase)

    async def post(
        self,
        deployment: DeploymentConfig,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        *,
        method: str = "POST",
        limit: int | None = MAX_ERROR_BODY,
    ) -> tuple[int, bytes]:
        """A side request (a token count, a stored response): status and body (at most
        `limit` bytes), within `timeout_s`.

        Raises what the pool raises (OSError, TimeoutError, ProtocolError)."""
        pool = self.pool
        deadline = pool.loop.time() + timeout_s
        resp = await pool.request(
            method,
            url,
            headers,
            body,
            deadline=deadline,
            connect_s=deployment.timeouts.connect_s,
            pool_wait_s=deployment.timeouts.pool_wait_s,
        )
        try:
            return resp.status, await resp.read(limit, deadline)
        finally:
            resp.release()

    def stream_filter(self, call: UpstreamCall) -> StreamFilter | None:
        """A rewrite of this call's stream on its way to the client (none by default)."""
        return None

    @abstractmethod
    def json_usage(self, data: bytes) -> Usage | None:
        """Usage of a non-streamed 200; raises AttemptFailed if the body is not an answer."""

    async def send_native(
        self,
        deployment: DeploymentConfig,
        call: UpstreamCall,
        *,
        first_byte_s: float,
        attempt_s: float,
    ) -> UpstreamResponse:
        pool = self.pool
        url, body, headers = self.prepare(deployment, call)
        if call.trace_headers:
            if isinstance(headers, Headers):
                headers = headers.plus(call.trace_headers)
            else:
                headers = {**headers, **call.trace_headers}
        vendor_type = self.config.type
        started = pool.loop.time()
        # Headers and the first chunk of the body must come within the first-byte budget: a
        # vendor that sends headers and then stalls is as stuck as one that sends nothing.
        first_by = started + first_byte_s
        phase = "connect"
        resp: Response | None = None

        def sent() -> None:
            nonlocal phase
            phase = "first_byte"

        try:
            resp = await pool.request(
                "POST",
                url,
                headers,
                body,
                deadline=first_by,
                connect_s=deployment.timeouts.connect_s,
                pool_wait_s=deployment.timeouts.pool_wait_s,
                prompt=call.stream,
                on_sent=sent,
            )
            phase = "first_byte"
            if resp.status >= 300:
                err = await resp.read(MAX_ERROR_BODY, first_by)
                resp.release()
                raise AttemptFailed(
                    classify_response(vendor_type, resp.status, resp.headers, err),
                    headers=resp.headers,
                )
            if call.stream and resp.content_type == "text/event-stream":
                return await self._first_chunk(
                    resp,
                    self.new_scan(call),
                    self.stream_filter(call),
                    deployment.timeouts.stream_idle_s,
                    first_by,
                )
            data = await resp.read_some(first_by)
            phase = "body"
            if not resp.at_eof:  # most answers arrive whole
                rest = await resp.read(deadline=started + max(attempt_s, first_byte_s))
                data += rest
            resp.release()
            return JSONResponse(resp.status, data, self.json_usage(data), resp.headers)
        except AttemptFailed as failed:
            secret = self.config.api_key
            if secret and secret in failed.outcome.message:
                raise AttemptFailed(
                    without_secret(failed.outcome, secret), headers=failed.headers
                ) from None
            raise
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()
            raise
        except InvalidHeader as exc:
            # Nothing was sent: a header of this request cannot go upstream. The client's
            # request (or our config) is at fault, never the vendor.
            raise ApiError(400, f"{exc}.", code="invalid_header") from None
        except Exception as exc:
            if resp is not None:
                resp.close()
            raise AttemptFailed(classify_transport(exc, phase=phase)) from None

    async def _first_chunk(
        self,
        resp: Response,
        scan: StreamScan,
        stream_filter: StreamFilter | None,
        idle_s: float,
        first_by: float,
    ) -> UpstreamResponse:
        """Read up to the commit point; an error event, a first event that is not JSON or an
        empty stream before it fails the attempt (the router may still fail over).

        The commit point needs at least one complete event carrying data: a vendor that
        drips its first event a byte at a time, or sends only keep-alive comments, is still
        "before the first byte" for the failover budget.
        """
        parts: list[bytes] = []
        size = 0
        events = 0
        previous = b""
        limit = self.config.max_response_bytes
        while True:
            chunk = await resp.read_some(first_by)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if size > limit:  # one endless first event: nothing to commit to
                resp.close()
                raise AttemptFailed(
                    classify_transport(
                        ResponseTooLarge(
                            f"the stream's first event is larger than {limit} bytes "
                            "(the vendor's max_response_bytes)"
                        ),
                        phase="body",
                    )
                )
            if _event_ends(previous, chunk):
                events, valid = first_events_valid(b"".join(parts))
                if not valid:
                    resp.close()
                    raise malformed_event()
            previous = chunk
            scan.feed(chunk)
            if scan.error is not None:
                resp.close()
                raise AttemptFailed(
                    classify_stream_error(self.config.type, scan.error), headers=resp.headers
                )
            if (scan.committed and events) or scan.done:
                break
        if not parts:
            resp.close()
            raise AttemptFailed(
                classify_transport(aiohttp.ClientPayloadError("empty stream"), phase="body")
            )
        return _StreamResponse(
            resp,
            parts[0] if len(parts) == 1 else b"".join(parts),
            scan,
            self.config.type,
            stream_filter,
            idle_s,
            self.config.api_key,
        )
