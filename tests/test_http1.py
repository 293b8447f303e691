"""The upstream HTTP/1.1 client (proxy.http1) against raw servers that send exact bytes.

Each server here is a real socket on 127.0.0.1 whose answer is written byte for byte, so
the framing cases (chunk edges, a body cut short, a connection the server already closed)
are what the client really reads, not what a friendly server library would produce.
Hostile answers (ambiguous framing, oversized heads and bodies, compression bombs) are
in test_http1_hostile.py.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from proxy.core.outcomes import OutcomeClass
from proxy.http1 import BodyIncomplete, InvalidHeader, Pool, ProtocolError, RemoteDisconnected
from proxy.vendors.classify import classify_transport
from tests.raw_http import RawServer, answering, deadline, read_request


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool(limit=4, read_s=5.0)
    yield p
    await p.close()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\nX-Ratelimit-Remaining-Requests: 9\r\n\r\n"
    b"6\r\ndata: \r\n"
    b'c;ext=1\r\n{"a": 1}\n\n\r\n\r\n'
    b"0\r\nx-trailer: t\r\n\r\n"
)
CHUNKED_BODY = b'data: {"a": 1}\n\n\r\n'


@pytest.mark.parametrize("trickle", [False, True])
async def test_chunked_body_decoded_at_any_edge(pool: Pool, trickle: bool) -> None:
    async with RawServer(answering(CHUNKED, CHUNKED, trickle=trickle)) as srv:
        for _ in range(2):  # the second request reuses the connection
            resp = await pool.request("POST", srv.url, {"a": "b"}, b"{}", deadline=deadline(pool))
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            assert resp.headers["x-ratelimit-remaining-requests"] == "9"  # lower-case names
            assert await resp.read(deadline=deadline(pool)) == CHUNKED_BODY
            assert resp.at_eof
            resp.release()
        assert srv.connections == 1
        assert pool.stats() == (0, 1)


async def test_content_length_and_request_bytes(pool: Pool) -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(await read_request(r))
        w.write(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello")
        await r.read()

    async with RawServer(handler) as srv:
        resp = await pool.request(
            "POST",
            srv.url + "?v=1",
            {"Authorization": "Bearer k"},
            b"body!",
            deadline=deadline(pool),
        )
        assert (resp.status, await resp.read(deadline=deadline(pool))) == (201, b"hello")
        resp.release()
    head, body = seen[0]
    assert head.startswith(b"POST /v1/x?v=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in head
    assert b"\r\nContent-Length: 5\r\n" in head
    assert body == b"body!"


async def test_get_sends_no_content_length(pool: Pool) -> None:
    seen: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append((await read_request(r))[0])
        w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await r.read()

    async with RawServer(handler) as srv:
        resp = await pool.request("GET", srv.url, {}, deadline=deadline(pool))
        assert resp.status == 204 and resp.at_eof
        resp.release()
    assert b"content-length" not in seen[0].lower()


async def test_interim_1xx_answers_are_skipped(pool: Pool) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with RawServer(answering(answer)) as srv:
        resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
        assert (resp.status, await resp.read(deadline=deadline(pool))) == (200, b"ok")
        assert "link" not in resp.headers
        resp.release()


async def test_read_until_close_and_connection_close(pool: Pool) -> None:
    async with (
        RawServer(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True)) as a,
        RawServer(
            answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        ) as b,
    ):
        resp = await pool.request("POST", a.url, {}, b"", deadline=deadline(pool))
        assert await resp.read(deadline=deadline(pool)) == b"until the end"
        resp.release()
        resp = await pool.request("POST", b.url, {}, b"", deadline=deadline(pool))
        assert await resp.read(deadline=deadline(pool)) == b"ok"
        resp.release()
        assert pool.stats() == (0, 0)  # neither connection may be reused


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send
    ],
)
async def test_compressed_answers_are_decoded(
    pool: Pool, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    payload = b'{"usage": {"prompt_tokens": 3}}' * 50
    data = compress(payload)
    answer = (
        f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    async with RawServer(answering(answer)) as srv:
        resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
        assert await resp.read(deadline=deadline(pool)) == payload
        resp.release()


@pytest.mark.parametrize(
    ("answer", "error", "outcome"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", ProtocolError, OutcomeClass.SERVER_ERROR),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", ProtocolError, OutcomeClass.SERVER_ERROR),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", ProtocolError, OutcomeClass.SERVER_ERROR),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
            ProtocolError,
            OutcomeClass.SERVER_ERROR,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Le", BodyIncomplete, OutcomeClass.SERVER_ERROR),
        (b"", RemoteDisconnected, OutcomeClass.UNREACHABLE),
    ],
)
async def test_bad_answers_raise_typed_errors_before_the_body(
    pool: Pool, answer: bytes, error: type[Exception], outcome: OutcomeClass
) -> None:
    async with RawServer(answering(answer, close=True)) as srv:
        with pytest.raises(error) as caught:
            await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
    assert classify_transport(caught.value, phase="first_byte").cls is outcome
    assert pool.stats() == (0, 0)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
    ],
)
async def test_a_body_cut_short_or_misframed_is_an_error_not_an_answer(
    pool: Pool, answer: bytes
) -> None:
    async with RawServer(answering(answer, close=True)) as srv:
        resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
        with pytest.raises(ProtocolError) as caught:
            await resp.read(deadline=deadline(pool))
        resp.close()
    assert classify_transport(caught.value, phase="body").cls is OutcomeClass.SERVER_ERROR


async def test_a_reused_connection_the_server_closed_is_retried_once(pool: Pool) -> None:
    """The server answers one request per connection and hangs up without saying so."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(answering(ok, close=True)) as srv:
        for _ in range(3):
            resp = await pool.request("POST", srv.url, {}, b"x", deadline=deadline(pool))
            assert await resp.read(deadline=deadline(pool)) == b"ok"
            resp.release()
            await asyncio.sleep(0)  # the hang-up may or may not be seen before the next send
        assert srv.connections == 3


