"""The upstream pool under load: a bounded wait for a free connection, its metrics, and
books that stay right with thousands of connections (and with the proxy around it: a
saturated vendor pool fails over without blaming the vendor)."""

from __future__ import annotations

import asyncio
import logging
import resource

import openai
import orjson
import pytest

from proxy.config import CooldownConfig
from proxy.core.outcomes import BreakerVerdict, OutcomeClass
from proxy.health.deployment import cooldown_seconds
from proxy.http1 import Pool, PoolState, PoolTimeout, default_limit
from proxy.vendors.classify import classify_transport
from tests.conftest import (
    FakeFactory,
    ProxyFactory,
    RunningProxy,
    build_config,
    free_port,
    two_deployments,
)
from tests.raw_http import RawServer, answering, deadline, read_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_full_pool_makes_a_request_wait_at_most_pool_wait_s() -> None:
    waits: list[float] = []
    pool = Pool(limit=1, read_s=5.0, pool_wait_s=0.2, on_wait=waits.append)
    try:
        async with RawServer(answering(OK, OK)) as srv:
            first = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            second = asyncio.ensure_future(
                pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            )
            await asyncio.sleep(0.05)
            assert pool.state() == PoolState(in_use=1, idle=0, waiting=1, limit=1)
            t0 = pool.loop.time()
            with pytest.raises(PoolTimeout) as caught:
                await second
            assert pool.loop.time() - t0 < 3  # the pool wait fired, not the 5 s deadline
            assert pool.state().waiting == 0
            assert "max_connections" in str(caught.value)
            assert await first.read(deadline=deadline(pool)) == b"ok"
            first.release()
            resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            assert await resp.read(deadline=deadline(pool)) == b"ok"
            resp.release()
            assert srv.connections == 1
    finally:
        await pool.close()
    assert waits[0] == 0.0 and waits[2] == 0.0
    assert 0.1 < waits[1] < 3


def test_a_pool_timeout_fails_over_without_blaming_the_vendor() -> None:
    outcome = classify_transport(PoolTimeout("no connection was free"), phase="connect")
    assert outcome.cls is OutcomeClass.RATE_LIMITED
    assert outcome.policy.breaker is not BreakerVerdict.FAILURE
    assert cooldown_seconds(outcome, CooldownConfig(), repeats=5) == 0.0
    assert outcome.message.startswith("no free upstream connection while connecting: PoolTimeout")


async def test_requests_that_give_up_waiting_leave_no_trace() -> None:
    pool = Pool(limit=1, read_s=5.0, pool_wait_s=0.05)
    try:
        async with RawServer(answering(OK, OK)) as srv:
            first = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            waiting = [
                asyncio.ensure_future(
                    pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
                )
                for _ in range(300)
            ]
            results = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(r, PoolTimeout) for r in results)
            assert pool.state() == PoolState(in_use=1, idle=0, waiting=0, limit=1)
            await first.read(deadline=deadline(pool))
            first.release()
            resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            assert await resp.read(deadline=deadline(pool)) == b"ok"
            resp.release()
    finally:
        await pool.close()


async def test_a_failed_connect_gives_its_place_to_a_waiting_request() -> None:
    pool = Pool(limit=1, read_s=5.0, pool_wait_s=30.0)
    refused = f"http://127.0.0.1:{free_port()}/x"  # nothing listens there
    try:
        async with RawServer(answering(OK)) as srv:
            doomed = asyncio.ensure_future(
                pool.request("POST", refused, {}, b"", deadline=deadline(pool))
            )
            waiting = asyncio.ensure_future(
                pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            )
            with pytest.raises(ConnectionRefusedError):
                await doomed
            resp = await asyncio.wait_for(waiting, 5)  # not at its 30 s pool wait
            assert await resp.read(deadline=deadline(pool)) == b"ok"
            resp.release()
    finally:
        await pool.close()


