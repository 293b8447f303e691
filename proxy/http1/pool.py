"""Keep-alive connections to one vendor, at most `limit` open at once.

Every operation on the pool's books is O(1) however many connections it holds (a vendor
may hold thousands of concurrent streams): idle connections are kept per target in
insertion-ordered dicts (the newest is reused first, any can be dropped when the server
closes it), counts are kept as numbers, and a caller that gives up waiting leaves its
place in the queue to be skipped rather than searched for.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

from proxy.http1.connection import Connection
from proxy.http1.egress import DIRECT, Egress
from proxy.http1.errors import PoolTimeout, RemoteDisconnected
from proxy.http1.futures import PromptFuture, expire
from proxy.http1.request import PoolKey, Target, encode_headers, parse_target
from proxy.http1.response import Response
from proxy.http1.tunnel import connect_to_proxy, open_tunnel

__all__ = ["MAX_BODY", "MAX_DECODED", "POOL_WAIT_S", "Pool", "PoolState", "default_limit"]

log = logging.getLogger("llmproxy.http1")

MAX_BODY: Final = 64 * 1024 * 1024
MAX_DECODED: Final = 256 * 1024 * 1024
POOL_WAIT_S: Final = 5.0
_MIN_LIMIT: Final = 256


def default_limit() -> int:
    """The connection limit when none is configured: half the process's open-file limit
    (each proxied request holds a client socket and a vendor one), at least 256.

    The open-file limit is read when the pool is made, so a server that raises its soft
    limit at start-up gets pools sized for it."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return 4096
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(_MIN_LIMIT, soft // 2)


class PoolState(NamedTuple):
    """A pool's occupancy now: connections in use (or connecting), idle, callers waiting
    for one, and the limit on in use + idle."""

    in_use: int
    idle: int
    waiting: int
    limit: int


class Pool:
    """Keep-alive connections to one vendor's hosts, at most `limit` open at once.

    `limit` None: `default_limit()`. `read_s` bounds every wait for bytes that has no
    deadline of its own (the socket read timeout); `keepalive_s` how long an idle
    connection is kept; `pool_wait_s` how long a request waits for a free connection
    when all `limit` are in use (then PoolTimeout). `egress` says which connections go
    through a proxy. `max_body` caps a body read whole (`Response.read()`), `max_decoded`
    what a compressed body may inflate to. `on_wait` is told each request's wait for a
    connection in seconds (0.0 when one was free), for metrics. `name` (the vendor's)
    goes into log lines.
    """

    def __init__(
        self,
        *,
        limit: int | None = None,
        read_s: float = 300.0,
        keepalive_s: float = 15.0,
        pool_wait_s: float = POOL_WAIT_S,
        ssl_context: ssl.SSLContext | None = None,
        egress: Egress = DIRECT,
        max_body: int = MAX_BODY,
        max_decoded: int = MAX_DECODED,
        on_wait: Callable[[float], None] | None = None,
        name: str = "",
    ) -> None:
        self.limit = default_limit() if limit is None else limit
        self.read_s = read_s
        self.keepalive_s = keepalive_s
        self.pool_wait_s = pool_wait_s
        self.egress = egress
        self.max_body = max_body
        self.max_decoded = max_decoded
        self.on_wait = on_wait
        self.name = name
        self._ssl = ssl_context
        self._idle: dict[PoolKey, dict[Connection, None]] = {}
        self._idle_count = 0
        self._busy: set[Connection] = set()
        self._connecting = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._waiting = 0
        self._targets: dict[str, Target] = {}
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
        pool_wait_s: float | None = None,
        prompt: bool = False,
        on_sent: Callable[[], object] | None = None,
    ) -> Response:
        """Send one request; returns once the answer's head has arrived (before `deadline`,
        loop time). Waiting for a free connection is bounded by `pool_wait_s` (default:
        the pool's) and connecting by `connect_s` as well.

        `prompt`: resume the caller inside the callback that brought the head (see
        `PromptFuture`), for answers whose first byte is latency-critical (streams).
        `on_sent`: called once the request is written, so a caller can tell a failure to
        connect from a vendor that took the request and did not answer.

        Raises InvalidHeader before anything is sent, PoolTimeout, TimeoutError, OSError
        (EgressProxyError, RemoteDisconnected, TLS errors...) and ProtocolError."""
        if method == "HEAD":
            raise ValueError("HEAD requests are not supported (their answers have no body)")
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = parse_target(url, self.egress)
        length = b"Content-Length: %d\r\n" % len(body) if body or method == "POST" else b""
        data = b"%s%s%s%s\r\n%s" % (
            method.encode("ascii"),
            target.line,
            encode_headers(headers),
            length,
            body,
        )
        loop = self.loop
        for retry in (False, True):
            conn = await self._acquire(target.key, deadline, connect_s, pool_wait_s)
            waiter: asyncio.Future[Response] = (
                PromptFuture(loop=loop) if prompt else loop.create_future()
            )
            timer = loop.call_at(deadline, expire, waiter)
            try:
                conn.send(data, waiter)
                if on_sent is not None:
                    on_sent()
                return await waiter
            except RemoteDisconnected:
                self.discard(conn)
                if conn.reused and not retry:
                    continue  # an idle connection the server had already closed
                raise
            except BaseException:
                self.discard(conn)
                raise
            finally:
                timer.cancel()
        raise AssertionError("unreachable")  # pragma: no cover

    def state(self) -> PoolState:
        """Occupancy now, for the saturation gauges."""
        return PoolState(
            len(self._busy) + self._connecting, self._idle_count, self._waiting, self.limit
        )

    def stats(self) -> tuple[int, int]:
        """(connections in use, idle connections)."""
        return len(self._busy), self._idle_count

    async def close(self) -> None:
        """Close every connection; requests still running see their connection lost."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn._abort()
            conns.clear()
        self._idle_count = 0
        for conn in list(self._busy):
            conn._abort()
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("the vendor's pool was closed"))
        await asyncio.sleep(0)  # let the transports' connection_lost run

    # -- used by Response and Connection ---------------------------------------------------

    def put(self, conn: Connection) -> None:
        """A connection whose answer was read to its end: keep it for the next request."""
        self._busy.discard(conn)
        if self._closed or conn.closed:
            conn._abort()
        else:
            conn.idle_since = self.loop.time()
            conn.response = None
            conn._head_waiter = None
            idle = self._idle.get(conn.key)
            if idle is None:
                idle = self._idle[conn.key] = {}
            idle[conn] = None
            self._idle_count += 1
        if self._queue:
            self._wake_one()

    def discard(self, conn: Connection) -> None:
        """A connection that may not be reused: close it, and give its place to a waiter."""
        if conn in self._busy:
            self._busy.discard(conn)
            if self._queue:
                self._wake_one()
        conn._abort()

    def lost(self, conn: Connection) -> None:
        """A connection closed (by either side)."""
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            del idle[conn]
            self._idle_count -= 1
            if self._queue:
                self._wake_one()

    # -- connections ------------------------------------------------------------------------

    async def _acquire(
        self, key: PoolKey, deadline: float, connect_s: float, pool_wait_s: float | None
    ) -> Connection:
        if self._closed:
            raise ConnectionResetError("the vendor's pool is closed")
        conn = self._reuse(key)
        if conn is None and self._full():
            conn = await self._wait_for_room(key, deadline, pool_wait_s)
        elif self.on_wait is not None:
            self.on_wait(0.0)
        if conn is not None:
            return conn
        self._connecting += 1
        try:
            conn = await self._connect(key, min(deadline, self.loop.time() + connect_s))
        except BaseException:
            if self._queue:
                self._wake_one()  # the place this connection held is free again
            raise
        finally:
            self._connecting -= 1
        self._busy.add(conn)
        return conn

    def _full(self) -> bool:
        return len(self._busy) + self._connecting + self._idle_count >= self.limit

    def _reuse(self, key: PoolKey) -> Connection | None:
        """The newest idle connection to `key` that is still good, checked out."""
        idle = self._idle.get(key)
        if not idle:
            return None
        stale_before = self.loop.time() - self.keepalive_s
        while idle:
            conn = idle.popitem()[0]
            self._idle_count -= 1
            if conn.closed or conn.idle_since < stale_before:
                conn._abort()  # and every older one after it, as the loop goes on
                continue
            conn.reused = True
            self._busy.add(conn)
            return conn
        return None

    async def _wait_for_room(
        self, key: PoolKey, deadline: float, pool_wait_s: float | None
    ) -> Connection | None:
        """At the limit: an idle connection to `key` when one comes back, else None once
        there is room for a new one. Raises PoolTimeout when neither came in time."""
        loop = self.loop
        started = loop.time()
        wait_s = self.pool_wait_s if pool_wait_s is None else pool_wait_s
        until = min(deadline, started + wait_s)
        conn: Connection | None = None
        try:
            while self._full() and not self._evict_idle():
                await self._queued(until)
                conn = self._reuse(key)
                if conn is not None:
                    break
        except TimeoutError:
            waited = loop.time() - started
            if self.on_wait is not None:
                self.on_wait(waited)
            raise PoolTimeout(
                f"no connection was free after {waited:.3g} s: all {self.limit} that the "
                "vendor's max_connections allows were in use"
            ) from None
        if self.on_wait is not None:
            self.on_wait(loop.time() - started)
        return conn

    def _evict_idle(self) -> bool:
        """At the limit: close an idle connection (to another target) to make room."""
        for conns in self._idle.values():
            if conns:
                conn = conns.popitem()[0]
                self._idle_count -= 1
                conn._abort()
                return True
        return False

    async def _queued(self, until: float) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._queue.append(waiter)
        self._waiting += 1
        timer = self.loop.call_at(until, expire, waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_one()  # we were woken but leave: pass the turn on
            raise
        finally:
            timer.cancel()
            self._waiting -= 1
            # Waiters that gave up stay queued (skipped when their turn comes); drop them
            # in one pass once they outnumber the live ones.
            if len(self._queue) > 2 * self._waiting + 64:
                self._queue = deque(w for w in self._queue if not w.done())

    def _wake_one(self) -> None:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, key: PoolKey, deadline: float) -> Connection:
        host, port, tls, proxy = key
        context: ssl.SSLContext | None = None
        if tls:
            context = self._ssl
            if context is None:
                context = self._ssl = ssl.create_default_context()
        conn = Connection(self, key)
        loop = self.loop
        async with asyncio.timeout_at(deadline):
            if proxy is None:
                await loop.create_connection(
                    lambda: conn, host, port, ssl=context, server_hostname=host if tls else None
                )
            elif context is None:  # plain HTTP: absolute-form requests to the proxy itself
                await connect_to_proxy(loop, proxy, lambda: conn)
            else:
                raw = await open_tunnel(loop, proxy, host, port)
                try:
                    transport = await loop.start_tls(raw, conn, context, server_hostname=host)
                except BaseException:
                    raw.close()
                    raise
                assert transport is not None
                conn.connection_made(transport)
                log.debug(
                    "opened a tunnel to %s:%d through the egress proxy at %s",
                    host,
                    port,
                    proxy.address,
                    extra={"event": "egress_tunnel", "vendor": self.name, "proxy": proxy.address},
                )
        return conn
