"""The upstream client against hostile vendors: ambiguous framing, oversized heads and
bodies, compression bombs.

Each answer must fail its attempt cleanly (a typed error the transport classifier turns
into a vendor server_error), the connection must be closed and never reused, and memory
must stay bounded (tracemalloc peaks, with wide margins: the point is "a cap's worth,
not the whole answer").
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import orjson
import pytest

from proxy.core.outcomes import OutcomeClass
from proxy.http1 import MAX_BODY, MAX_DECODED, Pool, ProtocolError, ResponseTooLarge
from proxy.http1.connection import MAX_HEAD, Connection
from proxy.http1.response import Response
from proxy.vendors.classify import classify_transport
from tests.conftest import FakeFactory, ProxyFactory, two_deployments
from tests.raw_http import RawServer, answering, deadline, read_request

MiB = 1024 * 1024
T = TypeVar("T")
Consume = Callable[[Response], Awaitable[T]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool(limit=4, read_s=5.0)
    yield p
    await p.close()


async def fails_and_is_not_reused(
    pool: Pool, srv: RawServer, phase: str = "first_byte"
) -> ProtocolError:
    """One request to `srv`: its head or its body fails with a ProtocolError (returned);
    the connection is closed, and a second request opens a new one."""
    error: ProtocolError | None = None
    try:
        resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
    except ProtocolError as exc:
        error = exc
    else:
        try:
            await resp.read(deadline=deadline(pool))
        except ProtocolError as exc:
            error = exc
        finally:
            resp.close()
    assert error is not None, "the answer was accepted"
    assert classify_transport(error, phase=phase).cls is OutcomeClass.SERVER_ERROR
    assert pool.stats() == (0, 0)
    await srv.all_ended()  # the server saw the connection close
    return error


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        # Request smuggling's favourite: both framings at once.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            "Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            "Content-Length",
        ),
        # What Python's int() reads as 240.
        (b"HTTP/1.1 200 OK\r\nContent-Length: +2_40\r\n\r\nxx", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", "Content"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok", "overflow"),
        # Framings this client does not speak, and a version it does not either.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", "transfer-encoding"),
        (b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.x"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "switched protocols"),
        # Header lines that are not HTTP.
        (b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "whitespace"),
        (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", "header"),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "CR"),
    ],
)
async def test_ambiguous_or_malformed_heads_fail_before_the_body(
    pool: Pool, answer: bytes, says: str
) -> None:
    async with RawServer(answering(answer)) as srv:
        error = await fails_and_is_not_reused(pool, srv)
    assert says in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b"0xf0\r\n" + b"x" * 240 + b"\r\n0\r\n\r\n",  # what int(..., 16) reads as 240
        b"+f0\r\n" + b"x" * 240 + b"\r\n0\r\n\r\n",
        b"f0 \r\n" + b"x" * 240 + b"\r\n0\r\n\r\n",  # trailing whitespace
        b"ffffffffffffffffffff\r\nxx\r\n",  # overflows 64 bits
        b"2\r\nxxx\r\n0\r\n\r\n",  # longer than its size says
        b"2\r\nxx\r\n",  # cut short: the connection closes (below) before the last chunk
    ],
)
async def test_malformed_chunk_sizes_fail_the_body(pool: Pool, body: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with RawServer(answering(head + body, close=True)) as srv:
        await fails_and_is_not_reused(pool, srv, phase="body")


async def test_an_oversized_head_fails_however_it_arrives(pool: Pool) -> None:
    """Whether the blank line ends a read or comes long after, a head over 64 KiB fails."""
    bulk = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 100) for i in range(1200))
    assert len(bulk) > MAX_HEAD
    whole = b"HTTP/1.1 200 OK\r\n" + bulk + b"Content-Length: 2\r\n\r\nok"
    endless = b"HTTP/1.1 200 OK\r\n" + bulk * 4  # never ends its head
    for answer in (whole, endless):
        async with RawServer(answering(answer)) as srv:
            error = await fails_and_is_not_reused(pool, srv)
        assert "head is larger" in str(error)


class _Transport(asyncio.Transport):
    """A transport that records what the connection does with it (no socket: the test
    decides exactly which bytes arrive in one read)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.parametrize("interim", [b"", b"HTTP/1.1 100 Continue\r\n\r\n"])
async def test_an_oversized_head_whose_blank_line_arrives_in_the_same_read_fails(
    pool: Pool, interim: bytes
) -> None:
    bulk = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 100) for i in range(700))
    assert len(bulk) > MAX_HEAD
    conn = Connection(pool, ("vendor", 80, False, None))
    transport = _Transport()
    conn.connection_made(transport)
    waiter: asyncio.Future[Response] = pool.loop.create_future()
    conn.send(b"GET / HTTP/1.1\r\n\r\n", waiter)
    conn.data_received(interim + b"HTTP/1.1 200 OK\r\n" + bulk + b"Content-Length: 2\r\n\r\nok")
    assert waiter.done()
    with pytest.raises(ProtocolError, match="head is larger"):
        waiter.result()
    assert transport.closed and not conn.keep_alive


