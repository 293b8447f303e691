"""The listener's fast lane and its hand-over to aiohttp, seen from raw client sockets.

A plain POST with a Content-Length to a proxied path is answered on the fast lane; every
other request (and every later request on that connection) goes to aiohttp, which must
then see the connection exactly as the client sent it. A request llhttp rejects gets a 400
on either lane.
"""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest

from proxy.fakes import FakeOpenAI
from proxy.fakes.base import Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config

BODY = orjson.dumps({"model": "smart", "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = orjson.dumps({**orjson.loads(BODY), "stream": True})


@pytest.fixture
async def proxy(fakes: FakeFactory, proxies: ProxyFactory) -> tuple[FakeOpenAI, RunningProxy]:
    a = await fakes("a")
    config = build_config({"a": a}, "  smart:\n    deployments:\n      - {vendor: a, model: m}\n")
    return a, await proxies(config)


def post(path: str = "/v1/chat/completions", body: bytes = BODY, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def lanes(p: RunningProxy) -> list[str]:
    return sorted(conn.lane for conn in p.listener.connections)


def chunked_post(body: bytes) -> bytes:
    """The same request with a chunked body: aiohttp's to serve, not the fast lane's."""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    while head.startswith(b"HTTP/1.1 100 "):  # an interim answer (to Expect: 100-continue)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    else:  # chunked
        parts = []
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), 10)
            if not size:
                break
            parts.append(data[:-2])
        body = b"".join(parts)
    return status, headers, body


async def connect(proxy: RunningProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def stalled_request(
    a: FakeOpenAI, p: RunningProxy
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose request is in flight at a vendor that never answers."""
    a.set_fault(Fault(stall_s=30))
    reader, writer = await connect(p)
    writer.write(post())
    for _ in range(100):
        if a.stats.in_flight == 1:
            break
        await asyncio.sleep(0.02)
    assert a.stats.in_flight == 1
    return reader, writer


async def test_keep_alive_and_pipelined_requests_on_the_fast_lane(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    _, p = proxy
    reader, writer = await connect(p)
    writer.write(
        post() + post() + post("/v1/embeddings", orjson.dumps({"model": "smart", "input": "x"}))
    )
    for kind in ("chat.completion", "chat.completion", "list"):
        status, headers, body = await read_response(reader)
        assert status == 200, body
        assert orjson.loads(body)["object"] == kind
        assert headers["content-type"] == "application/json"
        assert "date" in headers and headers["x-proxy-deployment"] == "a/m"
    assert lanes(p) == ["fast"]  # still ours: nothing was handed over
    writer.close()


async def test_a_stream_is_chunk_encoded_and_ends_with_done(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    _, p = proxy
    reader, writer = await connect(p)
    writer.write(post(body=STREAM_BODY) + post())
    status, headers, data = await read_response(reader)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert headers["content-type"] == "text/event-stream"
    assert data.endswith(b"data: [DONE]\n\n")
    status, _, data = await read_response(reader)  # the next request on the same connection
    assert status == 200 and orjson.loads(data)["object"] == "chat.completion"
    writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 200),  # not a proxied endpoint
        (b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n", 405),  # wrong method
        (post("/v1/chat/completions?x=1"), 200),  # a query string: aiohttp's to route
        (post().replace(b"HTTP/1.1", b"HTTP/1.0", 1), 200),
        (post(extra="Expect: 100-continue\r\n"), 200),
        (chunked_post(BODY), 200),
        (post(extra="Content-Length: 5\r\n"), 400),  # two lengths: a smuggling attempt
        (post(extra="Bad Header: x\r\n"), 400),  # not a token
        (post(extra="X-Long: " + "a" * 9000 + "\r\n"), 400),
    ],
)
async def test_everything_else_is_handed_to_aiohttp_as_sent(
    proxy: tuple[FakeOpenAI, RunningProxy], request_bytes: bytes, status: int
) -> None:
    _, p = proxy
    reader, writer = await connect(p)
    writer.write(request_bytes)
    got, headers, body = await read_response(reader)
    assert got == status, body
    assert lanes(p) in (["aiohttp"], [])  # aiohttp owns the connection now (or closed it)
    writer.close()


async def test_a_connection_moves_to_aiohttp_at_a_request_boundary(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    _, p = proxy
    reader, writer = await connect(p)
    writer.write(post() + b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n" + post())
    statuses = [(await read_response(reader))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]  # the third POST was served by aiohttp
    writer.close()


async def test_connection_close_is_honoured(proxy: tuple[FakeOpenAI, RunningProxy]) -> None:
    _, p = proxy
    reader, writer = await connect(p)
    writer.write(post(extra="Connection: close\r\n"))
    status, _, _ = await read_response(reader)
    assert status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
    writer.close()


async def test_a_bad_body_is_a_json_4xx_on_the_fast_lane(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    _, p = proxy
    reader, writer = await connect(p)
    writer.write(post(body=b"{not json") + post(body=BODY.replace(b"smart", b"nope")))
    status, headers, body = await read_response(reader)
    assert status == 400 and orjson.loads(body)["error"]["code"] == "invalid_json"
    status, headers, body = await read_response(reader)
    assert status == 404 and orjson.loads(body)["error"]["code"] == "model_not_found"
    writer.close()


async def test_a_handler_bug_is_a_logged_json_500_and_the_connection_lives_on(
    proxy: tuple[FakeOpenAI, RunningProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, p = proxy

    async def broken(request: object) -> object:
        raise RuntimeError("bug")

    monkeypatch.setitem(p.listener.routes, "/v1/completions", broken)
    reader, writer = await connect(p)
    writer.write(post("/v1/completions") + post())
    status, _, body = await read_response(reader)
    assert status == 500 and orjson.loads(body)["error"]["code"] == "internal_error"
    status, _, _ = await read_response(reader)
    assert status == 200
    writer.close()


async def test_idle_keep_alive_connections_are_closed(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    _, p = proxy
    p.listener.limits = dataclasses.replace(p.listener.limits, keepalive_s=0.0)
    reader, writer = await connect(p)
    writer.write(post())
    assert (await read_response(reader))[0] == 200
    p.listener.sweep()  # what the periodic sweep does every second
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_client_that_hangs_up_mid_request_cancels_the_upstream_call(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    a, p = proxy
    _, writer = await stalled_request(a, p)
    writer.close()
    for _ in range(100):
        if a.stats.in_flight == 0 and p.listener.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert (a.stats.in_flight, p.listener.in_flight) == (0, 0)


async def test_a_large_body_arriving_in_pieces_is_read_whole(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    a, p = proxy
    big = orjson.dumps({"model": "smart", "messages": [{"role": "user", "content": "x" * 900_000}]})
    data = post(body=big)
    reader, writer = await connect(p)
    for i in range(0, len(data), 16384):
        writer.write(data[i : i + 16384])
        await writer.drain()
        if i % (8 * 16384) == 0:
            await asyncio.sleep(0.005)  # let the proxy see it in many pieces
    status, _, body = await read_response(reader)
    assert status == 200, body
    assert lanes(p) == ["fast"]  # served on the fast lane
    assert a.stats.total_requests == 1
    sent = a.stats.last_requests[-1].body
    assert sent["messages"][0]["content"] == "x" * 900_000  # every byte reached the vendor
    writer.close()


async def test_requests_pipelined_behind_one_in_flight_are_not_buffered_without_bound(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    a, p = proxy
    _, writer = await stalled_request(a, p)
    burst = post() * 40_000  # ~5 MB of pipelined requests
    writer.write(burst)
    await asyncio.sleep(0.5)  # the proxy reads what it will, then stops
    (conn,) = p.listener.connections
    held = len(conn._buf)
    assert held < 2 * 1024 * 1024, held  # paused near 256 KiB, not the whole 5 MB
    writer.transport.abort()


@pytest.mark.parametrize("lane", ["fast", "aiohttp"])
async def test_a_stream_is_checked_the_same_on_both_lanes(
    proxy: tuple[FakeOpenAI, RunningProxy], lane: str
) -> None:
    """Both relays (the fast lane's splice, aiohttp's chunk by chunk) pass the vendor's
    events on unchanged, and relay its in-stream error event minus our key as the end."""
    a, p = proxy
    a.chunk_delay_s = 0.01  # the error event comes after content has reached the client
    request = post(body=STREAM_BODY) if lane == "fast" else chunked_post(STREAM_BODY)
    error = Fault(error_event_after_chunks=3, message="server error for key key-a")
    for fault in (None, error):
        a.set_fault(fault)
        reader, writer = await connect(p)
        writer.write(request)
        status, headers, stream = await read_response(reader)
        assert (status, headers["content-type"]) == (200, "text/event-stream"), stream
        assert lanes(p) == [lane]
        events = [e for e in stream.split(b"\n\n") if e]
        if fault is None:
            assert stream.endswith(b"data: [DONE]\n\n") and len(events) > 4
        else:
            assert b"[DONE]" not in stream and b"key-a" not in stream
            assert len(events) == 4 and b"server error for key [redacted]" in events[-1], events
        writer.close()


async def test_a_handler_bug_mid_stream_cuts_the_connection_instead_of_a_500_in_the_body(
    proxy: tuple[FakeOpenAI, RunningProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a stream's head and first events are out, a 500 answer would be read as garbage
    inside the chunked body; the client must see the body break off instead."""
    _, p = proxy
    import proxy.api.pipeline as pipeline

    async def broken_settle(*args: object) -> None:
        raise RuntimeError("bug after the stream's events")

    monkeypatch.setattr(pipeline, "_settle", broken_settle)
    reader, writer = await connect(p)
    writer.write(post(body=STREAM_BODY))
    with pytest.raises(asyncio.IncompleteReadError):
        await read_response(reader)  # the head, events, then the connection closes mid-body
    writer.close()
