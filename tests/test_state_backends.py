"""State backends against a real redis-server: rate limits, exactly-once counters, leases,
and breaker/cooldown changes travelling between gateways (LWW, reconcile after an outage)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.config import StateConfig, parse_config
from proxy.core.outcomes import Outcome, OutcomeClass
from proxy.gateway import Gateway
from proxy.health.breaker import BreakerState
from proxy.state import Change, MemoryBackend, StateBackend, StateBackendDown, make_backend
from proxy.state.base import sliding_window
from proxy.state.redis import RedisBackend
from tests.redis_server import RedisServer

Backends = Callable[..., Awaitable[StateBackend]]


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `check` (bounded in time); fail with the timeout if it never holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    started: list[StateBackend] = []

    async def make(url: str | None = None, prefix: str = "t") -> StateBackend:
        cfg = StateConfig("redis", url, prefix) if url else StateConfig()
        backend = make_backend(cfg)
        await backend.start()
        started.append(backend)
        return backend

    yield make
    for b in started:
        await b.close()


# ------------------------------------------------------------------ the sliding window itself


def test_sliding_window_weighs_the_previous_window_by_its_overlap() -> None:
    state = None
    for i in range(10):  # fill window 0 (1 s windows, limit 10)
        r, state = sliding_window(500, 1000, 10, 1, state)
        assert r.allowed and r.remaining == 9 - i
    r, state = sliding_window(600, 1000, 10, 1, state)
    assert not r.allowed and r.remaining == 0
    # Next window, half elapsed: the previous 10 count for 5, so 5 more fit.
    admitted = 0
    for _ in range(8):
        r, state = sliding_window(1500, 1000, 10, 1, state)
        admitted += r.allowed
    assert admitted == 5
    assert not r.allowed and r.retry_after_s == pytest.approx(0.1)  # 10*(1-4/10) = 6: at t=1600
    r, state = sliding_window(1600, 1000, 10, 1, state)
    assert r.allowed
    # Two windows later nothing remains of it.
    r, state = sliding_window(3000, 1000, 10, 10, state)
    assert r.allowed and r.remaining == 0
    r, _ = sliding_window(3000, 1000, 10, 11, state)
    assert not r.allowed and r.retry_after_s == 1.0  # a cost above the limit never fits


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_rate_limit_admits_exactly_the_limit(
    kind: str, backends: Backends, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_server").url if kind == "redis" else None
    backend = await backends(url)
    results = [await backend.hit("client-a:rpm", 5, 60) for _ in range(7)]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 2
    assert [r.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    refused = results[-1]
    assert refused.remaining == 0 and 0 < refused.retry_after_s <= 120 and refused.reset_s > 0
    assert (await backend.hit("client-b:rpm", 5, 60)).allowed  # keys are independent


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_partial_hit_takes_as_much_as_fits(
    kind: str, backends: Backends, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_server").url if kind == "redis" else None
    backend = await backends(url)
    granted = [(await backend.hit("c:rpm", 12, 60, 5, partial=True)).granted for _ in range(4)]
    assert granted == [5, 5, 2, 0]
    refused = await backend.hit("c:rpm", 12, 60, 5, partial=True)
    assert not refused.allowed and refused.retry_after_s > 0
    whole = await backend.hit("d:rpm", 12, 60, 5)
    assert whole.granted == 5 and (await backend.hit("d:rpm", 3, 60, 5)).granted == 0


async def test_rate_limit_is_atomic_across_replicas(
    backends: Backends, redis_server: RedisServer
) -> None:
    replicas = [await backends(redis_server.url) for _ in range(3)]
    hits = [replicas[i % 3].hit("team:rpm", 60, 60) for i in range(150)]
    results = await asyncio.gather(*hits)
    assert sum(r.allowed for r in results) == 60


async def test_rate_limit_falls_back_to_a_per_replica_share_when_redis_is_down(
    backends: Backends, redis_server: RedisServer
) -> None:
    a, _ = await backends(redis_server.url), await backends(redis_server.url)
    await eventually(lambda: a.replicas == 2)  # heartbeats: both replicas are counted
    redis_server.kill()
    await eventually(lambda: not a.up)
    results = [await a.hit("team:rpm", 10, 60) for _ in range(8)]
    assert sum(r.allowed for r in results) == 5  # 10 / 2 replicas, locally
    assert results[-1].limit == 10


# ------------------------------------------------------------------ counters, exactly once


async def test_counters_survive_an_outage_and_are_counted_once(
    backends: Backends, persistent_redis: RedisServer
) -> None:
    a = await backends(persistent_redis.url)
    b = await backends(persistent_redis.url)
    for _ in range(5):
        a.add("usage:team", "tokens", 10)
    b.add("usage:team", "tokens", 1)
    await eventually(lambda: not a._pending and a._batch is None)  # type: ignore[attr-defined]
    await eventually(lambda: not b._pending and b._batch is None)  # type: ignore[attr-defined]
    assert await b.counters("usage:team") == {"tokens": 51}

    persistent_redis.kill()
    await eventually(lambda: not a.up)
    a.add("usage:team", "tokens", 7)
    a.add("usage:team", "requests", 2)
    with pytest.raises(StateBackendDown):
        await a.counters("usage:team")
    persistent_redis.start()
    await eventually(lambda: a.up and not a._pending and a._batch is None, 15)  # type: ignore[attr-defined]
    assert await a.counters("usage:team") == {"tokens": 58, "requests": 2}


async def test_a_counter_batch_retried_after_a_lost_reply_is_not_counted_twice(
    backends: Backends, redis_server: RedisServer
) -> None:
    backend = await backends(redis_server.url)
    assert isinstance(backend, RedisBackend)
    batch = ("replica-x:1", {("usage:k", "tokens"): 5})
    for _ in range(3):  # the same batch id, as a retry after a timeout would send it
        backend._batch = batch
        await backend._flush()
    assert await backend.counters("usage:k") == {"tokens": 5}


# ------------------------------------------------------------------ leases


async def test_a_lease_has_one_holder_in_the_cluster_and_moves_when_it_lapses(
    backends: Backends, redis_server: RedisServer
) -> None:
    a, b = await backends(redis_server.url), await backends(redis_server.url)
    la, lb = a.lease("probe:openai/gpt-4o", 0.4), b.lease("probe:openai/gpt-4o", 0.4)
    assert await la.acquire() is True
    assert await lb.acquire() is False
    assert await la.acquire() is True  # renewal
    await la.release()
    assert await lb.acquire() is True
    assert await la.acquire() is False
    await asyncio.sleep(0.6)  # b stops renewing (crash, partition): the lease lapses
    assert await la.acquire() is True
    assert await MemoryBackend("solo").lease("x", 1).acquire() is True


# ------------------------------------------------------------------ records between gateways

CONFIG = """
state: {{backend: redis, url: '{url}', key_prefix: '{prefix}'}}
vendors:
  a: {{type: openai, base_url: 'http://127.0.0.1:9/v1'}}
  b: {{type: openai, base_url: 'http://127.0.0.1:9/v1'}}
