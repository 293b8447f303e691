"""The listener: the proxy's HTTP/1.1 front door, with a fast lane for the proxied endpoints.

Why not aiohttp's server alone: its request machinery (a task per request, a Request object,
routing, middleware, a StreamResponse and its writer) cost more CPU than the rest of a
proxied request together. The requests a proxy lives on are few and plain (a POST of a JSON
body with a Content-Length to one of the paths in `routes`), so the listener serves those
itself and hands every other connection to aiohttp at a request boundary: admin, metrics,
the dashboard, GETs, chunked uploads, HTTP/1.0. aiohttp then owns that connection, with
its own routing and answers.

Parsing is llhttp's (through `httptools`), on both lanes: the fast lane feeds it each request
head and serves only what it accepts; a connection handed to aiohttp is watched by the same
parser, so a request llhttp rejects is refused there too and both lanes apply the same
time limits. The listener finds where a head ends (the first blank line) only to know what
to feed; every rule about what a valid request is belongs to llhttp.

Limits on what a peer controls: `header_timeout_s` from a request's first byte to the end
of its head, `body_timeout_s` from there to the end of its body, `keepalive_s` between
requests, `max_connections` open at once (beyond it a connection gets a 503 and is
closed), at most `_PIPELINE_LIMIT` bytes read ahead of a request in flight, and the next
pipelined request starts only once the client has taken the previous answer. One sweep a
second enforces the timeouts: no timer per connection.

Lifecycle: `start()` listens; `close()` stops listening, lets the requests in flight finish
(within the grace period; streams included), closes idle keep-alive connections, then
cleans up the aiohttp runner (which drains the connections it owns and runs the app's
shutdown and cleanup hooks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final, Protocol

import httptools
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "Answer",
    "BodyTooLarge",
    "FastHandler",
    "FastRequest",
    "InboundRequest",
    "Listener",
    "ListenerLimits",
    "StreamBody",
]

log = logging.getLogger("llmproxy")

_MAX_HEAD: Final = 8190  # aiohttp's line limit: a longer head is aiohttp's to refuse
_MAX_HEADERS: Final = 128  # aiohttp's header count limit, likewise
_PIPELINE_LIMIT: Final = 256 * 1024  # bytes read ahead of a request in flight
_SWEEP_S: Final = 1.0


class BodyTooLarge(Exception):
    """The request's body is over the limit the handler asked for."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


class StreamOut:
    """Where a streamed answer's body goes (see `proxy.vendors.base.StreamOut`)."""

    def send(self, data: bytes) -> bool:  # pragma: no cover - an interface
        raise NotImplementedError

    async def drained(self) -> None:  # pragma: no cover - an interface
        raise NotImplementedError


StreamBody = Callable[[Any], Awaitable[None]]  # called with a StreamOut, sends the body


@dataclass(slots=True)
class Answer:
    """What a handler answers, whichever lane the request came in on.

    A JSON (or other) body is `body`; a streamed one is `stream`, a coroutine function that
    sends the body to the `StreamOut` it is given (the head goes out with its first bytes)
    and returns when it is complete. The lane adds framing headers (Content-Length or
    chunked, Date).
    """

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    content_type: str = "application/json"
    stream: StreamBody | None = None


FastHandler = Callable[["FastRequest"], Awaitable[Answer]]


class InboundRequest(Protocol):
    """What a handler reads of a request, on either lane."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_type(self) -> str: ...

    @property
    def query_string(self) -> str: ...

    async def read_body(self, limit: int) -> bytes:
        """The whole body; raises BodyTooLarge past `limit` bytes, TimeoutError when it does
        not arrive within the server's body timeout."""


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """What a peer may hold: the `server:` settings the listener enforces."""

    max_body: int
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    keepalive_s: float = 75.0
    max_connections: int = 10_000


