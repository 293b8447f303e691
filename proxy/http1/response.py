"""An answer as the caller sees it: status, headers, and a body read as it arrives."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from proxy.http1.errors import ResponseTooLarge
from proxy.http1.futures import expire

if TYPE_CHECKING:
    from proxy.http1.connection import Connection

__all__ = ["PAUSE_AT", "RESUME_AT", "Response"]

PAUSE_AT: Final = 256 * 1024  # buffered body bytes that pause the socket
RESUME_AT: Final = 64 * 1024


class Response:
    """An answer's status, headers and body.

    `headers` has lower-case names (repeated headers joined with ", "). Read the body with
    `read_some` (as it arrives), `read` (whole, within the pool's `max_body`) or
    `deliver_to` (callbacks), then `release()` (reuse the connection) or `close()`
    (abort; for an answer not read to its end).
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
        "_taken",
        "_waiter",
        "content_type",
        "headers",
        "status",
    )

    def __init__(self, conn: Connection, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        ctype = headers.get("content-type")
        self.content_type = (
            ctype.partition(";")[0].strip().lower() if ctype else "application/octet-stream"
        )
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._taken = 0  # body bytes handed to the reader so far
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
        self._wake()
        if self._on_end is not None:
            self._on_end(None)

    def _break(self, exc: BaseException) -> None:
        self._error = exc
        self._eof = True
        self._wake()
        if self._on_end is not None:
            self._on_end(exc)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

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
        if self._eof:
            on_end(self._error)
            return
        self._on_data = on_data
        self._on_end = on_end
        self._conn.drained()  # may inflate more, or end the body (calling on_end)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this answer's connection runs on."""
        return self._conn.pool.loop

    def stop_delivery(self) -> None:
        self._on_data = self._on_end = None

    def pause(self) -> None:
        """Stop reading the socket (the consumer is not keeping up)."""
        if not self._eof:
            self._conn.hold()

    def resume(self) -> None:
        if not self._eof:
            self._conn.unhold()

    # -- the reader's side ----------------------------------------------------------------

    @property
    def at_eof(self) -> bool:
        """True when the whole body has been read."""
        return self._eof and not self._chunks

    async def read_some(self, deadline: float | None = None) -> bytes:
        """The next bytes of the body as they arrived (b"" at its end).

        Waits at most until `deadline` (loop time), else the pool's `read_s` from now;
        raises TimeoutError past it, ProtocolError (BodyIncomplete, ResponseTooLarge...)
        if the body broke off.
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
        self._taken += len(data)
        if self._buffered < RESUME_AT:
            self._conn.drained()
        return data

    def _drain(self) -> list[bytes]:
        chunks = list(self._chunks)
        self._chunks.clear()
        return chunks

    async def read(self, limit: int | None = None, deadline: float | None = None) -> bytes:
        """The rest of the body.

        With `limit`, at most that many bytes (the rest is left unread). Without, the
        whole body, which may not pass the pool's `max_body` (counting what `read_some`
        already took): past it this raises ResponseTooLarge and closes the connection,
        holding at most about `max_body` bytes meanwhile.
        """
        cap = self._conn.pool.max_body
        parts: list[bytes] = []
        size = 0
        while limit is None or size < limit:
            data = await self.read_some(deadline)
            if not data:
                break
            parts.append(data)
            size += len(data)
            if limit is None and self._taken > cap:
                self.close()
                raise ResponseTooLarge(
                    f"the answer's body is larger than {cap} bytes (the vendor's max_response_bytes)"
                )
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return body if limit is None else body[:limit]

    async def _wait(self, deadline: float | None) -> None:
        pool = self._conn.pool
        loop = pool.loop
        waiter = loop.create_future()
        self._waiter = waiter
        when = loop.time() + pool.read_s if deadline is None else deadline
        timer = loop.call_at(when, expire, waiter)
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
            conn.pool.put(conn)
        else:
            conn.pool.discard(conn)

    def close(self) -> None:
        """Abort: the server sees the disconnect (and stops generating)."""
        if self._released:
            return
        self._released = True
        self._conn.pool.discard(self._conn)
