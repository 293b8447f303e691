"""The listener: the proxy's HTTP/1.1 front door, with a fast lane for the proxied endpoints.

Why not aiohttp's server alone: its request machinery (a task per request, a Request object,
routing, middleware, a StreamResponse and its writer) cost ~110 us of CPU per request here,
most of a proxied request's CPU and latency once the upstream hop was lean. The requests a
proxy lives on are few and plain (a POST of a JSON body with a Content-Length to one of the
paths in `routes`), so the listener parses those itself and answers them through the
same handlers, and hands every other connection to aiohttp at a request boundary: admin,
metrics, the dashboard, GETs, chunked or `Expect` uploads, HTTP/1.0, anything unusual or
malformed. aiohttp then owns that connection for good, with its own parser, limits and
error answers; the fast lane never has to be lenient.

Lifecycle: `start()` listens; `close()` stops listening, lets the requests in flight finish
(within the grace period; streams included), closes idle keep-alive connections, then
cleans up the aiohttp runner (which drains the connections it owns and runs the app's
shutdown and cleanup hooks).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["FastEventStream", "FastHandler", "FastRequest", "Listener", "ProxiedRequest"]

log = logging.getLogger("llmproxy")

FastHandler = Callable[[Any], Awaitable[web.StreamResponse]]

_MAX_HEAD: Final = 8190  # aiohttp's own line limit; a longer head is aiohttp's to judge
_MAX_HEADERS: Final = 128  # aiohttp's header count limit (it answers 400 beyond it)
_PIPELINE_LIMIT: Final = 256 * 1024  # bytes held behind a request in flight
_KEEPALIVE_S: Final = 75.0  # aiohttp's default keep-alive timeout
_SWEEP_S: Final = 5.0
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers whose presence sends the request to aiohttp (it knows what to do with them).
_NOT_FAST: Final = frozenset({"transfer-encoding", "expect", "upgrade"})


class FastRequest:
    """The parts of a request the proxied endpoints read (a subset of `web.Request`'s API)."""

    __slots__ = (
        "_body",
        "_conn",
        "_stream",
        "app",
        "content_length",
        "content_type",
        "headers",
        "method",
        "path",
    )

    def __init__(
        self,
        conn: _Connection,
        app: web.Application,
        method: str,
        path: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
    ) -> None:
        self._conn = conn
        self.app = app
        self.method = method
        self.path = path
        self.headers = headers
        self._body = body
        self._stream: FastEventStream | None = None
        self.content_length: int | None = len(body)
        ctype = headers.get("Content-Type")
        self.content_type = (
            ctype.partition(";")[0].strip().lower() if ctype else "application/octet-stream"
        )

    async def read(self) -> bytes:
        return self._body

    def event_stream(self, status: int, headers: Mapping[str, str]) -> FastEventStream:
        """The streamed answer to this request (`prepare` is a no-op; the head goes first)."""
        self._stream = FastEventStream(self._conn, status, headers)
        return self._stream

    @property
    def answer_started(self) -> bool:
        """True once part of the answer (a stream's head) has been sent."""
        return self._stream is not None and self._stream._head is None


ProxiedRequest = web.Request | FastRequest


class FastEventStream(web.StreamResponse):
    """A streamed answer written straight to the connection, chunk-encoded.

    The head leaves with the first chunk (one send instead of two). `write` waits only when
    the client is not reading (the transport's buffer is over its high-water mark).

    It is a `web.StreamResponse` only so the handlers keep one return type; aiohttp never
    sees it, so its constructor (a header multidict per stream) is skipped: only `status`
    of aiohttp's surface is kept.
    """

    def __init__(self, conn: _Connection, status: int, headers: Mapping[str, str]) -> None:
        self._status = status
        self._conn = conn
        self._head: bytes | None = _head(status, headers, b"Transfer-Encoding: chunked\r\n")
        self._eof_sent = False

    def __repr__(self) -> str:
        return f"<FastEventStream {self._status} {'eof' if self._eof_sent else 'streaming'}>"

    async def prepare(self, request: Any) -> None:
        return None

    def send(self, data: bytes) -> bool:
        """Queue one chunk for the client (the `StreamOut` side of a relay); True if the
        client is not keeping up."""
        conn = self._conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if data:
            if self._head is None:
                transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                transport.write(b"%s%x\r\n%s\r\n" % (self._head, len(data), data))
                self._head = None
        return conn.writing_paused

    async def drained(self) -> None:
        await self._conn.drained()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.send(bytes(data)):
            await self._conn.drained()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        if data:
            await self.write(data)
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        tail = b"0\r\n\r\n"
        if self._head is not None:
            tail = self._head + tail
            self._head = None
        self._eof_sent = True
        transport.write(tail)


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


def _head(status: int, headers: Mapping[str, str], extra: bytes) -> bytes:
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
        + _date()
        + lines.encode("latin-1")
        + extra
        + b"\r\n"
    )