models:
  smart:
    deployments:
      - {{vendor: a, model: model-a}}
      - {{vendor: b, model: model-b}}
breaker: {{fail_max: 2, reset_timeout_s: 30}}
"""


@pytest.fixture
async def gateways(redis_server: RedisServer) -> AsyncIterator[Callable[[], Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def make() -> Gateway:
        gw = Gateway(parse_config(CONFIG.format(url=redis_server.url, prefix="g"), env={}))
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        # pytest-timeout covers test bodies only: a close that hangs fails here instead.
        await asyncio.wait_for(gw.close(), 30)


def _trip(gw: Gateway, dep_id: str) -> None:
    breaker = gw.deployments[dep_id].breaker
    while breaker.state is not BreakerState.OPEN:
        breaker.record(breaker.acquire(time.monotonic()), success=False)


async def test_breaker_and_cooldown_changes_reach_the_other_replica(
    gateways: Callable[[], Awaitable[Gateway]],
) -> None:
    a, b = await gateways(), await gateways()
    _trip(a, "a/model-a")
    dep_b = b.deployments["a/model-a"]
    await eventually(lambda: dep_b.breaker.state is BreakerState.OPEN, 1.0)
    opened_a = a.deployments["a/model-a"].breaker.opened_at
    assert abs(dep_b.breaker.opened_at - opened_a) < 0.05  # the same opened-at, not "now"
    assert not dep_b.usable(time.monotonic())

    quota = Outcome(OutcomeClass.QUOTA_EXHAUSTED, 429, 3600.0, "quota")
    b.deployments["b/model-b"].observe(quota, 0.01, b.config.cooldowns)
    dep_a = a.deployments["b/model-b"]
    await eventually(lambda: dep_a.cooldown_reason == "quota_exhausted", 1.0)
    assert dep_a.cooldown_left(time.monotonic()) == pytest.approx(3600, abs=1)

    b.deployments["b/model-b"].clear_cooldown()  # e.g. an admin cleared it on b
    await eventually(lambda: dep_a.cooldown_left(time.monotonic()) == 0, 1.0)
    b.deployments["a/model-a"].breaker.force(BreakerState.CLOSED)
    await eventually(lambda: a.deployments["a/model-a"].breaker.state is BreakerState.CLOSED, 1.0)
    assert a.metrics.state_events.labels("applied")._value.get() >= 2


async def test_an_older_change_never_overwrites_a_newer_one(
    gateways: Callable[[], Awaitable[Gateway]],
) -> None:
    a = await gateways()
    _trip(a, "a/model-a")
    ts, _ = a.sync.versions[("a/model-a", "breaker")]
    stale = Change("a/model-a", "breaker", {"state": "closed", "opened_at": "0"}, ts - 1, "peer")
    assert a.sync.apply(stale) is False
    assert a.deployments["a/model-a"].breaker.state is BreakerState.OPEN

    # Redis keeps the newest too: a late writer does not win there either.
    async def shared_state() -> str:
        shared = await a.state.snapshot(["a/model-a"])
        return shared.get("a/model-a", {}).get("breaker", stale).fields["state"]

    for _ in range(100):
        if await shared_state() == "open":
            break
        await asyncio.sleep(0.02)
    await a.state.write([stale])
    assert await shared_state() == "open"


async def test_a_replica_started_later_loads_the_shared_state(
    gateways: Callable[[], Awaitable[Gateway]],
) -> None:
    a = await gateways()
    _trip(a, "b/model-b")
    await eventually(lambda: not a.state._outbox)  # type: ignore[attr-defined]
    await asyncio.sleep(0.1)
    late = await gateways()  # start() waits for the first reconcile
    assert late.deployments["b/model-b"].breaker.state is BreakerState.OPEN


async def test_changes_made_during_an_outage_are_reconciled_when_redis_returns(
    gateways: Callable[[], Awaitable[Gateway]], redis_server: RedisServer
) -> None:
    a, b = await gateways(), await gateways()
    assert a.metrics.state_backend_up._value.get() == 1
    redis_server.kill()
    await eventually(lambda: not a.state.up and not b.state.up)
    assert a.metrics.state_backend_up._value.get() == 0
    _trip(a, "a/model-a")  # decided while nobody could hear it
    quota = Outcome(OutcomeClass.QUOTA_EXHAUSTED, 429, 600.0, "quota")
    b.deployments["b/model-b"].observe(quota, 0.01, b.config.cooldowns)
    assert b.deployments["a/model-a"].breaker.state is BreakerState.CLOSED
    redis_server.start()  # empty: it was started with --save ''
    await eventually(lambda: a.state.up and b.state.up, 15)
    await eventually(lambda: b.deployments["a/model-a"].breaker.state is BreakerState.OPEN, 3)
    await eventually(lambda: a.deployments["b/model-b"].cooldown_reason == "quota_exhausted", 3)
    assert a.metrics.state_backend_up._value.get() == 1


async def test_closing_stops_a_task_whose_cancel_was_lost() -> None:
    """Shutdown must not hang on a task that lost a cancel (as one can inside a library's
    read-timeout handling): the backend cancels again until the task has ended."""
    from proxy.state.redis import _stop

    lost = 0

    async def stubborn() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if lost == 0:
                    lost += 1
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(_stop([task], every_s=0.05), 5)  # a guard against a hang, not a timing
    assert task.cancelled() and lost == 1
