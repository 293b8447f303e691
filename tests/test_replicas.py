"""Real `llm-proxy serve` replicas sharing one Redis: what one learns, the others act on.

Fake vendors (in this process) count every request they get, so "replica B stopped
sending to the deployment" is measured at the vendor, not inferred from the proxy.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
import openai

from proxy.fakes import FakeOpenAI, Fault
from tests.conftest import FakeFactory, build_config, free_port, two_deployments
from tests.redis_server import RedisServer
from tests.test_reload_and_shutdown import ROOT, _metric, _start, processes

__all__ = ["processes"]  # the fixture, re-exported for this module's tests

MESSAGES = [{"role": "user", "content": "hi"}]
OPEN = 2


def _config(vendors: dict[str, FakeOpenAI], models: str, redis: RedisServer) -> str:
    return build_config(
        vendors,
        models,
        "breaker: {fail_max: 3, reset_timeout_s: 60}\n"
        f"state: {{backend: redis, url: '{redis.url}'}}\n",
    )


async def _replicas(config: Path, count: int, procs: list[asyncio.subprocess.Process]) -> list[str]:
    urls = []
    for _ in range(count):
        proc, url = await _start(config, "--no-access-log")
        procs.append(proc)
        urls.append(url)
    return urls


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=20)


async def _served_by(url: str, model: str = "smart") -> str:
    async with _client(url) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        return raw.headers["x-proxy-attempts"]


async def _until(url: str, metric: str, value: float, timeout_s: float) -> float:
    """Seconds until `metric` reads `value` at `url`; fails after `timeout_s`."""
    start = time.monotonic()
    while await _metric(url, metric) != value:
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{url}: {metric} != {value} after {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_a_breaker_opened_on_one_replica_stops_the_others_within_a_second(
    fakes: FakeFactory,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
) -> None:
    a, b = await fakes("a"), await fakes("b")
    config = tmp_path / "proxy.yaml"
    config.write_text(_config({"a": a, "b": b}, two_deployments(), redis_server))
    r1, r2, r3 = await _replicas(config, 3, processes)

    a.set_fault(Fault.preset("server_error"))
    for _ in range(3):  # replica 1 alone sees a fail, and fails over each time
        assert (await _served_by(r1)).endswith("b/model-b=success")
    breaker_a = 'llmproxy_breaker_state{deployment="a/model-a"}'
    assert await _metric(r1, breaker_a) == OPEN
    # The others never sent `a` anything, yet stop routing to it within a second.
    for url in (r2, r3):
        await _until(url, breaker_a, OPEN, 1.0)
    seen = a.stats.total_requests
    for url in (r2, r3):
        for _ in range(5):
            assert await _served_by(url) == "b/model-b=success"
    assert a.stats.total_requests == seen == 3
    applied = await _metric(r2, 'llmproxy_state_events_total{direction="applied"}')
    assert applied is not None and applied >= 1


async def test_killing_redis_mid_run_costs_clients_nothing_and_its_return_restores_sharing(
    fakes: FakeFactory,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
) -> None:
    a, b, c = await fakes("a"), await fakes("b"), await fakes("c")
    models = two_deployments() + (
        "  fast:\n    deployments:\n      - {vendor: c, model: model-c}\n"
        "      - {vendor: b, model: model-b}\n"
    )
    config = tmp_path / "proxy.yaml"
    config.write_text(_config({"a": a, "b": b, "c": c}, models, redis_server))
    r1, r2 = await _replicas(config, 2, processes)
    up = "llmproxy_state_backend_up"
    assert await _metric(r1, up) == 1 and await _metric(r2, up) == 1

    errors: list[BaseException] = []
    served = 0
    stop = asyncio.Event()

    async def traffic(url: str) -> None:
        nonlocal served
        async with _client(url) as client:
            for _ in range(2000):  # bounded; stopped by the event long before
                if stop.is_set():
                    return
                try:
                    await client.chat.completions.create(model="smart", messages=MESSAGES)  # type: ignore[arg-type]
                    served += 1
                except openai.APIError as exc:
                    errors.append(exc)
                await asyncio.sleep(0.005)

    loops = [asyncio.create_task(traffic(url)) for url in (r1, r2, r1, r2)]
    await asyncio.sleep(0.3)
    redis_server.kill()
    await _until(r1, up, 0, 5)
    await _until(r2, up, 0, 5)
    await asyncio.sleep(0.3)  # keep serving on local state for a while
    stop.set()
    await asyncio.gather(*loops)
    assert errors == [] and served > 20, (served, errors[:3])

    # During the outage replica 1 gives up on `a`: replica 2 cannot hear it yet.
    a.set_fault(Fault.preset("server_error"))
    for _ in range(3):
        assert (await _served_by(r1)).endswith("b/model-b=success")
    breaker_a = 'llmproxy_breaker_state{deployment="a/model-a"}'
    assert await _metric(r1, breaker_a) == OPEN
    assert await _metric(r2, breaker_a) == 0

    redis_server.start()  # empty (--save ''): reconciliation re-publishes what replicas hold
    await _until(r1, up, 1, 15)
    await _until(r2, up, 1, 15)
    await _until(r2, breaker_a, OPEN, 3)

    # Sharing is live again, in the other direction too.
    c.set_fault(Fault.preset("server_error"))
    for _ in range(3):
        assert (await _served_by(r2, "fast")).endswith("b/model-b=success")
    await _until(r1, 'llmproxy_breaker_state{deployment="c/model-c"}', OPEN, 1.0)
    seen = c.stats.total_requests
    assert await _served_by(r1, "fast") == "b/model-b=success"
    assert c.stats.total_requests == seen


async def test_workers_need_the_shared_backend(
    fakes: FakeFactory, tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    a, b = await fakes("a"), await fakes("b")
    config = tmp_path / "proxy.yaml"
    config.write_text(build_config({"a": a, "b": b}, two_deployments()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(free_port()),
        "--workers",
        "2",
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "--workers 2 needs the shared state backend" in err.decode()
    assert "backend: redis" in err.decode()


async def test_workers_share_one_port_and_stop_together(
    fakes: FakeFactory,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
) -> None:
    a, b = await fakes("a"), await fakes("b")
    config = tmp_path / "proxy.yaml"
    config.write_text(_config({"a": a, "b": b}, two_deployments(), redis_server))
    proc, url = await _start(config, "--workers", "2", "--no-access-log")
    processes.append(proc)
    # Both workers announce themselves to the shared backend.
    for _ in range(100):
        if redis_server.command("ZCARD", "llmproxy:replicas").strip() == ":2":
            break
        await asyncio.sleep(0.05)
    assert redis_server.command("ZCARD", "llmproxy:replicas").strip() == ":2"
    results = await asyncio.gather(*(_served_by(url) for _ in range(20)))
    assert results == ["a/model-a=success"] * 20
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    await asyncio.sleep(0.2)
    assert redis_server.command("ZCARD", "llmproxy:replicas").strip() == ":0"


PROBE_S = 0.2
PROBES = (
    f"health_check: {{interval_s: {PROBE_S}, timeout_s: 0.5, jitter: 0, "
    "unhealthy_threshold: 2, healthy_threshold: 2}\n"
)


async def test_one_replica_probes_each_deployment_and_its_verdict_reaches_all(
    fakes: FakeFactory,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
) -> None:
    a, b = await fakes("a"), await fakes("b")
    config = tmp_path / "proxy.yaml"
    config.write_text(
        build_config(
            {"a": a, "b": b},
            two_deployments(),
            PROBES + f"state: {{backend: redis, url: '{redis_server.url}'}}\n",
        )
    )
    urls = await _replicas(config, 3, processes)
    await asyncio.sleep(0.5)  # every replica's first lease request is in
    before, started = a.stats.model_list_requests, time.monotonic()
    await asyncio.sleep(2.0)
    probes = a.stats.model_list_requests - before
    elapsed = time.monotonic() - started
    # One prober at 5 probes/s: about 10 (three would make about 30).
    assert 1 <= probes <= elapsed / PROBE_S + 3, probes
    # Exactly one replica says it probes `a`; the others name a peer.
    probers = []
    for url in urls:
        async with aiohttp.ClientSession() as s, s.get(f"{url}/admin/status") as r:
            deps = (await r.json())["deployments"]
            probers.append(deps["a/model-a"]["health_check"]["prober"])
    assert sorted(probers) == ["a peer replica", "a peer replica", "this replica"], probers

    healthy_a = 'llmproxy_deployment_healthy{deployment="a/model-a"}'
    await a.apply_fault(Fault.preset("refuse"))
    for url in urls:  # the holder's verdict, applied by every replica
        await _until(url, healthy_a, 0, 5)
    for url in urls:
        assert await _served_by(url) == "b/model-b=success"
    await a.unrefuse()
    for url in urls:
        await _until(url, healthy_a, 1, 5)

    # The holder goes away: another replica takes the lease over and probes on.
    holder = probers.index("this replica")
    processes[holder].terminate()
    await asyncio.wait_for(processes[holder].wait(), 30)
    seen = a.stats.model_list_requests
    await asyncio.sleep(1.0)
    assert a.stats.model_list_requests > seen