async def test_a_head_just_under_the_limit_in_one_read_is_fine(pool: Pool) -> None:
    bulk = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 100) for i in range(500))
    assert len(bulk) < MAX_HEAD
    conn = Connection(pool, ("vendor", 80, False, None))
    transport = _Transport()
    conn.connection_made(transport)
    waiter: asyncio.Future[Response] = pool.loop.create_future()
    conn.send(b"GET / HTTP/1.1\r\n\r\n", waiter)
    conn.data_received(
        b"HTTP/1.1 200 OK\r\n" + bulk + b"Content-Length: 2\r\n\r\nok" + b"z" * 80_000
    )
    resp = waiter.result()
    assert resp.headers["x-filler-00499"] == "v" * 100
    assert await resp.read(deadline=deadline(pool)) == b"ok"
    assert not conn.keep_alive  # the bytes after the answer put the connection out of step


async def test_endless_interim_answers_are_bounded(pool: Pool) -> None:
    async with RawServer(answering(b"HTTP/1.1 100 Continue\r\n\r\n" * 10_000)) as srv:
        error = await fails_and_is_not_reused(pool, srv)
    assert "head is larger" in str(error)


async def test_bytes_after_a_whole_answer_keep_the_answer_but_not_the_connection(
    pool: Pool,
) -> None:
    for extra in (b"garbage", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"):
        async with RawServer(answering(OK + extra)) as srv:
            resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            assert await resp.read(deadline=deadline(pool)) == b"ok"
            resp.release()
            assert pool.stats() == (0, 0)
            await srv.all_ended()


def sender(size: int, piece: bytes) -> RawServer:
    """A server answering with a `size`-byte body written `piece` by `piece` (so the
    server itself never holds more than one piece)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        left = size
        while left:
            part = piece[:left]
            w.write(part)
            await w.drain()
            left -= len(part)
        await r.read()

    return RawServer(handler)


async def through(pool: Pool, srv: RawServer, consume: Consume[T]) -> tuple[T, int]:
    """One request to `srv` through `pool`, its answer handed to `consume`: what that
    returned, and the traced memory's peak meanwhile. The answer is then closed, and the
    connection must be gone: not pooled, and closed as far as the server can tell."""
    tracemalloc.start()
    try:
        async with srv:
            resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            try:
                result = await consume(resp)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                resp.close()
            assert pool.stats() == (0, 0)
            await srv.all_ended()
    finally:
        tracemalloc.stop()
        await pool.close()
    return result, peak


async def read_whole(resp: Response) -> ResponseTooLarge:
    """`read()` the answer, which must fail for its size."""
    with pytest.raises(ResponseTooLarge) as caught:
        await resp.read(deadline=deadline(resp._conn.pool, 10))
    return caught.value


async def read_pieces(resp: Response) -> int:
    """`read_some` to the end (after a pause with nobody reading): the total."""
    await asyncio.sleep(0.3)
    assert resp._buffered < 2 * MiB  # the read-ahead, not the whole answer
    total = 0
    for _ in range(100_000):
        data = await resp.read_some(deadline(resp._conn.pool))
        if not data:
            return total
        total += len(data)
    raise AssertionError("the body did not end")


async def test_a_50_mb_body_fails_at_the_cap_with_memory_bounded() -> None:
    pool = Pool(read_s=10.0, max_body=MiB)
    error, peak = await through(pool, sender(50 * MiB, b"x" * MiB), read_whole)
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB for a 1 MiB cap"
    outcome = classify_transport(error, phase="body")
    assert outcome.cls is OutcomeClass.SERVER_ERROR
    assert outcome.message.startswith("response over a size cap while reading the body")
    assert f"larger than {MiB} bytes (the vendor's max_response_bytes)" in outcome.message


async def test_read_some_is_not_capped_in_total_only_buffered() -> None:
    """`read()` takes a body up to `max_body` whole; `read_some` (a stream read piece by
    piece) is bounded by back-pressure instead, not in total."""
    pool = Pool(read_s=10.0, max_body=MiB)
    total, peak = await through(pool, sender(8 * MiB, b"y" * MiB), read_pieces)
    assert total == 8 * MiB
    assert peak < 8 * MiB


def test_the_default_caps_are_far_above_a_real_completion() -> None:
    assert 64 * MiB <= MAX_BODY and 64 * MiB <= MAX_DECODED


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """100 KiB of gzip that inflates to 100 MiB."""
    data = gzip.compress(b"\0" * (100 * MiB), compresslevel=9)
    assert len(data) < 200 * 1024
    return data


def bomb_server(bomb: bytes, chunked: bool = False) -> RawServer:
    if chunked:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(bomb), bomb)
        framing = b"Transfer-Encoding: chunked"
    else:
        body = bomb
        framing = b"Content-Length: %d" % len(bomb)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n%s\r\n\r\n" % framing
    return RawServer(answering(head + body))


async def test_a_gzip_bomb_read_whole_fails_at_the_decompressed_cap(bomb: bytes) -> None:
    pool = Pool(read_s=10.0, max_decoded=8 * MiB)
    error, peak = await through(pool, bomb_server(bomb), read_whole)
    assert "max_decompressed_bytes" in str(error)
    assert peak < 32 * MiB, f"peak {peak / MiB:.1f} MiB for an 8 MiB cap"
    assert classify_transport(error, phase="body").cls is OutcomeClass.SERVER_ERROR


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_gzip_bomb_relayed_by_callback_fails_at_the_cap_one_step_at_a_time(
    bomb: bytes, chunked: bool
) -> None:
    """A relay hands pieces on as they inflate: none is large, and the total is capped."""
    sizes: list[int] = []

    async def relay(resp: Response) -> BaseException | None:
        ended: asyncio.Future[BaseException | None] = resp.loop.create_future()
        resp.deliver_to(lambda data: sizes.append(len(data)), ended.set_result)
        return await asyncio.wait_for(ended, 10)

    pool = Pool(read_s=10.0, max_decoded=16 * MiB)
    error, peak = await through(pool, bomb_server(bomb, chunked), relay)
    assert isinstance(error, ResponseTooLarge)
    assert 15 * MiB < sum(sizes) <= 16 * MiB  # what passed the cap was not handed on
    assert max(sizes) <= 64 * 1024
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_a_slow_reader_of_a_compressed_body_pauses_the_inflating_too(bomb: bytes) -> None:
    """Nobody reads: the answer inflates only up to the read-ahead, not to its cap."""
    pool = Pool(read_s=10.0)  # default caps: 256 MiB decompressed
    total, peak = await through(pool, bomb_server(bomb), read_pieces)
    assert total == 100 * MiB  # under the default cap it is an answer like any
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


@pytest.mark.parametrize(
    "body",
    [
        gzip.compress(b"hello world" * 100)[:-8],  # cut before its trailer
        b"not gzip at all",
    ],
)
async def test_corrupt_or_truncated_compressed_bodies_fail(pool: Pool, body: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with RawServer(answering(head + body)) as srv:
        error = await fails_and_is_not_reused(pool, srv, phase="body")
    assert "compressed" in str(error)


async def test_deflate_with_and_without_its_zlib_wrapper_even_split_in_tiny_reads(
    pool: Pool,
) -> None:
    payload = b'{"usage": {"prompt_tokens": 3}}' * 50
    for data in (zlib.compress(payload), zlib.compress(payload)[2:-4]):
        answer = (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n"
            % len(data)
            + data
        )
        async with RawServer(answering(answer, trickle=True)) as srv:
            resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            assert await resp.read(deadline=deadline(pool)) == payload
            resp.release()


async def test_through_the_proxy_an_answer_over_the_cap_fails_over_and_says_why(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body = b'{"choices": [], "padding": "' + b"x" * (2 * MiB) + b'"}'
    huge = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )
    b = await fakes("b")
    async with RawServer(answering(huge + body)) as a:
        config = (
            "server: {host: 127.0.0.1, port: 0, request_timeout_s: 20}\n"
            "health_check: {enabled: false}\n"
            "vendors:\n"
            f"  a: {{type: openai, base_url: 'http://127.0.0.1:{a.port}/v1', api_key: k,"
            " max_response_bytes: 1048576}\n"
            f"  b: {{type: openai, base_url: '{b.base_url}', api_key: k}}\n"
            "models:\n" + two_deployments()
        )
        proxy = await proxies(config)
        with caplog.at_level(logging.INFO, logger="llmproxy.access"):
            resp = await proxy.client().chat.completions.with_raw_response.create(
                model="smart", messages=[{"role": "user", "content": "hi"}]
            )
        assert resp.headers["x-proxy-deployment"] == "b/model-b"
        await a.all_ended()  # the connection to `a` was closed, not pooled
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"]
    failed = line["attempts"][0]
    assert failed["outcome_class"] == "server_error"
    assert failed["detail"].startswith("response over a size cap while reading the body")
    assert "max_response_bytes" in failed["detail"]