async def test_at_the_limit_an_idle_connection_to_another_host_makes_room_at_once() -> None:
    waits: list[float] = []
    pool = Pool(limit=1, read_s=5.0, on_wait=waits.append)
    try:
        async with RawServer(answering(OK)) as a, RawServer(answering(OK)) as b:
            for srv in (a, b):
                resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
                await resp.read(deadline=deadline(pool))
                resp.release()
            assert pool.state() == PoolState(in_use=0, idle=1, waiting=0, limit=1)
            await a.all_ended()  # a's idle connection was closed to make room for b's
    finally:
        await pool.close()
    assert waits[1] < 1


async def test_the_books_stay_right_with_thousands_of_connections() -> None:
    n = 2000
    hang_up = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(OK)
        await w.drain()
        await hang_up.wait()

    pool = Pool(limit=n + 100, read_s=30.0)
    try:
        async with RawServer(handler) as srv:
            answers = await asyncio.gather(
                *(
                    pool.request("POST", srv.url, {}, b"", deadline=deadline(pool, 60))
                    for _ in range(n)
                )
            )
            assert pool.state() == PoolState(in_use=n, idle=0, waiting=0, limit=n + 100)
            for resp in answers:
                assert await resp.read(deadline=deadline(pool)) == b"ok"
                resp.release()
            assert pool.state() == PoolState(in_use=0, idle=n, waiting=0, limit=n + 100)
            assert srv.connections == n
            hang_up.set()  # the server closes every idle connection
            for _ in range(500):
                if pool.state().idle == 0:
                    break
                await asyncio.sleep(0.02)
            assert pool.state() == PoolState(in_use=0, idle=0, waiting=0, limit=n + 100)
            hang_up.clear()
            resp = await pool.request("POST", srv.url, {}, b"", deadline=deadline(pool))
            assert await resp.read(deadline=deadline(pool)) == b"ok"
            resp.release()
            assert srv.connections == n + 1
    finally:
        await pool.close()


def test_the_default_limit_follows_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_limit() == max(256, soft // 2)


async def test_a_saturated_vendor_pool_fails_over_is_counted_and_not_blamed(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Vendor `a` may hold one connection; a stream holds it; the next request waits for
    `pool_wait_s`, then is served by `b`. Nothing counts against `a`."""
    a = await fakes("a", chunks=40, chunk_delay_s=0.05)
    b = await fakes("b")
    config = build_config({"a": a, "b": b}, two_deployments(), "health_check: {enabled: false}\n")
    config = config.replace(
        "api_key: 'key-a'}", "api_key: 'key-a', max_connections: 1, timeouts: {pool_wait_s: 0.2}}"
    )
    proxy = await proxies(config)
    client = proxy.client()
    stream = await client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,  # type: ignore[arg-type]
    )
    try:
        await stream.__anext__()
        await _while_the_stream_holds_the_connection(proxy, client, caplog)
        async for _ in stream:
            pass
    finally:
        await stream.close()
    metrics = await proxy.metrics_text()
    count = next(
        line
        for line in metrics.splitlines()
        if line.startswith('llmproxy_upstream_pool_wait_seconds_count{vendor="a"}')
    )
    assert float(count.rsplit(" ", 1)[1]) >= 2
    assert 'llmproxy_upstream_pool_wait_seconds_bucket{le="0.001",vendor="b"}' in metrics


async def _while_the_stream_holds_the_connection(
    proxy: RunningProxy, client: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = await proxy.metrics_text()
    assert 'llmproxy_upstream_pool_limit{vendor="a"} 1.0' in metrics
    assert 'llmproxy_upstream_pool_connections{state="in_use",vendor="a"} 1.0' in metrics
    with caplog.at_level(logging.INFO, logger="llmproxy.access"):
        resp = await client.chat.completions.with_raw_response.create(
            model="smart", messages=[{"role": "user", "content": "hi"}]
        )
    assert resp.headers["x-proxy-deployment"] == "b/model-b"
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"]
    (waited,) = [line for line in lines if len(line["attempts"]) == 2]
    attempt = waited["attempts"][0]
    assert attempt["outcome_class"] == "rate_limited"
    assert "no free upstream connection" in attempt["detail"]
    state = proxy.gateway.deployments["a/model-a"]
    assert state.cooldown_left(0) == 0.0
    assert state.breaker.fail_counter == 0
