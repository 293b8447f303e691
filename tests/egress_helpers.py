"""An HTTP egress proxy and a TLS front for the egress tests, both small real servers.

`EgressProxy` is what a corporate proxy does for us: CONNECT tunnels (for https://
vendors) and absolute-form forwarding (for http:// ones), optionally demanding Basic
credentials (407) or refusing every tunnel. It records what it served. `TLSFront`
terminates TLS with a test CA's certificate in front of a plain-HTTP fake vendor.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from urllib.parse import urlsplit

__all__ = ["EgressProxy", "TLSFront"]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _splice(
    r: asyncio.StreamReader, w: asyncio.StreamWriter, host: str, port: int, first: bytes = b""
) -> None:
    """Connect to host:port, send `first`, then copy both ways until either side closes."""
    up_r, up_w = await asyncio.open_connection(host, port)
    up_w.write(first)
    await asyncio.gather(_pipe(r, up_w), _pipe(up_r, w))


class _Server:
    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    def _started(self, server: asyncio.Server) -> None:
        self.server = server
        self.port = server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 2)


class EgressProxy(_Server):
    """CONNECT and absolute-form forwarding. `credentials` ("user:password") makes it
    answer 407 to requests without them; `refuse` ((status, reason)) refuses everything."""

    def __init__(
        self, *, credentials: str | None = None, refuse: tuple[int, str] | None = None
    ) -> None:
        super().__init__()
        self.credentials = credentials
        self.refuse = refuse
        self.tunnels: list[str] = []  # CONNECT targets it opened
        self.forwarded: list[bytes] = []  # request lines of the plain requests it forwarded
        self.refused = 0

    async def __aenter__(self) -> EgressProxy:
        self._started(await asyncio.start_server(self._serve, "127.0.0.1", 0))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _authorized(self, lines: list[bytes]) -> bool:
        if self.credentials is None:
            return True
        expected = b"Basic " + base64.b64encode(self.credentials.encode())
        for line in lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"proxy-authorization" and value.strip() == expected:
                return True
        return False

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            line, *headers = head[:-4].split(b"\r\n")
            method, target, _ = line.split(b" ", 2)
            if not self._authorized(headers):
                self.refused += 1
                w.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n'
                )
                await w.drain()
                return
            if self.refuse is not None:
                self.refused += 1
                status, reason = self.refuse
                w.write(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n" % (status, reason.encode()))
                await w.drain()
                return
            if method == b"CONNECT":
                host, _, port = target.decode().rpartition(":")
                self.tunnels.append(target.decode())
                w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await _splice(r, w, host.strip("[]"), int(port))
            else:
                url = urlsplit(target.decode())
                self.forwarded.append(line)
                await _splice(r, w, url.hostname or "", url.port or 80, head)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            w.close()


class TLSFront(_Server):
    """TLS on 127.0.0.1 (with `context`'s certificate), forwarding to a plain port."""

    def __init__(self, context: ssl.SSLContext, target_port: int) -> None:
        super().__init__()
        self.context = context
        self.target_port = target_port
        self.connections = 0

    async def __aenter__(self) -> TLSFront:
        self._started(await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context))
        return self

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await _splice(r, w, "127.0.0.1", self.target_port)
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            w.close()
