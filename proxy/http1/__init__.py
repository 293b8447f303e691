"""A lean HTTP/1.1 client for the calls to vendors: keep-alive pools over asyncio protocols.

Why not aiohttp's ClientSession: a proxied request spends most of its CPU in the two HTTP
hops, and aiohttp's client cost about 100 us more CPU per call than a protocol that builds
the request as one bytes object and parses only what a proxy needs.

What it does: HTTP/1.1 over TCP or TLS, directly or through an HTTP egress proxy (CONNECT
tunnels for TLS); one keep-alive pool per vendor with a connection limit (callers queue
beyond it, for at most a pool wait); idle connections dropped after `keepalive_s` or when
the server closes them; answers framed by llhttp (Content-Length, chunked, read until
close; strict: anything ambiguous fails the answer and closes the connection); gzip and
deflate undone in bounded steps under a size cap; 1xx answers skipped; back-pressure (a
slow reader pauses the socket); one transparent retry when a *reused* connection turns
out to be closed before a single byte of the answer came back (the server dropped an idle
connection: the request never reached it). Every wait has a deadline.

What callers handle (`Pool.request`, `Response.read*`): TimeoutError (a deadline),
PoolTimeout (no free connection within the pool wait; the vendor was not contacted),
OSError: refused, reset, TLS, `RemoteDisconnected`, `EgressProxyError` (the egress
proxy refused, wants credentials or is unreachable); `ProtocolError`: not HTTP,
`BodyIncomplete` (cut short), `ResponseTooLarge` (past a cap); and `InvalidHeader`
(a ValueError) for a header that cannot be sent, raised before anything is sent. Every
one of these but OSError's own kinds has a message safe to log (`DescribedError`).
"""

from proxy.http1.egress import DIRECT, Egress, NoProxy, ProxyURL, parse_proxy_url
from proxy.http1.errors import (
    BodyIncomplete,
    DescribedError,
    EgressProxyError,
    InvalidHeader,
    PoolTimeout,
    ProtocolError,
    RemoteDisconnected,
    ResponseTooLarge,
)
from proxy.http1.pool import MAX_BODY, MAX_DECODED, POOL_WAIT_S, Pool, PoolState, default_limit
from proxy.http1.request import Headers, header_problem
from proxy.http1.response import Response
from proxy.http1.tls import tls_context

__all__ = [
    "DIRECT",
    "MAX_BODY",
    "MAX_DECODED",
    "POOL_WAIT_S",
    "BodyIncomplete",
    "DescribedError",
    "Egress",
    "EgressProxyError",
    "Headers",
    "InvalidHeader",
    "NoProxy",
    "Pool",
    "PoolState",
    "PoolTimeout",
    "ProtocolError",
    "ProxyURL",
    "RemoteDisconnected",
    "Response",
    "ResponseTooLarge",
    "default_limit",
    "header_problem",
    "parse_proxy_url",
    "tls_context",
]
