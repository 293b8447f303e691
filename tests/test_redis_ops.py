"""How many Redis commands a proxied request costs with the shared state backend, counted
by a real redis-server (`INFO commandstats`): the figure docs/scaling.md scales to a fleet.

Background work (heartbeats, the peers' usage refresh, probe leases) runs on timers, not
per request, so it is measured on its own over an idle span and taken off. The request
figures are the design's: no request awaits Redis in the common case; rpm/tpm take grants a
chunk at a time; the usage ledger is flushed in batches, one script call per batch.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import aiohttp

from tests.conftest import FakeFactory, ProxyFactory
from tests.limits_helpers import KEY_A, chat_body, keyed_config
from tests.redis_server import RedisServer

RPM = 40_000  # one replica: grants in chunks of 10,000
TPM = 4_000_000
REQUESTS = 400


# Commands our Lua scripts run inside Redis (the Python side never sends them itself): they
# cost Redis CPU but no round trip.
_IN_SCRIPTS = frozenset({"set", "hincrby", "time", "hmget", "hset", "pexpire", "get", "del"})


def _stats(redis: RedisServer) -> tuple[Counter[str], float]:
    """Calls per command so far, and Redis's CPU seconds (user + system)."""
    text = redis.command("INFO", "all")
    calls = Counter({m[1]: int(m[2]) for m in re.finditer(r"cmdstat_([a-z|_]+):calls=(\d+)", text)})
    cpu = sum(float(m[1]) for m in re.finditer(r"used_cpu_(?:sys|user):([\d.]+)", text))
    return calls, cpu


class Span:
    """Commands, round trips and Redis CPU over a span of time."""

    def __init__(self, calls: Counter[str], cpu_s: float, seconds: float) -> None:
        calls.pop("info", None)  # our own
        self.calls = +calls
        self.commands = sum(self.calls.values())
        self.round_trips = self.commands - sum(
            n for name, n in self.calls.items() if name in _IN_SCRIPTS
        )
        self.cpu_s = cpu_s
        self.seconds = seconds


async def _span(redis: RedisServer, work: asyncio.Future[None] | None, idle_s: float) -> Span:
    calls0, cpu0 = _stats(redis)
    t0 = time.monotonic()
    if work is None:
        await asyncio.sleep(idle_s)
    else:
        await work
        await asyncio.sleep(0.3)  # the last batch's flush
    seconds = time.monotonic() - t0
    calls, cpu = _stats(redis)
    calls.subtract(calls0)
    return Span(calls, cpu - cpu0, seconds)


async def _requests(url: str, count: int, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> None:
            async with (
                sem,
                s.post(
                    f"{url}/v1/chat/completions",
                    json=chat_body(f"hello {i}"),
                    headers={"Authorization": f"Bearer {KEY_A}"},
                ) as r,
            ):
                assert r.status == 200, await r.text()
                await r.read()

        await asyncio.gather(*(one(i) for i in range(count)))


async def test_redis_commands_per_request(
    fakes: FakeFactory, proxies: ProxyFactory, redis_server: RedisServer
) -> None:
    a = await fakes("a")
    proxy = await proxies(
        keyed_config(
            a,
            f"{{rpm: {RPM}, tpm: {TPM}, tokens_per_day: 1000000000}}",
            extra=f"state: {{backend: redis, url: '{redis_server.url}'}}\n"
            "health_check: {enabled: false}\n",
        )
    )
    await _requests(proxy.url, 20, 4)  # first grants, scripts loaded, connections open
    await asyncio.sleep(1.0)

    idle = await _span(redis_server, None, 3.0)
    per_s = idle.commands / idle.seconds
    print(f"background: {per_s:.1f} commands/s ({dict(idle.calls)})")
    figures = {}
    for concurrency in (1, 16):
        work = asyncio.ensure_future(_requests(proxy.url, REQUESTS, concurrency))
        busy = await _span(redis_server, work, 0)
        background = busy.seconds / idle.seconds
        figures[concurrency] = (
            (busy.round_trips - idle.round_trips * background) / REQUESTS,
            (busy.commands - idle.commands * background) / REQUESTS,
            (busy.cpu_s - idle.cpu_s * background) / REQUESTS * 1e6,
        )
        print(
            f"concurrency {concurrency}: per request {figures[concurrency][0]:.2f} round "
            f"trips, {figures[concurrency][1]:.2f} commands, {figures[concurrency][2]:.0f} us "
            f"of Redis CPU ({dict(busy.calls)})"
        )

    # One request at a time, each request's usage is a batch of its own: one script call
    # (EVALSHA: a SET for the batch id and an HINCRBY per counter) per request; the grants'
    # round trips are one per 10,000 requests.
    round_trips, commands, _ = figures[1]
    assert 0.5 <= round_trips <= 1.1, figures
    assert commands <= 7, figures
    # Concurrent requests share batches: fewer round trips and commands per request.
    assert figures[16][0] < round_trips and figures[16][1] < commands, figures