class FastRequest:
    """A request read whole on the fast lane: the parts the proxied endpoints read."""

    __slots__ = ("_body", "content_type", "headers", "method", "path", "remote")
    # The fast lane serves only exact paths: a request with a query goes to aiohttp.
    query_string = ""

    def __init__(
        self,
        method: str,
        path: str,
        headers: CIMultiDictProxy[str],
        body: bytes | None,
        remote: str | None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self._body = body  # None: over the listener's body limit, never read
        self.remote = remote
        ctype = headers.get("Content-Type")
        self.content_type = (
            ctype.partition(";")[0].strip().lower() if ctype else "application/octet-stream"
        )

    async def read_body(self, limit: int) -> bytes:
        body = self._body
        if body is None or len(body) > limit:
            raise BodyTooLarge(limit)
        return body


# -- writing answers ----------------------------------------------------------------------

_date_second = 0
_date_header = b""


def _date() -> bytes:
    global _date_second, _date_header
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_header = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    return _date_header


_REASONS: Final = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def _head(status: int, headers: Mapping[str, str], content_type: str, extra: bytes) -> bytes:
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
        + _date()
        + b"Content-Type: "
        + content_type.encode("latin-1")
        + b"\r\n"
        + lines.encode("latin-1")
        + extra
        + b"\r\n"
    )


def serialize(answer: Answer, *, close: bool = False) -> bytes:
    """A non-streamed answer as HTTP/1.1 bytes."""
    extra = b"Content-Length: %d\r\n" % len(answer.body)
    if close:
        extra += b"Connection: close\r\n"
    return _head(answer.status, answer.headers, answer.content_type, extra) + answer.body


def error_answer(status: int, message: str, code: str, headers: Mapping[str, str] = {}) -> Answer:
    """A refusal from the listener itself (before any handler saw the request)."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None}}
    body["error"]["code"] = code
    if status >= 500:
        body["error"]["type"] = "server_error"
    return Answer(status, headers, orjson.dumps(body))


class _ChunkedOut(StreamOut):
    """A streamed answer written straight to a fast-lane connection, chunk-encoded; its head
    leaves with the first chunk (one send instead of two)."""

    __slots__ = ("_conn", "_head", "sent")

    def __init__(self, conn: _Connection, head: bytes) -> None:
        self._conn = conn
        self._head: bytes | None = head
        self.sent = False  # part of the answer is out: an error can no longer be answered

    def send(self, data: bytes) -> bool:
        conn = self._conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if data:
            self.sent = True
            if self._head is None:
                transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                transport.write(b"%s%x\r\n%s\r\n" % (self._head, len(data), data))
                self._head = None
        return conn.writing_paused

    async def drained(self) -> None:
        await self._conn.drained()

    def finish(self) -> None:
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        tail = b"0\r\n\r\n"
        if self._head is not None:
            tail, self._head = self._head + tail, None
        self.sent = True
        transport.write(tail)


# -- parsing --------------------------------------------------------------------------------


class _Head:
    """llhttp's callbacks for one request head (httptools calls these by name)."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


_ONE_HOST: Final = "An HTTP/1.1 request needs exactly one Host header."
# Fields a request may carry once (RFC 9110 defines them as singletons; a second one is how
# request smuggling and cache poisoning start).
_SINGLETONS: Final = frozenset(
    {
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    }
)


def _singleton_error(seen: set[bytes], name: bytes) -> str | None:
    """Count one header of a head; a message when a singleton field comes twice."""
    lower = name.lower()
    if lower not in _SINGLETONS:
        return None
    if lower in seen:
        return f"The {name.decode('latin-1')} header may appear only once."
    seen.add(lower)
    return None


# Headers that send a request to aiohttp: llhttp accepted them, aiohttp serves them.
_HAND_OVER: Final = frozenset({"transfer-encoding", "expect", "upgrade"})


@dataclass(slots=True)
class _Parsed:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    length: int
    close: bool


