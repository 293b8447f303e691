"""A vendor written for the tests from the HTTP spec, independent of `proxy.fakes`: it answers
every request with exactly the bytes a test scripts, paced as the test says.

The fakes in `proxy/fakes` behave like vendors on a bad day; this one misbehaves in ways a
well-meaning fake never would (a head and then a byte a second, garbage where JSON belongs),
so the proxy is checked against the wire, not against our own idea of a vendor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["HostileVendor", "Script", "sse_head"]


@dataclass(frozen=True, slots=True)
class Script:
    """What to send: `head` at once, then each of `parts` after `gap_s`, then close (or
    keep the connection open with `linger_s`)."""

    head: bytes
    parts: Sequence[bytes] = ()
    gap_s: float = 0.0
    linger_s: float = 0.0


def sse_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class HostileVendor:
    """Answers every request with `script`; counts what it was asked."""

    script: Script
    requests: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.requests += 1
            script = self.script
            writer.write(script.head)
            await writer.drain()
            for part in script.parts:
                if script.gap_s:
                    await asyncio.sleep(script.gap_s)
                writer.write(part)
                await writer.drain()
            if script.linger_s:
                await asyncio.sleep(script.linger_s)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
