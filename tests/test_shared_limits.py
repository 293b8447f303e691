"""Client limits and usage shared by real `llm-proxy serve` replicas through one Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import aiohttp

from proxy.fakes import FakeOpenAI
from proxy.limits.shared import SharedWindow
from proxy.state import MemoryBackend
from tests.conftest import FakeFactory
from tests.limits_helpers import KEY_A, admin, chat_body, keyed_config
from tests.redis_server import RedisServer
from tests.test_replicas import _replicas, _until, processes

__all__ = ["processes"]  # the fixture, re-exported for this module's tests

REPLICAS = 3
RPM = 60
CHUNK = RPM // (4 * REPLICAS)  # SharedWindow.chunk() with three replicas seen


async def _send(
    urls: list[str], count: int, pad: str = "", **fields: Any
) -> list[tuple[int, str | None]]:
    """`count` chat requests as team-a, spread round-robin over `urls`, 10 at a time."""
    sem = asyncio.Semaphore(10)
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> tuple[int, str | None]:
            async with (
                sem,
                s.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions",
                    json=chat_body(f"hello {i}{pad}", **fields),
                    headers={"Authorization": f"Bearer {KEY_A}"},
                ) as r,
            ):
                body = await r.json()
                return r.status, (body.get("error") or {}).get("code")

        return await asyncio.gather(*(one(i) for i in range(count)))


async def test_an_rpm_limit_holds_across_replicas_and_degrades_to_a_share_without_redis(
    fakes: FakeFactory,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
) -> None:
    a = await fakes("a")
    config = tmp_path / "proxy.yaml"
    config.write_text(
        keyed_config(
            a,
            f"{{rpm: {RPM}}}",
            extra=f"state: {{backend: redis, url: '{redis_server.url}'}}\n",
        )
    )
    urls = await _replicas(config, REPLICAS, processes)
    await _seen_by_all(redis_server)

    results = await _send(urls, 2 * RPM)
    ok = sum(1 for status, _ in results if status == 200)
    refused = [code for status, code in results if status != 200]
    # The documented tolerance: + replicas x chunk; unused grants may leave as many unused.
    assert RPM - REPLICAS * CHUNK <= ok <= RPM + REPLICAS * CHUNK, ok
    assert set(refused) == {"rpm"}
    assert a.stats.total_requests == ok

    # Redis goes away: each replica admits its share (limit / replicas seen), never zero.
    redis_server.kill()
    for url in urls:
        await _until(url, "llmproxy_state_backend_up", 0, 5)
    for url in urls:
        alone = await _send([url], RPM)
        assert sum(1 for status, _ in alone if status == 200) == RPM // REPLICAS


async def test_a_tpm_limit_holds_across_replicas_on_the_tokens_really_used(
    fakes: FakeFactory,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
) -> None:
    a = await fakes("a")
    tpm = 3000
    config = tmp_path / "proxy.yaml"
    config.write_text(
        keyed_config(
            a, f"{{tpm: {tpm}}}", extra=f"state: {{backend: redis, url: '{redis_server.url}'}}\n"
        )
    )
    urls = await _replicas(config, REPLICAS, processes)
    await _seen_by_all(redis_server)
    results = await _send(urls, 100, pad=" " + "x" * 400, max_tokens=5)
    used = a.stats.tokens["prompt"] + a.stats.tokens["completion"]
    refused = {code for status, code in results if status != 200}
    assert refused == {"tpm"}
    chunk = tpm // (4 * REPLICAS)
    estimate = 5 + 500 // 4  # max_tokens + the prompt estimate of a ~500-byte body
    # Unused refunds stay on their replica; a reservation below the real use is repaid.
    assert tpm - REPLICAS * (chunk + estimate) <= used <= tpm + REPLICAS * (chunk + estimate)


async def _seen_by_all(redis_server: RedisServer) -> None:
    for _ in range(100):  # every replica has counted the three (chunks depend on it)
        if redis_server.command("ZCARD", "llmproxy:replicas").strip() == f":{REPLICAS}":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.2)  # one more heartbeat each: all have seen all


def test_chunks_shrink_with_the_replica_count() -> None:
    class Seen:
        replicas = 1

    window = SharedWindow(Seen(), "rpm:x", 60)  # type: ignore[arg-type]
    assert window.chunk() == 15
    Seen.replicas = 3
    assert window.chunk() == 5
    Seen.replicas = 100
    assert window.chunk() == 1


async def _usage(url: str, query: str = "") -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        status, body = await admin(s, url, "GET", f"/admin/usage{query}")
    assert status == 200, body
    return cast(dict[str, Any], body)


async def _settled(urls: list[str], fake: FakeOpenAI, requests: int, timeout_s: float) -> None:
    """Until every replica's cluster ledger shows `requests` and exactly the fake's tokens."""
    deadline = time.monotonic() + timeout_s
    want = {
        "requests": requests,
        "prompt_tokens": fake.stats.tokens["prompt"],
        "completion_tokens": fake.stats.tokens["completion"],
    }
    for url in urls:
        while True:
            body = await _usage(url)
            got = {k: body["totals"].get(k) for k in want}
            if body["scope"] == "cluster" and got == want:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}: {body['scope']} ledger {got} != {want}")
            await asyncio.sleep(0.05)


async def test_the_usage_ledger_across_replicas_equals_what_the_vendor_reported(
    fakes: FakeFactory,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    persistent_redis: RedisServer,
) -> None:
    a = await fakes("a")
    config = tmp_path / "proxy.yaml"
    config.write_text(
        keyed_config(
            a,
            "{tokens_per_day: 1000000}",
            extra=f"state: {{backend: redis, url: '{persistent_redis.url}'}}\n",
        )
    )
    urls = await _replicas(config, REPLICAS, processes)
    assert {s for s, _ in await _send(urls, 30)} == {200}
    await _settled(urls, a, 30, 5)

    # Daily limits count the cluster: replica 3 sees what replicas 1 and 2 served.
    team_a = (await _usage(urls[0], "?client=team-a"))["totals"]
    tokens = team_a["prompt_tokens"] + team_a["completion_tokens"]
    deadline = time.monotonic() + 5
    while True:
        limits = (await _usage(urls[2], "?client=team-a"))["limits"]
        if limits["tokens_per_day"]["used"] == tokens:
            break
        assert time.monotonic() < deadline, (limits, tokens)
        await asyncio.sleep(0.05)

    # An outage: usage accounted meanwhile is flushed on return, once.
    persistent_redis.kill()
    for url in urls:
        await _until(url, "llmproxy_state_backend_up", 0, 5)
    assert {s for s, _ in await _send(urls, 9)} == {200}
    assert (await _usage(urls[0]))["scope"] == "replica"
    persistent_redis.start()
    for url in urls:
        await _until(url, "llmproxy_state_backend_up", 1, 15)
    await _settled(urls, a, 39, 5)


async def test_token_grants_are_refunded_locally_and_overuse_is_repaid() -> None:
    backend = MemoryBackend("r1")
    window = SharedWindow(backend, "tpm:x", 1000)  # one replica: chunks of 250
    await window.ready(100)
    assert window.available == 250
    window.take(100)
    window.settle(100, 40)  # used less than reserved: back to this replica's grants
    assert window.available == 210
    window.take(100)
    window.settle(100, 400)  # used more: a deficit
    assert window.available == -190
    await window.ready(100)  # the next take covers the deficit and this request: 290
    assert window.available == 100
    left = (await backend.hit("tpm:x", 1000, 60, 1000, partial=True)).granted
    assert left == 1000 - 250 - 290  # the window counted both takes, nothing more