def _parse_head(head: bytes) -> _Parsed | str | None:
    """Parse one request head with llhttp: the request, an error message (a 400), or None
    when the request is valid but aiohttp's to serve."""
    sink = _Head()
    parser = httptools.HttpRequestParser(sink)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        return None
    except httptools.HttpParserError as exc:
        return f"Malformed HTTP request: {exc}."
    if not sink.complete:
        return "Malformed HTTP request: the head is incomplete."
    if parser.get_http_version() != "1.1" or len(sink.headers) > _MAX_HEADERS:
        return None
    pairs: list[tuple[str, str]] = []
    length = 0
    seen: set[bytes] = set()
    for raw_name, raw_value in sink.headers:
        if (error := _singleton_error(seen, raw_name)) is not None:
            return error
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        lower = name.lower()
        if lower in _HAND_OVER:
            return None
        if lower == "content-length":
            length = int(value)  # llhttp has checked it is one decimal number
        pairs.append((name, value))
    if b"host" not in seen:
        return _ONE_HOST
    return _Parsed(
        parser.get_method().decode("ascii"),
        sink.url.decode("latin-1"),
        CIMultiDictProxy(CIMultiDict(pairs)),
        length,
        not parser.should_keep_alive(),
    )


class _Refused(Exception):
    """A request the listener refuses with a 400 (the message says why)."""


