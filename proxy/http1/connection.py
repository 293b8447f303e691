"""One keep-alive connection: sends a request and parses the answer with llhttp.

The framing (status line, headers, Content-Length, chunked, what a keep-alive connection
may carry next) is llhttp's, through httptools, in its strict mode: a Content-Length that
is not plain digits, a chunk size that is not plain hex, Content-Length and
Transfer-Encoding together, a header line it cannot read... each fails the answer, and
the connection is closed, never reused. What is left here is what llhttp leaves to its
user: a bound on the head's size, which answers to skip (1xx), the headers as a dict,
Content-Encoding, back-pressure, and telling the pool and the reader what happened.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from proxy.http1.decode import ENCODINGS, Inflater
from proxy.http1.errors import (
    BodyIncomplete,
    EgressProxyError,
    ProtocolError,
    RemoteDisconnected,
)
from proxy.http1.response import PAUSE_AT, RESUME_AT, Response

if TYPE_CHECKING:
    from proxy.http1.pool import Pool
    from proxy.http1.request import PoolKey

__all__ = ["MAX_HEAD", "Connection"]

MAX_HEAD: Final = 64 * 1024  # status line and headers, interim (1xx) answers included
_NO_BODY: Final = frozenset({204, 304})


class _OutOfStep(ProtocolError):
    """A second answer began after the one that was asked for was complete."""


class Connection(asyncio.Protocol):
    """A connection to one target (through its egress route, `key`), carrying one request
    at a time; its parser lives as long as it does, as keep-alive framing requires."""

    __slots__ = (
        "_body_done",
        "_complete",
        "_head_bytes",
        "_head_waiter",
        "_headers",
        "_held",
        "_inflater",
        "_parser",
        "_paused",
        "_until_close",
        "closed",
        "idle_since",
        "keep_alive",
        "key",
        "pool",
        "response",
        "reused",
        "transport",
    )

    def __init__(self, pool: Pool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._parser = HttpResponseParser(self)
        self._paused = False  # the socket is paused because the reader lags
        self._held = False  # the socket is paused because the consumer asked (`hold`)
        self._reset()

    def _reset(self) -> None:
        self._head_waiter: asyncio.Future[Response] | None = None
        self.response: Response | None = None
        self.keep_alive = True
        self._head_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._complete = False  # llhttp saw the whole answer
        self._until_close = False  # the body ends when the connection does
        self._inflater: Inflater | None = None
        self._body_done = False  # the compressed body has ended (what it inflates to may not)
        if (self._paused or self._held) and self.transport is not None:
            self.transport.resume_reading()
        self._paused = self._held = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        waiter = self._head_waiter
        if response is None:
            if waiter is None:  # bytes nobody asked for: the connection is unusable
                self._abort()
                return
            self._head_bytes += len(data)
        elif self._complete:  # bytes after a whole answer: out of step, never reuse it
            self.keep_alive = False
            return
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            if self._complete:
                self.keep_alive = False  # the answer is whole; what follows it is not ours
            else:
                self._fail(_parse_error(exc))  # the head's waiter, or else the body, learns it
        if response is None:
            response = self.response
            if response is None:
                if self._head_bytes > MAX_HEAD:
                    self._fail(ProtocolError(f"the answer's head is larger than {MAX_HEAD} bytes"))
                return
            # The caller learns of the answer only now, with the body bytes that came along
            # in hand, and last: it may resume inside this call (see `PromptFuture`) and
            # reuse or reset this connection.
            if waiter is not None and not waiter.done():
                waiter.set_result(response)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost settles the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        response = self.response
        if response is None:
            waiter = self._head_waiter
            if waiter is not None and not waiter.done():
                if self._head_bytes:
                    waiter.set_exception(BodyIncomplete("the connection closed mid-head"))
                else:
                    waiter.set_exception(
                        RemoteDisconnected("the server closed the connection before answering")
                    )
            return
        if response._eof:
            return
        if not (self._complete or self._until_close):
            response._break(BodyIncomplete("the connection closed before the body ended"))
            return
        if self._inflater is None:
            response._finish()
            return
        self._body_done = True
        try:
            self._pump()
        except ProtocolError as error:
            response._break(error)

    def pause_writing(self) -> None:  # requests are small; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # -- llhttp's callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _OutOfStep("a second answer followed the first")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        lines = self._headers
        self._headers = []
        if status < 200:
            if status == 101:
                raise ProtocolError("the server switched protocols (101), which was not asked for")
            return  # 100 Continue, 103 Early Hints: the real answer follows
        if status == 407:
            self._proxy_refused()
        if self._head_bytes > MAX_HEAD and _head_size(lines) > MAX_HEAD:
            raise ProtocolError(f"the answer's head is larger than {MAX_HEAD} bytes")
        if not parser.get_http_version().startswith("1."):
            raise ProtocolError("not an HTTP/1.x answer")
        headers: dict[str, str] = {}
        for raw_name, raw_value in lines:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").strip()
            old = headers.get(name)
            headers[name] = value if old is None else f"{old}, {value}"
        framing = headers.get("transfer-encoding")
        if framing is not None and framing.lower() != "chunked":
            raise ProtocolError("unsupported transfer-encoding (only chunked is spoken)")
        has_body = status not in _NO_BODY and headers.get("content-length") != "0"
        if has_body and framing is None and "content-length" not in headers:
            self._until_close = True
            self.keep_alive = False
        encoding = headers.get("content-encoding")
        if encoding is not None and has_body:
            encoding = encoding.strip().lower()
            if encoding in ENCODINGS:
                self._inflater = Inflater(encoding, self.pool.max_decoded)
            elif encoding != "identity":
                raise ProtocolError("unsupported content-encoding (gzip and deflate are spoken)")
        self.response = Response(self, status, headers)

    def _proxy_refused(self) -> None:
        """A 407 on plain HTTP through a proxy is the proxy's, not the vendor's: say so."""
        host, port, tls, proxy = self.key
        if proxy is not None and not tls:
            raise EgressProxyError.refused(
                proxy.address, f"{host}:{port}", 407, "", with_credentials=bool(proxy.authorization)
            )

    def on_body(self, data: bytes) -> None:
        inflater = self._inflater
        if inflater is not None:
            inflater.add(data)
            self._pump()
            return
        response = self.response
        assert response is not None
        response._push(data)
        if response._buffered > PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self.response
        if response is None:
            return  # the end of an interim (1xx) answer
        if not self._parser.should_keep_alive():
            self.keep_alive = False
        if self._inflater is None:
            response._finish()
        else:
            self._body_done = True
            self._pump()
        self._complete = True

    # -- the body -------------------------------------------------------------------------

    def _pump(self) -> None:
        """Inflate what the reader has room for; end the body once all of it is out.
        Raises ProtocolError (corrupt data, ResponseTooLarge)."""
        inflater = self._inflater
        response = self.response
        assert inflater is not None and response is not None
        while inflater.more and not self._held:
            data = inflater.take()
            if data:
                response._push(data)
            if response._buffered > PAUSE_AT:
                if not self._paused and self.transport is not None:
                    self._paused = True
                    self.transport.pause_reading()
                return
        if self._body_done and not inflater.more and not response._eof:
            tail = inflater.finish()
            if tail:
                response._push(tail)
            response._finish()

    def _inflate_more(self) -> bool:
        """Inflate what there is room for now; False if that failed the answer."""
        response = self.response
        if self._inflater is None or response is None or response._eof:
            return True
        try:
            self._pump()
        except ProtocolError as exc:
            self._fail(exc)
            return False
        return True

    def drained(self) -> None:
        """The reader took what was buffered (or took over by callback): go on reading."""
        if self._inflater is not None:
            if not self._inflate_more():
                return
            if self.response is not None and self.response._buffered >= RESUME_AT:
                return  # what the inflating added is the read-ahead already
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def hold(self) -> None:
        """The consumer cannot take more for now: stop reading the socket."""
        self._held = True
        if self.transport is not None:
            self.transport.pause_reading()

    def unhold(self) -> None:
        self._held = False
        if self._inflate_more() and not self._paused and self.transport is not None:
            self.transport.resume_reading()

    # -- failures ------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        waiter = self._head_waiter
        response = self.response
        if response is None:
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
        elif not response._eof:
            response._break(exc)
        self._abort()

    def _abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    # -- used by the pool -------------------------------------------------------------------

    def send(self, data: bytes, waiter: asyncio.Future[Response]) -> None:
        self._reset()
        self._head_waiter = waiter
        assert self.transport is not None
        self.transport.write(data)


def _head_size(lines: list[tuple[bytes, bytes]]) -> int:
    """About how many bytes a head took (its header lines; the status line is short)."""
    return sum(len(name) + len(value) + 4 for name, value in lines)


def _parse_error(exc: Exception) -> BaseException:
    """What to tell the reader about an answer llhttp (or one of our callbacks) refused."""
    cause = exc.__context__
    if isinstance(cause, Exception) and not isinstance(cause, HttpParserError):
        return cause  # raised by a callback: a ProtocolError of ours, or a consumer's bug
    if isinstance(exc, HttpParserUpgrade):
        return ProtocolError("the server switched protocols, which was not asked for")
    return ProtocolError(f"invalid HTTP answer: {exc}")