def _serialize(resp: web.StreamResponse) -> bytes:
    """A `web.Response` (status, headers, bytes body) as HTTP/1.1 bytes."""
    body = resp.body if isinstance(resp, web.Response) else None
    if not isinstance(body, (bytes, bytearray)):
        body = b""
    headers = resp.headers
    if "Content-Type" not in headers and resp.content_type:
        headers = CIMultiDict(headers)
        headers["Content-Type"] = resp.content_type
    return _head(resp.status, headers, b"Content-Length: %d\r\n" % len(body)) + bytes(body)


class _Connection(asyncio.Protocol):
    """One client connection while it is on the fast lane."""

    __slots__ = (
        "_buf",
        "_drain_waiter",
        "_have",
        "_listener",
        "_need",
        "_parts",
        "_reading_paused",
        "_task",
        "close_after",
        "last_active",
        "transport",
        "writing_paused",
    )

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._parts: list[bytes] | None = None  # a body still arriving
        self._have = self._need = 0
        self._task: asyncio.Task[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.writing_paused = False
        self._reading_paused = False
        self.close_after = False
        self.last_active = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._listener.connections.add(self)
        self.last_active = self._listener.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._listener.loop.time()
        parts = self._parts
        if parts is not None:  # the rest of a large body: joined once, not copied per piece
            parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            self._buf = b"".join(parts)
            self._parts = None
        else:
            self._buf = self._buf + data if self._buf else data
        if self._task is None:
            self._next()
        elif len(self._buf) > _PIPELINE_LIMIT and not self._reading_paused:
            # Requests pipelined behind one in flight: stop reading until it is answered.
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.connections.discard(self)
        self.transport = None
        if self._task is not None:
            self._task.cancel()  # the client went away: stop the upstream call too
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drained(self) -> None:
        if not self.writing_paused:
            return
        waiter = self._drain_waiter = self._listener.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    # -- requests ------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next complete request in the buffer, or hand the connection over."""
        buf = self._buf
        if not buf or self.transport is None:
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._hand_over()
            return
        parsed = self._parse(buf, end)
        if parsed is None:
            self._hand_over()
            return
        handler, method, path, headers, length, close = parsed
        start = end + 4
        if len(buf) - start < length:  # wait for the rest of the body
            self._parts, self._have, self._need = [buf], len(buf), start + length
            self._buf = b""
            return
        body = buf[start : start + length]
        self._buf = buf[start + length :]
        self.close_after = close
        listener = self._listener
        request = FastRequest(self, listener.app, method, path, headers, body)
        self._task = listener.loop.create_task(self._serve(handler, request))

    def _parse(
        self, buf: bytes, end: int
    ) -> tuple[FastHandler, str, str, CIMultiDictProxy[str], int, bool] | None:
        if end > _MAX_HEAD:
            return None
        lines = buf[:end].decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path, _, version = rest.partition(" ")
        if method != "POST" or version != "HTTP/1.1" or len(lines) > _MAX_HEADERS + 1:
            return None
        handler = self._listener.routes.get(path)
        if handler is None:
            return None
        pairs: list[tuple[str, str]] = []
        length = -1
        close = False
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                return None
            value = value.strip(" \t")
            if "\n" in value or "\r" in value or "\x00" in value:
                return None
            lower = name.lower()
            if lower == "content-length":
                if length >= 0 or not value.isdigit() or not value.isascii():
                    return None
                length = int(value)
            elif lower in _NOT_FAST:
                return None
            elif lower == "connection":
                close = "close" in value.lower()
            pairs.append((name, value))
        if length < 0 or length > self._listener.max_body:
            return None  # aiohttp answers what the handler would (411, 413) its own way
        return handler, method, path, CIMultiDictProxy(CIMultiDict(pairs)), length, close

    async def _serve(self, handler: FastHandler, request: FastRequest) -> None:
        listener = self._listener
        listener.in_flight += 1
        try:
            try:
                resp = await handler(request)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("unhandled error serving %s %s", request.method, request.path)
                if request.answer_started:
                    # A streamed answer is under way: a 500 now would land in the middle
                    # of its body. Cutting the connection tells the client it broke off.
                    if self.transport is not None:
                        self.transport.close()
                    return
                data: bytes | None = _serialize(listener.internal_error())
            else:
                data = None if isinstance(resp, FastEventStream) else _serialize(resp)
            transport = self.transport
            if transport is None:
                return
            if data is not None:
                transport.write(data)
            if self.close_after or listener.closing:
                transport.close()
                return
        finally:
            listener.in_flight -= 1
            self._task = None
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self.last_active = listener.loop.time()
        if self._buf:
            self._next()

    def _hand_over(self) -> None:
        """Give the connection (and what it has sent so far) to aiohttp, for good."""
        transport = self.transport
        listener = self._listener
        if transport is None:
            return
        listener.connections.discard(self)
        if listener.closing:
            transport.close()
            return
        protocol = listener.runner.server
        assert protocol is not None, "the aiohttp runner is not set up"
        handler = protocol()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        buf, self._buf = self._buf, b""
        self.transport = None
        if buf:
            handler.data_received(buf)

    def close_if_idle(self, idle_before: float) -> None:
        if self._task is None and self.transport is not None and self.last_active < idle_before:
            self.transport.close()


class Listener:
    """Listens for clients; serves `routes` on the fast lane and hands the rest to aiohttp."""

    def __init__(
        self,
        runner: web.AppRunner,
        routes: Mapping[str, FastHandler],
        *,
        max_body: int,
        internal_error: Callable[[], web.Response],
        keepalive_s: float = _KEEPALIVE_S,
    ) -> None:
        self.runner = runner
        self.internal_error = internal_error  # the answer to a request that hit a bug
        self.app = runner.app
        self.routes = dict(routes)
        self.max_body = max_body
        self.keepalive_s = keepalive_s
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        server = await self.loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_port=reuse_port or None
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_SWEEP_S, self._sweep)

    @property
    def port(self) -> int:
        return int(self._servers[0].sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than `keepalive_s`."""
        idle_before = self.loop.time() - self.keepalive_s
        for conn in list(self.connections):
            conn.close_if_idle(idle_before)
        self._sweeper = self.loop.call_later(_SWEEP_S, self._sweep)

    async def close(self, grace_s: float) -> None:
        """Stop listening, drain the fast lane within `grace_s`, then clean up aiohttp's side."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        deadline = self.loop.time() + grace_s
        for conn in list(self.connections):
            conn.close_if_idle(float("inf"))
        while self.in_flight and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):  # past the grace period: cut what is left
            if conn.transport is not None:
                conn.transport.close()
        await self.runner.cleanup()