class _Watch:
    """llhttp following a connection aiohttp serves, for the listener's time limits: it
    knows when a request's head and body are under way. A request llhttp rejects, or one
    the fast lane would refuse (no Host, a singleton field twice), gets a 400 and ends the
    connection: both lanes apply one set of rules."""

    __slots__ = ("body_since", "failed", "head_since", "parser", "seen")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.head_since: float | None = None
        self.body_since: float | None = None
        self.failed = False
        self.seen: set[bytes] = set()

    def on_message_begin(self) -> None:
        self.head_since = time.monotonic()
        self.seen = set()

    def on_header(self, name: bytes, value: bytes) -> None:
        if (error := _singleton_error(self.seen, name)) is not None:
            raise _Refused(error)

    def on_headers_complete(self) -> None:
        if b"host" not in self.seen and self.parser.get_http_version() == "1.1":
            raise _Refused(_ONE_HOST)
        self.head_since = None
        self.body_since = time.monotonic()

    def on_message_complete(self) -> None:
        self.head_since = self.body_since = None

    def feed(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.failed = True  # aiohttp answers upgrades; nothing more to follow
            self.head_since = self.body_since = None
        except httptools.HttpParserError as exc:
            self.failed = True
            cause = exc.__context__
            raise _Refused(
                str(cause) if isinstance(cause, _Refused) else f"Malformed HTTP request: {exc}."
            ) from None


# -- connections ----------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One client connection: served on the fast lane, or handed to aiohttp and watched."""

    __slots__ = (
        "_aiohttp",
        "_buf",
        "_drain_waiter",
        "_handler",
        "_listener",
        "_need",
        "_parsed",
        "_reading_paused",
        "_task",
        "_watch",
        "body_since",
        "close_after",
        "head_since",
        "last_active",
        "remote",
        "transport",
        "writing_paused",
    )

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._parsed: _Parsed | None = None  # a head whose body is still arriving
        self._handler: FastHandler | None = None
        self._need = 0
        self._task: asyncio.Task[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._watch: _Watch | None = None
        self._aiohttp: asyncio.Protocol | None = None
        self.writing_paused = False
        self._reading_paused = False
        self.close_after = False
        self.head_since: float | None = None
        self.body_since: float | None = None
        self.last_active = 0.0
        self.remote: str | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        self.last_active = time.monotonic()
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) and peer else None
        if len(listener.connections) >= listener.limits.max_connections:
            listener.refused += 1
            answer = error_answer(
                503,
                "The proxy has reached its connection limit (server.max_connections = "
                f"{listener.limits.max_connections}); retry shortly.",
                "too_many_connections",
                {"Retry-After": "1"},
            )
            transport.write(serialize(answer, close=True))  # type: ignore[attr-defined]
            transport.close()
            return
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._aiohttp is not None:
            self._watched(data)
            return
        self._buf = self._buf + data if self._buf else data
        if self._task is None:
            self._next()
        elif len(self._buf) > _PIPELINE_LIMIT:
            self._pause_reading()  # requests pipelined behind one in flight: stop reading

    def eof_received(self) -> bool | None:
        if self._aiohttp is not None:
            return self._aiohttp.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.connections.discard(self)
        self.transport = None
        if self._aiohttp is not None:
            self._aiohttp.connection_lost(exc)
            return
        if self._task is not None:
            self._task.cancel()  # the client went away: stop the upstream call too
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self._aiohttp is not None:
            self._aiohttp.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._aiohttp is not None:
            self._aiohttp.resume_writing()
            return
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drained(self) -> None:
        if not self.writing_paused:
            return
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- the fast lane ----------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next request in the buffer once it is whole (or hand the connection over)."""
        if self.transport is None:
            return
        parsed = self._parsed
        if parsed is None:
            buf = self._buf
            if not buf:
                self.head_since = None
                return
            if self.head_since is None:
                self.head_since = time.monotonic()
            end = buf.find(b"\r\n\r\n", 0, _MAX_HEAD + 4)
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._hand_over()  # aiohttp answers an oversized head its own way
                return
            line = buf[: buf.find(b"\r\n")].split(b" ")
            handler = (
                self._listener.routes.get(line[1].decode("latin-1")) if len(line) == 3 else None
            )
            if handler is None or line[0] != b"POST":
                self._hand_over()
                return
            result = _parse_head(buf[: end + 4])
            if result is None:
                self._hand_over()
                return
            if isinstance(result, str):
                self._refuse(400, result, "malformed_request")
                return
            self._buf = buf[end + 4 :]
            self._parsed, self._handler = result, handler
            self.head_since = None
            self.body_since = time.monotonic()
            parsed = result
        if parsed.length > self._listener.limits.max_body:
            # Not read: the handler answers 413 in its API's shape, then the connection ends.
            body: bytes | None = None
            self.close_after = True
        elif len(self._buf) < parsed.length:
            return  # wait for the rest of the body
        else:
            body = self._buf[: parsed.length]
            self._buf = self._buf[parsed.length :]
            self.close_after = parsed.close
        handler = self._handler
        assert handler is not None
        self._parsed = self._handler = None
        self.body_since = None
        request = FastRequest(parsed.method, parsed.path, parsed.headers, body, self.remote)
        self._task = asyncio.get_running_loop().create_task(self._serve(handler, request))

    async def _serve(self, handler: FastHandler, request: FastRequest) -> None:
        listener = self._listener
        listener.in_flight += 1
        try:
            await self._answer(handler, request)
        finally:
            listener.in_flight -= 1
            self._task = None
        if self.transport is None:
            return
        if self.close_after or listener.closing:
            self.transport.close()
            return
        self.last_active = time.monotonic()
        if self.writing_paused:
            # The client has not taken this answer yet: the next request waits for it.
            try:
                await self.drained()
            except ConnectionResetError:
                return
        self._resume_reading()
        if self._buf:
            self._next()

    async def _answer(self, handler: FastHandler, request: FastRequest) -> None:
        out: _ChunkedOut | None = None
        try:
            answer = await handler(request)
            if answer.stream is None:
                data = serialize(answer, close=self.close_after)
                if self.transport is not None:
                    self.transport.write(data)
                return
            extra = b"Transfer-Encoding: chunked\r\n"
            if self.close_after:
                extra += b"Connection: close\r\n"
            out = _ChunkedOut(
                self, _head(answer.status, answer.headers, answer.content_type, extra)
            )
            await answer.stream(out)
            out.finish()
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            self.close_after = True
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            if self.transport is None:
                return
            if out is not None and out.sent:
                # A streamed answer is under way: a 500 now would land in the middle of its
                # body. Cutting the connection tells the client it broke off.
                self.transport.close()
                return
            self.transport.write(serialize(self._listener.internal_error(), close=self.close_after))

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer a request the listener will not serve, and end the connection."""
        if self.transport is not None:
            self.transport.write(serialize(error_answer(status, message, code), close=True))
            self.transport.close()

    # -- handed over to aiohttp ----------------------------------------------------------------

    def _hand_over(self) -> None:
        """Give the connection (and what it has sent so far) to aiohttp, for good."""
        transport = self.transport
        listener = self._listener
        if transport is None:
            return
        if listener.closing:
            transport.close()
            return
        protocol = listener.runner.server
        assert protocol is not None, "the aiohttp runner is not set up"
        self._aiohttp = protocol()
        self._watch = _Watch()
        self._aiohttp.connection_made(transport)
        if self.writing_paused:
            self._aiohttp.pause_writing()
        self._resume_reading()
        buf, self._buf = self._buf, b""
        self.head_since = None
        if buf:
            self._watched(buf)

    def _watched(self, data: bytes) -> None:
        watch = self._watch
        assert watch is not None and self._aiohttp is not None
        try:
            watch.feed(data)
        except _Refused as refused:
            if self.transport is not None:
                log.info(
                    "malformed HTTP request refused: %s",
                    refused,
                    extra={"event": "malformed_request"},
                )
                self._refuse(400, str(refused), "malformed_request")
            return
        self._aiohttp.data_received(data)

    # -- limits ----------------------------------------------------------------------------------

    def sweep(self, now: float, limits: ListenerLimits) -> None:
        """Close this connection if a peer-controlled wait is over its limit."""
        if self.transport is None:
            return
        watch = self._watch
        head_since = watch.head_since if watch is not None else self.head_since
        body_since = watch.body_since if watch is not None else self.body_since
        if head_since is not None and now - head_since > limits.header_timeout_s:
            self._timed_out(
                f"its head within {limits.header_timeout_s:g} s (server.header_timeout_s)"
            )
        elif body_since is not None and now - body_since > limits.body_timeout_s:
            self._timed_out(f"its body within {limits.body_timeout_s:g} s (server.body_timeout_s)")
        elif (
            watch is None
            and self._task is None
            and head_since is None
            and body_since is None
            and now - self.last_active > limits.keepalive_s
        ):
            self.transport.close()  # idle keep-alive

    def _timed_out(self, what: str) -> None:
        self._listener.timeouts += 1
        if self._watch is None:
            self._refuse(408, f"The request did not send {what}.", "request_timeout")
        elif self.transport is not None:
            self.transport.close()  # aiohttp's connection: it may be mid-answer

    @property
    def lane(self) -> str:
        """ "fast" while the listener serves this connection, "aiohttp" once handed over."""
        return "fast" if self._watch is None else "aiohttp"

    def close_if_idle(self) -> None:
        if (
            self._watch is None
            and self._task is None
            and self.transport is not None
            and self._parsed is None
            and not self._buf
        ):
            self.transport.close()


@dataclass(slots=True)
class Listener:
    """Listens for clients; serves `routes` on the fast lane and hands the rest to aiohttp."""

    runner: web.AppRunner
    routes: dict[str, FastHandler]
    limits: ListenerLimits
    internal_error: Callable[[], Answer]  # the answer to a request that hit a bug
    connections: set[_Connection] = field(default_factory=set)
    in_flight: int = 0
    closing: bool = False
    refused: int = 0  # connections refused at the cap
    timeouts: int = 0  # connections closed for a slow head or body
    _servers: list[asyncio.Server] = field(default_factory=list)
    _sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_port=reuse_port or None
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.call_later(_SWEEP_S, self.sweep)

    @property
    def port(self) -> int:
        return int(self._servers[0].sockets[0].getsockname()[1])

    def stats(self) -> tuple[int, int, int, int]:
        """(fast-lane connections, aiohttp-lane connections, refused at the cap, timed out)."""
        fast = sum(1 for conn in self.connections if conn.lane == "fast")
        return fast, len(self.connections) - fast, self.refused, self.timeouts

    def sweep(self) -> None:
        """Enforce the time limits on every connection (runs once a second)."""
        now = time.monotonic()
        limits = self.limits
        for conn in list(self.connections):
            # A fast-lane request in flight (a stream may last minutes) has nothing to time:
            # the next request's head is not looked at until it is answered.
            if conn._task is None or conn._watch is not None:
                conn.sweep(now, limits)
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self.sweep)

    async def close(self, grace_s: float) -> None:
        """Stop listening, drain the fast lane within `grace_s`, then clean up aiohttp's side."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        for conn in list(self.connections):
            conn.close_if_idle()
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):  # past the grace period: cut what is left
            if conn._watch is None and conn.transport is not None:
                conn.transport.close()
        await self.runner.cleanup()