async def test_a_fresh_connection_closed_before_answering_is_not_retried(pool: Pool) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)  # read it, then hang up: the request may have done something

    async with RawServer(handler) as srv:
        with pytest.raises(RemoteDisconnected):
            await pool.request("POST", srv.url, {}, b"x", deadline=deadline(pool))
        assert srv.connections == 1


async def test_deadlines_bound_the_head_and_each_read(pool: Pool) -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await r.read()

    async def headers_only(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        await r.read()

    async with RawServer(silent) as a, RawServer(headers_only) as b:
        t0 = pool.loop.time()
        with pytest.raises(TimeoutError):
            await pool.request("POST", a.url, {}, b"", deadline=deadline(pool, 0.2))
        assert pool.loop.time() - t0 < 3  # fired, did not hang
        resp = await pool.request("POST", b.url, {}, b"", deadline=deadline(pool))
        assert await resp.read_some(deadline(pool, 0.2)) == b"ab"
        with pytest.raises(TimeoutError):
            await resp.read_some(deadline(pool, 0.2))
        resp.close()
    assert pool.stats() == (0, 0)


async def test_the_limit_queues_callers_until_a_connection_is_free() -> None:
    pool = Pool(limit=1, read_s=5.0)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    try:
        async with RawServer(answering(ok, ok, ok)) as srv:
            first = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            second = asyncio.ensure_future(
                pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            )
            await asyncio.sleep(0.05)
            assert not second.done()  # waits for the only connection
            with pytest.raises(TimeoutError):  # a third gives up at its deadline
                await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool, 0.1))
            assert await first.read(deadline=deadline(pool)) == b"ok"
            first.release()
            resp = await asyncio.wait_for(second, 5)
            assert await resp.read(deadline=deadline(pool)) == b"ok"
            resp.release()
            assert srv.connections == 1
    finally:
        await pool.close()


async def test_cancelling_a_request_closes_its_connection(pool: Pool) -> None:
    closed = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await r.read()  # returns when the client hangs up
        closed.set()

    async with RawServer(handler) as srv:
        task = asyncio.ensure_future(
            pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 5)
    assert pool.stats() == (0, 0)


async def test_a_slow_reader_pauses_the_socket_and_gets_every_byte(pool: Pool) -> None:
    size = 4 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        w.write(payload)
        await w.drain()
        await r.read()

    async with RawServer(handler) as srv:
        resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
        await asyncio.sleep(0.2)  # nobody reads: the client must stop reading the socket
        assert resp._buffered < 2 * 1024 * 1024  # paused near 256 KiB, not the whole 4 MiB
        assert await resp.read(deadline=deadline(pool)) == payload
        resp.release()


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"x": "a\r\nEvil: 1"}, "control character"),
        ({"x": "nul\x00"}, "control character"),
        ({"x": "caf\u00e9 \u2603"}, "outside Latin-1"),
        ({"bad name": "v"}, "not an HTTP token"),
        ({"x:y": "v"}, "not an HTTP token"),
    ],
)
async def test_a_header_that_cannot_be_sent_is_refused_before_anything_is_sent(
    headers: dict[str, str], problem: str
) -> None:
    """InvalidHeader names the header and never quotes its value (it may be a key)."""
    connected = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal connected
        connected += 1

    async with RawServer(handler) as srv:
        pool = Pool(read_s=5.0)
        try:
            with pytest.raises(InvalidHeader, match=problem) as caught:
                await pool.request("POST", srv.url, headers, b"", deadline=deadline(pool))
        finally:
            await pool.close()
    ((name, value),) = headers.items()
    assert caught.value.header == name
    assert value not in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert connected == 0


