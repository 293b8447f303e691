"""Opening a CONNECT tunnel through an HTTP proxy, for TLS to an https:// vendor.

The proxy's answer to CONNECT is parsed by llhttp like any other; a 2xx means the
connection is now a byte pipe to the vendor, and the caller starts TLS on it. Anything
else is an `EgressProxyError` that says what the proxy wanted, in words that tell the
operator what to change (never the credentials).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, TypeVar

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from proxy.http1.connection import MAX_HEAD
from proxy.http1.egress import ProxyURL
from proxy.http1.errors import EgressProxyError

__all__ = ["connect_to_proxy", "open_tunnel"]

_REASON_CHARS: Final = 60
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class _Handshake(asyncio.Protocol):
    """Sends CONNECT and waits for the head of the proxy's answer."""

    def __init__(self, request: bytes, proxy: ProxyURL, answered: asyncio.Future[int]) -> None:
        self._request = request
        self._proxy = proxy
        self._answered = answered
        self._parser = HttpResponseParser(self)
        self._seen = 0
        self.reason = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._request)  # type: ignore[attr-defined]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if self._answered.done():
            return  # what follows the head is the proxy's error page, or not ours to read
        self._seen += len(data)
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            if not self._answered.done():
                self._answered.set_exception(
                    EgressProxyError(
                        f"the egress proxy at {self._proxy.address} answered CONNECT with "
                        "something that is not HTTP"
                    )
                )
            return
        if not self._answered.done() and self._seen > MAX_HEAD:
            self._answered.set_exception(
                EgressProxyError(
                    f"the egress proxy at {self._proxy.address} answered CONNECT with a head "
                    f"larger than {MAX_HEAD} bytes"
                )
            )

    def on_status(self, reason: bytes) -> None:
        text = reason.decode("latin-1")[:_REASON_CHARS]
        self.reason = "".join(c for c in text if c.isprintable())

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200 and not self._answered.done():
            self._answered.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answered.done():
            self._answered.set_exception(
                EgressProxyError(
                    f"the egress proxy at {self._proxy.address} closed the connection before "
                    "answering CONNECT"
                )
            )


async def connect_to_proxy(
    loop: asyncio.AbstractEventLoop, proxy: ProxyURL, factory: Callable[[], _P]
) -> tuple[asyncio.BaseTransport, _P]:
    """A connection to the proxy itself; EgressProxyError if it cannot be reached."""
    try:
        return await loop.create_connection(factory, proxy.host, proxy.port)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise EgressProxyError(
            f"could not connect to the egress proxy at {proxy.address}: {why}"
        ) from None


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, proxy: ProxyURL, host: str, port: int
) -> asyncio.Transport:
    """A transport to host:port through `proxy`, ready for TLS. The caller bounds the wait.

    Raises EgressProxyError when the proxy cannot be reached, wants credentials (407) or
    refuses (any other non-2xx answer)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not authority.isascii():
        authority = authority.encode("idna").decode("ascii")
    auth = f"Proxy-Authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode("ascii")
    answered: asyncio.Future[int] = loop.create_future()
    handshake = _Handshake(request, proxy, answered)
    transport, _ = await connect_to_proxy(loop, proxy, lambda: handshake)
    try:
        status = await answered
    except BaseException:
        transport.close()
        raise
    if 200 <= status < 300:
        return transport  # type: ignore[return-value]  # uvloop's is not a subclass
    transport.close()
    raise EgressProxyError.refused(
        proxy.address,
        authority,
        status,
        handshake.reason,
        with_credentials=proxy.authorization is not None,
    )
