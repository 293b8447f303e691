"""Hot reload (validate first, keep state, finish in-flight on the old config) and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest

from proxy.config import parse_config
from proxy.fakes import Fault
from proxy.health.breaker import BreakerState
from tests.conftest import FakeFactory, ProxyFactory, build_config, free_port, two_deployments
from tests.processes import run_cli, spawn_serve, wait_ready

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "hi"}]


async def test_reload_keeps_state_and_in_flight_streams_finish_on_the_old_config(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, c = await fakes("a", chunk_delay_s=0.05), await fakes("b"), await fakes("c")
    proxy = await proxies(
        build_config({"a": a, "b": b}, two_deployments(), "breaker: {fail_max: 1}\n")
    )
    gw = proxy.gateway
    client = proxy.client()
    b.set_fault(Fault.preset("server_error"))
    gw.deployments["b/model-b"].breaker.record(
        gw.deployments["b/model-b"].breaker.acquire(0), success=False
    )
    assert gw.deployments["b/model-b"].breaker.state is BreakerState.OPEN
    old_adapter = gw.adapters["a"]

    stream = await client.chat.completions.create(model="smart", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    first = await stream.__anext__()
    # New generation: vendor `a` now points at another server, a new group appears.
    text = build_config(
        {"a": c, "b": b},
        two_deployments() + "  extra:\n    deployments:\n      - {vendor: b, model: model-b}\n",
        "breaker: {fail_max: 1}\n",
    )
    await gw.reload(parse_config(text, env={}))
    rest = [chunk async for chunk in stream]
    assert [first, *rest][-1].choices[0].finish_reason == "stop"
    text_out = "".join(ch.choices[0].delta.content or "" for ch in [first, *rest] if ch.choices)
    assert text_out == "".join(a.pieces)  # the whole stream came from the old vendor
    # Surviving deployments keep their state; new requests use the new vendor.
    assert gw.deployments["b/model-b"].breaker.state is BreakerState.OPEN
    raw = await client.chat.completions.with_raw_response.create(model="smart", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content.startswith("Hello from c")  # type: ignore[union-attr]
    assert [m.id for m in (await client.models.list()).data] == ["smart", "extra"]
    await asyncio.wait_for(gw.router.drained(), 5)
    for _ in range(50):  # the replaced vendor's pool is closed once its last request ended
        if old_adapter._pool is None:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.05)
    assert old_adapter._pool is None  # type: ignore[attr-defined]


async def _start(config: Path, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    """`llm-proxy serve` on CONFIG, ready; its log goes to serve.log beside the config."""
    server = await spawn_serve(config, free_port(), *extra, log_path=config.parent / "serve.log")
    await wait_ready(server)
    return server.proc, server.url


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()


async def _models(url: str) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/models") as r:
        return [m["id"] for m in (await r.json())["data"]]


async def _metric(url: str, line_start: str) -> float | None:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return None


async def test_sighup_reloads_a_valid_file_and_keeps_the_old_config_on_a_broken_one(
    fakes: FakeFactory, tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    a, b = await fakes("a"), await fakes("b")
    config = tmp_path / "proxy.yaml"
    config.write_text(build_config({"a": a, "b": b}, two_deployments()))
    proc, url = await _start(config)
    processes.append(proc)
    assert await _models(url) == ["smart"]

    config.write_text(
        build_config(
            {"a": a, "b": b},
            two_deployments() + "  fast:\n    deployments:\n      - {vendor: b, model: model-b}\n",
        )
    )
    proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        if await _models(url) == ["smart", "fast"]:
            break
        await asyncio.sleep(0.1)
    assert await _models(url) == ["smart", "fast"]
    assert await _metric(url, 'llmproxy_config_reloads_total{result="success"}') == 1

    config.write_text(
        "vendors: {a: {type: openai, base_url: http://x/v1}}\nmodels:\n  smart: {deployments: []}\n"
    )
    proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        if await _metric(url, 'llmproxy_config_reloads_total{result="failure"}') == 1:
            break
        await asyncio.sleep(0.1)
    assert await _metric(url, 'llmproxy_config_reloads_total{result="failure"}') == 1
    assert await _models(url) == ["smart", "fast"]  # still serving the last good config
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
    assert (await client.chat.completions.create(model="fast", messages=MESSAGES)).choices  # type: ignore[arg-type]
    await client.close()  # on this loop, not by the GC later (see conftest's sdk_clients)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    log = (config.parent / "serve.log").read_text()
    assert "models.smart.deployments: must list at least one deployment" in log


async def test_sigterm_with_20_open_streams_lets_all_finish_and_readiness_fails_at_once(
    fakes: FakeFactory, tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    a, b = await fakes("a", chunk_delay_s=0.1, chunks=10), await fakes("b")
    config = tmp_path / "proxy.yaml"
    config.write_text(build_config({"a": a, "b": b}, two_deployments()))
    proc, url = await _start(config, "--drain-delay-s", "0.5", "--shutdown-grace-s", "20")
    processes.append(proc)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
    started = asyncio.Event()
    begun = 0

    async def one() -> str:
        nonlocal begun
        stream = await client.chat.completions.create(model="smart", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        parts = []
        async for chunk in stream:
            if not parts:
                begun += 1
                if begun == 20:
                    started.set()
            parts.append(chunk)
        assert parts[-1].choices[0].finish_reason == "stop"
        return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)

    tasks = [asyncio.create_task(one()) for _ in range(20)]
    await asyncio.wait_for(started.wait(), 10)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as s, s.get(f"{url}/health/ready") as r:
        assert r.status == 503
    texts = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert texts == ["".join(a.pieces)] * 20
    await client.close()
    assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_reload_command_and_admin_endpoint(
    fakes: FakeFactory, tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    a, b = await fakes("a"), await fakes("b")
    config = tmp_path / "proxy.yaml"
    config.write_text(build_config({"a": a, "b": b}, two_deployments()))
    proc, url = await _start(config)
    processes.append(proc)
    config.write_text(
        build_config(
            {"a": a, "b": b},
            two_deployments() + "  fast:\n    deployments:\n      - {vendor: b, model: model-b}\n",
        )
    )
    code, out, err = await run_cli("reload", "--url", url)
    assert code == 0, err
    assert out.startswith("reloaded: config version ")
    assert await _models(url) == ["smart", "fast"]

    config.write_text(
        build_config({"a": a, "b": b}, "  smart:\n    strategy: random\n    deployments: []\n")
    )
    code, out, err = await run_cli("reload", "--url", url)
    assert code == 1
    assert "reload failed (400): The new config was rejected" in err
    assert "models.smart.strategy: must be one of" in err
    assert await _models(url) == ["smart", "fast"]
    code, _, err = await run_cli("reload", "--url", "http://127.0.0.1:9")  # nothing listens there
    assert code == 1 and "cannot reach the proxy" in err