async def test_idle_connections_expire(pool: Pool) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    pool.keepalive_s = 0.05
    async with RawServer(answering(ok, ok)) as srv:
        for _ in range(2):
            resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            await resp.read(deadline=deadline(pool))
            resp.release()
            await asyncio.sleep(0.15)
        assert srv.connections == 2


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_with_certificate_verification(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server = await asyncio.start_server(
        lambda r, w: answering(ok)(r, w), "127.0.0.1", 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    trusted = ssl.create_default_context(cafile=str(cert))
    good, untrusted = Pool(ssl_context=trusted), Pool()
    try:
        resp = await good.request(
            "POST", f"https://localhost:{port}/v1/x", {}, b"", deadline=deadline(good)
        )
        assert await resp.read(deadline=deadline(good)) == b"ok"
        resp.release()
        with pytest.raises(ssl.SSLError) as caught:  # the system store does not trust it
            await untrusted.request(
                "POST", f"https://localhost:{port}/v1/x", {}, b"", deadline=deadline(untrusted)
            )
        assert classify_transport(caught.value, phase="connect").cls is OutcomeClass.UNREACHABLE
    finally:
        await good.close()
        await untrusted.close()
        server.close()


async def test_the_caller_resumes_inside_the_callback_that_brought_the_head(pool: Pool) -> None:
    """No wait for the loop's next turn (behind every other callback of this one) between
    an answer's head arriving and the request's task going on with it."""
    import inspect

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(answering(ok)) as srv:
        resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool), prompt=True)
        callers = [frame.function for frame in inspect.stack()]
        assert "data_received" in callers, callers
        # The body that came with the head is already in hand: no wait for it (a deadline
        # already past would raise TimeoutError if the read had to wait).
        assert await resp.read_some(pool.loop.time() - 1) == b"ok"
        resp.release()


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize(
    ("frames", "delivered", "error"),
    [
        # One whole chunk per read (a vendor writing an event at a time), hex of any case.
        (
            [b"6\r\nevent1\r\n", b"A\r\nevent2....\r\n", b"a\r\nevent3....\r\n", b"0\r\n\r\n"],
            b"event1event2....event3....",
            None,
        ),
        # Chunk extensions, two chunks in one read, then the end.
        (
            [b"6;x=1\r\nevent1\r\n", b"6\r\nevent2\r\n6\r\nevent3\r\n0\r\n\r\n"],
            b"event1event2event3",
            None,
        ),
        # A chunk longer than its size line says: misframed, an error, not an answer (the
        # bytes the size announced are handed on before the misframing shows).
        ([b"6\r\nevent1\r\n", b"3\r\nevent2\r\n"], b"event1eve", ProtocolError),
        # Whitespace after a chunk size is not HTTP (strict framing).
        ([b"6\r\nevent1\r\n", b"6 \r\nevent2\r\n"], b"event1", ProtocolError),
        # Not a size at all.
        ([b"6\r\nevent1\r\n", b"zz\r\nevent2\r\n"], b"event1", ProtocolError),
    ],
)
async def test_a_body_delivered_by_callback_is_what_read_would_return(
    pool: Pool, frames: list[bytes], delivered: bytes, error: type[Exception] | None
) -> None:
    """Callback delivery (a relayed stream) hands on exactly the bytes, and raises exactly
    the errors, that reading would."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(SSE_HEAD)
        for frame in frames:
            await asyncio.sleep(0.02)  # one read per frame on the client's side
            w.write(frame)
            await w.drain()
        await r.read()

    async with RawServer(handler) as srv:
        resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
        got: list[bytes] = []
        ended: asyncio.Future[BaseException | None] = pool.loop.create_future()
        resp.deliver_to(got.append, ended.set_result)
        end = await asyncio.wait_for(ended, 5)
        resp.close()
    assert b"".join(got) == delivered
    assert (type(end) if end is not None else None) is error
