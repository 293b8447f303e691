"""Hostile clients: hanging up mid-stream leaks nothing; reading slowly buffers nothing.

The proxy relays streams with aiohttp's ``StreamResponse.write``, which awaits the
transport's drain: when the client stops reading, the proxy's write blocks, so it stops
reading upstream, so the vendor's TCP window closes and *its* write blocks. These tests
prove that chain end to end rather than trusting it.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
import pytest

from proxy.fakes import FakeOpenAI
from proxy.vendors.http import HTTPAdapter
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config, two_deployments

Pair = tuple[FakeOpenAI, FakeOpenAI, RunningProxy]
BODY = {"model": "smart", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _wait_for(predicate: object, what: str = "condition", timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not reached within {timeout} s")


def _request_tasks() -> int:
    """Tasks other than the health checker's probe loops (they come and go on their own clock)."""
    return sum(1 for t in asyncio.all_tasks() if not t.get_name().startswith("health:"))


def _pooled(proxy: RunningProxy, vendor: str) -> tuple[int, int]:
    """(connections checked out, idle pooled connections) of a vendor adapter's pool."""
    adapter = proxy.gateway.adapters[vendor]
    assert isinstance(adapter, HTTPAdapter)
    return adapter.pool.stats()


@pytest.fixture
async def quiet_pair(fakes: FakeFactory, proxies: ProxyFactory) -> Pair:
    """`pair` without health probes: a probe's pooled connection (and the fake's task
    serving it) would otherwise be counted as a leak when it lands mid-test."""
    a = await fakes("a")
    b = await fakes("b")
    config = build_config({"a": a, "b": b}, two_deployments(), "health_check: {enabled: false}\n")
    return a, b, await proxies(config)


async def test_hanging_up_mid_stream_cancels_upstream_and_leaks_no_task_or_connection(
    quiet_pair: Pair,
) -> None:
    a, _, proxy = quiet_pair
    a.chunks = 50
    a.chunk_delay_s = 0.05
    before = _request_tasks()
    rounds = 10
    async with aiohttp.ClientSession() as s:
        for i in range(rounds):
            resp = await s.post(
                f"{proxy.url}/v1/chat/completions",
                data=orjson.dumps(BODY),
                headers={"Content-Type": "application/json"},
            )
            assert resp.status == 200
            await resp.content.readline()
            resp.close()  # hang up after the first event
            await _wait_for(lambda n=i + 1: a.stats.disconnects == n, "the fake saw the hang-up")  # type: ignore[misc]
    await _wait_for(
        lambda: proxy.gateway.router.active == 0 and a.stats.in_flight == 0, "requests ended"
    )
    # The aborted upstream connections were closed, not returned to the pool half-read
    # (a health probe's answer, read whole, may have left its connection there).
    await _wait_for(lambda: _pooled(proxy, "a")[0] == 0, "no connection checked out")
    assert _pooled(proxy, "a")[1] <= min(1, a.stats.model_list_requests)
    # Every handler task (the proxy's and the fake's) ended: nothing accumulates per hang-up.
    await _wait_for(lambda: _request_tasks() <= before, f"task count back to {before}")
    assert a.stats.tokens["completion"] == 0  # none of the streams was generated to the end


async def test_slow_reader_is_backpressured_not_buffered(pair: Pair) -> None:
    a, _, proxy = pair
    a.chunks = 150_000  # ~20 MB of events: more than every socket buffer on the way
    request = orjson.dumps({**BODY, "model": "smart"})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(request)}\r\n\r\n"
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads little
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", proxy.port))
    try:
        await loop.sock_sendall(sock, head + request)
        await _wait_for(lambda: a.stats.in_flight == 1)
        buffered: list[int] = []
        for _ in range(15):  # 1.5 s of not reading at all
            await asyncio.sleep(0.1)
            buffered.append(
                max(
                    (c.transport.get_write_buffer_size() for c in proxy.listener.connections
                     if c.transport is not None),
                    default=0,
                )
            )  # fmt: skip
        # The vendor is still blocked mid-stream: the proxy did not read it all into memory.
        assert a.stats.in_flight == 1
        assert a.stats.tokens["completion"] == 0
        # And what the proxy holds for the client stays small (asyncio's write buffer is
        # paused at its high-water mark; one relayed chunk may land on top).
        assert max(buffered) < 1_000_000, buffered
        # Reading resumes: the whole stream arrives, ending with its terminator.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        tail = b""
        total = 0
        for _ in range(100_000):
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
            if not data:
                break
            total += len(data)
            tail = (tail + data)[-64:]
            if b"[DONE]" in tail:
                break
        assert b"[DONE]" in tail
        assert total > 10_000_000
    finally:
        sock.close()
    await _wait_for(lambda: a.stats.in_flight == 0)
