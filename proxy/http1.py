"""A lean HTTP/1.1 client for the calls to vendors: keep-alive pools over asyncio protocols.

Why not aiohttp's ClientSession: a proxied request spends most of its CPU in the two HTTP
hops, and aiohttp's client alone cost ~150 us of CPU per call here (URL objects, multidict
headers, payload registry, timers, cookie handling), ~100 us more than a protocol that
builds the request as one bytes object and parses only what a proxy needs. That was a
third of a pass-through request's CPU and most of its added latency.

What it does: HTTP/1.1 over TCP or TLS, one keep-alive pool per vendor with a connection
limit (callers queue beyond it), idle connections dropped after `keepalive_s` or when the
server closes them, Content-Length, chunked and read-until-close bodies, gzip/deflate
answers, 1xx answers skipped, back-pressure (a slow reader pauses the socket), and one
transparent retry when a *reused* connection turns out to be closed before a single byte
of the answer came back (the server dropped an idle connection: the request never reached
it). Every wait has a deadline and raises TimeoutError; errors are the exception types
below, which the transport classifier knows.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "BodyIncomplete",
    "Headers",
    "Pool",
    "ProtocolError",
    "RemoteDisconnected",
    "Response",
]

_MAX_HEAD: Final = 64 * 1024  # status line + headers
_PAUSE_AT: Final = 256 * 1024  # buffered body bytes that pause the socket
_RESUME_AT: Final = 64 * 1024
_NO_BODY_STATUS: Final = frozenset({204, 304})


class ProtocolError(Exception):
    """The server's answer is not valid HTTP/1.1 (or uses what this client does not speak)."""


class BodyIncomplete(ProtocolError):
    """The connection ended before the body did (a truncated answer)."""


