"""Raw HTTP/1.1 servers for the upstream client's tests: real sockets on 127.0.0.1 whose
answers are written byte for byte, so the client reads exactly what a hostile or broken
server sends, not what a friendly server library would produce."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from proxy.http1 import Pool

__all__ = ["Handler", "RawServer", "answering", "deadline", "fetch", "read_request"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server that hands each connection to `handler`; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.ended = 0  # connections whose handler has finished (the client hung up, or it did)
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()
                self.ended += 1

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self._port: int = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/x"

    async def all_ended(self, timeout: float = 5.0) -> None:
        """Wait until every connection's handler has finished (each was closed)."""
        for _ in range(int(timeout / 0.01)):
            if self.ended == self.connections:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.connections - self.ended} connection(s) still open")


async def read_request(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request with a Content-Length (or none)."""
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await r.readexactly(length)


def answering(*answers: bytes, trickle: bool = False, close: bool = False) -> Handler:
    """A handler answering successive requests on a connection with `answers`, in order.

    `trickle` writes each answer a byte at a time (every chunk edge is exercised)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(r)
            if trickle:
                for i in range(len(answer)):
                    w.write(answer[i : i + 1])
                    await w.drain()
            else:
                w.write(answer)
                await w.drain()
        if close:
            return
        await r.read()  # keep the connection open until the client closes it

    return handler


def deadline(pool: Pool, s: float = 5.0) -> float:
    """`s` seconds from now on the pool's loop clock."""
    return pool.loop.time() + s


async def fetch(pool: Pool, url: str) -> bytes:
    """POST to `url` through `pool`: the whole body, the connection given back."""
    resp = await pool.request("POST", url, {}, b"{}", deadline=deadline(pool))
    body = await resp.read(deadline=deadline(pool))
    resp.release()
    return body