class RemoteDisconnected(ConnectionResetError):
    """The server closed the connection before any byte of its answer arrived."""


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed URL: where to connect and what to put on the request line."""

    key: tuple[str, int, bool]  # host, port, tls
    host_header: bytes
    path: bytes


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    default = port == (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return _Target(
        (host, port, tls),
        (shown if default else f"{shown}:{port}").encode("ascii" if host.isascii() else "idna"),
        path.encode("ascii"),
    )


class Headers(Mapping[str, str]):
    """Request headers that do not change between calls (a vendor's own): checked and
    encoded once, not on every request."""

    __slots__ = ("_items", "encoded")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._items = dict(headers)
        self.encoded = _encode_headers(self._items)

    def __getitem__(self, name: str) -> str:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def plus(self, extra: Mapping[str, str]) -> Headers:
        """These headers and `extra` (per call, e.g. a trace context): only `extra` is encoded."""
        if not extra.keys().isdisjoint(self._items):
            return Headers({**self._items, **extra})
        both = Headers.__new__(Headers)
        both._items = {**self._items, **extra}
        both.encoded = self.encoded + _encode_headers(extra)
        return both


def _encode_headers(headers: Mapping[str, str]) -> bytes:
    if isinstance(headers, Headers):
        return headers.encoded
    out = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} has a character HTTP does not allow")
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")


class _Decoder:
    """Undoes a Content-Encoding (gzip or deflate, zlib-wrapped or raw)."""

    __slots__ = ("_raw", "_z")

    def __init__(self, encoding: str) -> None:
        self._raw = encoding == "deflate"
        self._z = zlib.decompressobj(47 if encoding == "gzip" else 15)

    def feed(self, data: bytes) -> bytes:
        try:
            return self._z.decompress(data)
        except zlib.error:
            if not self._raw:
                raise ProtocolError("invalid gzip body") from None
            # Some servers send raw deflate under "deflate": retry once without the wrapper.
            self._raw = False
            self._z = zlib.decompressobj(-15)
            try:
                return self._z.decompress(data)
            except zlib.error:
                raise ProtocolError("invalid deflate body") from None

    def flush(self) -> bytes:
        return self._z.flush()


# Body framing, decided from the head.
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NONE = 0, 1, 2, 3
# Chunked decoder states.
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, parses the answer into a `Response`."""

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_chunk_state",
        "_decoder",
        "_framing",
        "_head_waiter",
        "_left",
        "_paused",
        "_pool",
        "_whole_chunks_to",
        "closed",
        "got_bytes",
        "idle_since",
        "keep_alive",
        "key",
        "response",
        "reused",
        "transport",
    )

    def __init__(self, pool: Pool, key: tuple[str, int, bool]) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._head_waiter: asyncio.Future[Response] | None = None
        self.response: Response | None = None
        self.got_bytes = False
        self.keep_alive = True
        self._framing = _NONE
        self._left = 0
        self._chunk_state = _SIZE
        self._chunk_left = 0
        self._decoder: _Decoder | None = None
        self._paused = False
        # Set while a chunked, unencoded body is delivered by callback (see data_received).
        self._whole_chunks_to: Callable[[bytes], None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        deliver = self._whole_chunks_to
        if deliver is not None and self._chunk_state == _SIZE and not self._buf:
            # The common case of a relayed stream: one read is exactly one whole chunk
            # (a vendor writes an event at a time). It is handed on without the general
            # decoder's bookkeeping; anything else takes the general path below.
            eol = data.find(b"\r\n")
            if eol > 0:
                try:
                    size = int(data[:eol], 16)
                except ValueError:
                    size = 0
                end = eol + 2 + size
                if size > 0 and len(data) == end + 2 and data.endswith(b"\r\n"):
                    deliver(data[eol + 2 : end])
                    return
        self.got_bytes = True
        waiter = None
        if self.response is None:
            waiter = self._head_waiter
            if waiter is None:  # bytes nobody asked for: the connection is unusable
                self._abort()
                return
            data = self._buf + data if self._buf else data
            try:
                rest = self._parse_head(data)
            except ProtocolError as exc:
                self._fail(exc)
                return
            if rest is None:
                return
            data = rest
        if data:
            try:
                self._feed_body(data)
            except ProtocolError as exc:
                self._fail(exc)
        # The caller learns of the answer only now, with the body bytes that came along in
        # hand, and last: it resumes inside this call (see `_PromptFuture`) and may reuse
        # or reset this connection.
        if waiter is not None and not waiter.done() and self.response is not None:
            waiter.set_result(self.response)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost settles the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._lost(self)
        response = self.response
        if response is None:
            waiter = self._head_waiter
            if waiter is not None and not waiter.done():
                if self.got_bytes:
                    waiter.set_exception(BodyIncomplete("the connection closed mid-header"))
                else:
                    waiter.set_exception(
                        RemoteDisconnected("the server closed the connection before answering")
                    )
            return
        if response._eof:
            return
        if self._framing == _UNTIL_CLOSE:
            decoder = self._decoder
            if decoder is not None:
                try:
                    tail = decoder.flush()
                except zlib.error:
                    tail = b""
                if tail:
                    response._push(tail)
            response._finish()
        else:
            response._break(BodyIncomplete("the connection closed before the body ended"))

    def pause_writing(self) -> None:  # requests are small; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # -- parsing ----------------------------------------------------------------------

    def _parse_head(self, data: bytes) -> bytes | None:
        """Parse the status line and headers; the bytes after them, or None if incomplete."""
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _MAX_HEAD:
                    raise ProtocolError("response head too large")
                self._buf = data
                return None
            head = data[:end].decode("latin-1")
            data = data[end + 4 :]
            lines = head.split("\r\n")
            status_line = lines[0]
            if not status_line.startswith("HTTP/1.") or len(status_line) < 12:
                raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:40]!r}")
            try:
                status = int(status_line[9:12])
            except ValueError:
                raise ProtocolError(f"bad status code in {status_line[:40]!r}") from None
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue, 103 Early Hints: the real answer follows
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name[-1] in " \t":
                    raise ProtocolError(f"malformed header line {line[:40]!r}")
                name = name.lower()
                value = value.strip()
                old = headers.get(name)
                headers[name] = value if old is None else f"{old}, {value}"
            self._buf = b""
            self._start_body(status, status_line[7] == "1", headers)
            return data

    def _start_body(self, status: int, http11: bool, headers: dict[str, str]) -> None:
        connection = headers.get("connection", "").lower()
        self.keep_alive = http11 and "close" not in connection
        if status in _NO_BODY_STATUS:
            framing = _NONE
        elif "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise ProtocolError("unsupported transfer-encoding")
            framing = _CHUNKED
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise ProtocolError("invalid content-length") from None
            if self._left < 0:
                raise ProtocolError("invalid content-length")
            framing = _LENGTH if self._left else _NONE
        else:
            framing = _UNTIL_CLOSE
            self.keep_alive = False
        self._framing = framing
        encoding = headers.get("content-encoding")
        if encoding is not None and framing != _NONE:
            encoding = encoding.strip().lower()
            if encoding in ("gzip", "x-gzip", "deflate"):
                self._decoder = _Decoder("gzip" if encoding != "deflate" else "deflate")
            elif encoding != "identity":
                raise ProtocolError(f"unsupported content-encoding {encoding!r}")
        response = Response(self, status, headers)
        self.response = response
        if framing == _NONE:
            response._finish()

    def _feed_body(self, data: bytes) -> None:
        response = self.response
        assert response is not None
        if response._eof:
            # Bytes after a complete answer: the connection is out of step, never reuse it.
            self.keep_alive = False
            return
        framing = self._framing
        if framing == _LENGTH:
            left = self._left
            if len(data) >= left:
                if len(data) > left:
                    self.keep_alive = False
                    data = data[:left]
                self._left = 0
                self._deliver(data)
                self._end_body()
            else:
                self._left = left - len(data)
                self._deliver(data)
        elif framing == _CHUNKED:
            self._feed_chunked(data)
        else:  # _UNTIL_CLOSE
            self._deliver(data)

    def _feed_chunked(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos = 0
        n = len(buf)
        out: list[bytes] = []
        while pos < n:
            state = self._chunk_state
            if state == _DATA:
                take = min(self._chunk_left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._chunk_state = _DATA_END
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > 4096:
                    raise ProtocolError("chunk size line too long")
                self._buf = buf[pos:]
                break
            line = buf[pos:eol]
            pos = eol + 2
            if state == _SIZE:
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError("invalid chunk size") from None
                if size < 0:
                    raise ProtocolError("invalid chunk size")
                if size:
                    self._chunk_left = size
                    self._chunk_state = _DATA
                else:
                    self._chunk_state = _TRAILER
            elif state == _DATA_END:
                if line:
                    raise ProtocolError("chunk data longer than its size")
                self._chunk_state = _SIZE
            elif not line:  # _TRAILER: the blank line after (optional) trailers ends the body
                if pos < n:
                    self.keep_alive = False
                if out:
                    self._deliver(b"".join(out))
                self._end_body()
                return
        if out:
            self._deliver(out[0] if len(out) == 1 else b"".join(out))

    def _deliver(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is not None:
            data = decoder.feed(data)
            if not data:
                return
        response = self.response
        assert response is not None
        response._push(data)
        if response._buffered > _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _end_body(self) -> None:
        decoder = self._decoder
        response = self.response
        assert response is not None
        if decoder is not None:
            tail = decoder.flush()
            if tail:
                response._push(tail)
        response._finish()

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _fail(self, exc: ProtocolError) -> None:
        waiter = self._head_waiter
        if self.response is None and waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif self.response is not None and not self.response._eof:
            self.response._break(exc)
        self._abort()

    def _abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    # -- used by Pool and Response ------------------------------------------------------

    def send(self, data: bytes, waiter: asyncio.Future[Response]) -> None:
        self._reset()
        self._head_waiter = waiter
        assert self.transport is not None
        self.transport.write(data)


class Response:
    """An answer's status, headers and body.

    `headers` has lower-case names (repeated headers joined with ", "). Read the body with
    `read_some` (as it arrives) or `read`, then `release()` (reuse the connection) or
    `close()` (abort; for an answer not read to its end).
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_eof",
        "_error",
        "_on_data",
        "_on_end",
        "_released",
        "_waiter",
        "content_type",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        ctype = headers.get("content-type")
        self.content_type = (
            ctype.partition(";")[0].strip().lower() if ctype else "application/octet-stream"
        )
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[BaseException | None], None] | None = None

    # -- fed by the connection ----------------------------------------------------------

    def _push(self, data: bytes) -> None:
        if self._on_data is not None:
            self._on_data(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()

    def _finish(self) -> None:
        self._eof = True
        self._conn._whole_chunks_to = None
        self._wake()
        if self._on_end is not None:
            self._on_end(None)

    def _break(self, exc: BaseException) -> None:
        self._error = exc
        self._eof = True
        self._conn._whole_chunks_to = None
        self._wake()
        if self._on_end is not None:
            self._on_end(exc)

    # -- delivery by callback (a relay that has nothing to wait for between chunks) -------

    def deliver_to(
        self, on_data: Callable[[bytes], None], on_end: Callable[[BaseException | None], None]
    ) -> None:
        """From now on hand each piece of the body to `on_data` as it arrives (what is
        buffered first), and call `on_end` once: with None at the body's end, or the error
        that broke it. Both run inside the connection's data callback: they must not block."""
        chunks = self._chunks
        while chunks:
            data = chunks.popleft()
            self._buffered -= len(data)
            on_data(data)
        self._conn._resume()
        if self._eof:
            on_end(self._error)
            return
        self._on_data = on_data
        self._on_end = on_end
        conn = self._conn
        if conn._framing == _CHUNKED and conn._decoder is None:
            conn._whole_chunks_to = on_data

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this answer's connection runs on."""
        return self._conn._pool.loop

    def stop_delivery(self) -> None:
        self._on_data = self._on_end = None
        self._conn._whole_chunks_to = None

    def pause(self) -> None:
        """Stop reading the socket (the consumer is not keeping up)."""
        transport = self._conn.transport
        if transport is not None and not self._eof:
            transport.pause_reading()

    def resume(self) -> None:
        transport = self._conn.transport
        if transport is not None and not self._eof:
            transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the reader's side ----------------------------------------------------------------

    @property
    def at_eof(self) -> bool:
        """True when the whole body has been read."""
        return self._eof and not self._chunks

    async def read_some(self, deadline: float | None = None) -> bytes:
        """The next bytes of the body as they arrived (b"" at its end).

        Waits at most until `deadline` (loop time), else the pool's `read_s` from now;
        raises TimeoutError past it, BodyIncomplete/ProtocolError if the body broke off.
        """
        chunks = self._chunks
        if not chunks:
            if self._eof:
                if self._error is not None:
                    raise self._error
                return b""
            await self._wait(deadline)
            if not chunks:
                if self._error is not None:
                    raise self._error
                return b""
        data = chunks.popleft() if len(chunks) == 1 else b"".join(self._drain())
        self._buffered -= len(data)
        if self._buffered < _RESUME_AT:
            self._conn._resume()
        return data

    def _drain(self) -> list[bytes]:
        chunks = list(self._chunks)
        self._chunks.clear()
        return chunks

    async def read(self, limit: int | None = None, deadline: float | None = None) -> bytes:
        """The rest of the body (at most `limit` bytes; the rest is left unread)."""
        parts: list[bytes] = []
        size = 0
        while limit is None or size < limit:
            data = await self.read_some(deadline)
            if not data:
                break
            parts.append(data)
            size += len(data)
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return body if limit is None else body[:limit]

    async def _wait(self, deadline: float | None) -> None:
        loop = self._conn._pool.loop
        waiter = loop.create_future()
        self._waiter = waiter
        when = loop.time() + self._conn._pool.read_s if deadline is None else deadline
        timer = loop.call_at(when, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def release(self) -> None:
        """Done with this answer: the connection goes back to the pool if it can be reused."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if self._eof and self._error is None and conn.keep_alive and not conn.closed:
            conn._pool._put(conn)
        else:
            conn._pool._discard(conn)

    def close(self) -> None:
        """Abort: the server sees the disconnect (and stops generating)."""
        if self._released:
            return
        self._released = True
        self._conn._pool._discard(self._conn)


class _PromptFuture(asyncio.Future[Any]):
    """A future whose result wakes its waiter at once, inside the `set_result` call.

    An answer's head arrives in a connection callback; with a plain future the request's
    task would resume only on the loop's next turn, after every other callback of this
    one: under streaming load (a burst of relayed events per turn) that wait was ~0.2 ms
    of a stream's time to first byte. Only results are prompt; exceptions and
    cancellation wake the waiter the usual way, on the next turn. (It keeps its own
    callbacks: the C future schedules the ones it holds, and cannot be asked not to.)

    Used for streams only: for JSON answers it bought no measurable latency at
    concurrency 1 and cost ~10% more CPU per request at concurrency 32 (A/B, this machine).
    """

    def __init__(self, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._prompt: list[tuple[Callable[[Any], object], contextvars.Context]] = []

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        if context is None:
            context = contextvars.copy_context()
        if self.done():
            self.get_loop().call_soon(fn, self, context=context)
        else:
            self._prompt.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        kept = [(f, c) for f, c in self._prompt if f != fn]
        removed = len(self._prompt) - len(kept)
        self._prompt = kept
        return removed

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        callbacks, self._prompt = self._prompt, []
        for fn, context in callbacks:
            try:
                context.run(fn, self)
            except Exception as exc:  # a callback's bug must not break the connection's
                self.get_loop().call_exception_handler(
                    {"message": "error in a future's done callback", "exception": exc}
                )

    def set_exception(self, exception: type | BaseException) -> None:
        super().set_exception(exception)
        self._schedule()

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self._schedule()
        return True

    def _schedule(self) -> None:
        callbacks, self._prompt = self._prompt, []
        loop = self.get_loop()
        for fn, context in callbacks:
            loop.call_soon(fn, self, context=context)


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Pool:
    """Keep-alive connections to one vendor's hosts, at most `limit` open at once.

    `read_s` bounds every wait for bytes that has no deadline of its own (the socket read
    timeout); `keepalive_s` how long an idle connection is kept.
    """

    def __init__(
        self,
        *,
        limit: int = 100,
        read_s: float = 300.0,
        keepalive_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limit = limit
        self.read_s = read_s
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._connecting = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._targets: dict[str, _Target] = {}
        self._closed = False
        self.loop = asyncio.get_running_loop()

    # -- the public surface ---------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        deadline: float,
        connect_s: float = 10.0,
        prompt: bool = False,
        on_sent: Callable[[], object] | None = None,
    ) -> Response:
        """Send one request; returns once the answer's head has arrived (before `deadline`,
        loop time). Connecting is bounded by `connect_s` as well.

        `prompt`: resume the caller inside the callback that brought the head (see
        `_PromptFuture`), for answers whose first byte is latency-critical (streams).
        `on_sent`: called once the request is written, so a caller can tell a failure to
        connect from a vendor that took the request and did not answer."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _parse_url(url)
        length = b"Content-Length: %d\r\n" % len(body) if body or method == "POST" else b""
        data = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n%s" % (
            method.encode("ascii"),
            target.path,
            target.host_header,
            _encode_headers(headers),
            length,
            body,
        )
        loop = self.loop
        for retry in (False, True):
            conn = await self._acquire(target.key, deadline, connect_s)
            waiter: asyncio.Future[Response] = (
                _PromptFuture(loop=loop) if prompt else loop.create_future()
            )
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                conn.send(data, waiter)
                if on_sent is not None:
                    on_sent()
                return await waiter
            except RemoteDisconnected:
                self._discard(conn)
                if conn.reused and not retry:
                    continue  # an idle connection the server had already closed
                raise
            except BaseException:
                self._discard(conn)
                raise
            finally:
                timer.cancel()
        raise AssertionError("unreachable")  # pragma: no cover

    def stats(self) -> tuple[int, int]:
        """(connections in use, idle connections)."""
        return len(self._busy), sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        """Close every connection; requests still running see their connection lost."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn._abort()
        self._idle.clear()
        for conn in list(self._busy):
            conn._abort()
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("the vendor's pool was closed"))
        await asyncio.sleep(0)  # let the transports' connection_lost run

    # -- connections ------------------------------------------------------------------------

    async def _acquire(
        self, key: tuple[str, int, bool], deadline: float, connect_s: float
    ) -> _Connection:
        if self._closed:
            raise ConnectionResetError("the vendor's pool is closed")
        idle = self._idle.get(key)
        if idle:
            stale_before = self.loop.time() - self.keepalive_s
            while idle:
                conn = idle.pop()
                if conn.closed or conn.idle_since < stale_before:
                    conn._abort()
                    continue
                conn.reused = True
                self._busy.add(conn)
                return conn
        while len(self._busy) + self._connecting + self._idle_count() >= self.limit:
            if not self._evict_idle():
                await self._queued(deadline)
                idle = self._idle.get(key)
                if idle:
                    return await self._acquire(key, deadline, connect_s)
        self._connecting += 1
        try:
            conn = await self._connect(key, min(deadline, self.loop.time() + connect_s))
        finally:
            self._connecting -= 1
        self._busy.add(conn)
        return conn

    def _idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def _evict_idle(self) -> bool:
        """At the limit: close an idle connection to another host to make room."""
        for conns in self._idle.values():
            if conns:
                conns.pop(0)._abort()
                return True
        return False

    async def _queued(self, deadline: float) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._queue.append(waiter)
        timer = self.loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._queue:
                self._queue.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_one()  # we were woken but leave: pass the turn on
            raise
        finally:
            timer.cancel()

    def _wake_one(self) -> None:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, key: tuple[str, int, bool], deadline: float) -> _Connection:
        host, port, tls = key
        context: ssl.SSLContext | None = None
        if tls:
            context = self._ssl
            if context is None:
                context = self._ssl = ssl.create_default_context()
        conn = _Connection(self, key)
        async with asyncio.timeout_at(deadline):
            await self.loop.create_connection(
                lambda: conn, host, port, ssl=context, server_hostname=host if tls else None
            )
        return conn

    def _put(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if self._closed or conn.closed:
            conn._abort()
        else:
            conn.idle_since = self.loop.time()
            conn.response = None
            conn._head_waiter = None
            self._idle.setdefault(conn.key, []).append(conn)
        if self._queue:
            self._wake_one()

    def _discard(self, conn: _Connection) -> None:
        if conn in self._busy:
            self._busy.discard(conn)
            if self._queue:
                self._wake_one()
        conn._abort()

    def _lost(self, conn: _Connection) -> None:
        """A connection closed (by either side)."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if self._queue:
                self._wake_one()
