"""Shared fixtures: fake vendors and the proxy, both on real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from proxy.app import GATEWAY, create_app
from proxy.config import Config, parse_config
from proxy.fakes import FakeOpenAI
from proxy.gateway import Gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningProxy:
    config: Config
    gateway: Gateway
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at the proxy, with its own retries off (we test ours)."""
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="client-key", **kw)

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/metrics") as r:
            return await r.text()


FakeFactory = Callable[..., Awaitable[FakeOpenAI]]
ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def fakes() -> AsyncIterator[FakeFactory]:
    started: list[FakeOpenAI] = []

    async def make(name: str = "fake", **kw: Any) -> FakeOpenAI:
        fake = FakeOpenAI(name, **kw)
        await fake.start("127.0.0.1", 0)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.stop()


def vendor_yaml(name: str, fake: FakeOpenAI, key: str | None = None) -> str:
    return f"  {name}: {{type: openai, base_url: '{fake.base_url}', api_key: '{key or 'key-' + name}'}}\n"


def build_config(
    vendors: dict[str, FakeOpenAI],
    models: str,
    extra: str = "",
) -> str:
    """YAML text for a config whose vendors are the given fakes; `models` is the models: body."""
    text = "server: {host: 127.0.0.1, port: 0, request_timeout_s: 20}\n"
    text += "timeouts: {connect_s: 2, first_byte_s: 5, attempt_s: 10, stream_idle_s: 5}\n"
    text += "vendors:\n" + "".join(vendor_yaml(n, f) for n, f in vendors.items())
    text += "models:\n" + models
    return text + extra


def two_deployments(strategy: str = "priority") -> str:
    return (
        "  smart:\n"
        f"    strategy: {strategy}\n"
        "    deployments:\n"
        "      - {vendor: a, model: model-a}\n"
        "      - {vendor: b, model: model-b}\n"
    )


@pytest.fixture
async def proxies() -> AsyncIterator[ProxyFactory]:
    running: list[RunningProxy] = []

    async def make(config_text: str) -> RunningProxy:
        config = parse_config(config_text, file="test.yaml", env={})
        app = create_app(config)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        proxy = RunningProxy(config, app[GATEWAY], runner, port)
        running.append(proxy)
        return proxy

    yield make
    for p in running:
        await p.runner.cleanup()


@pytest.fixture
async def pair(
    fakes: FakeFactory, proxies: ProxyFactory
) -> tuple[FakeOpenAI, FakeOpenAI, RunningProxy]:
    """Two fake vendors `a` (primary) and `b`, and a proxy with group `smart` = [a, b] (priority)."""
    a = await fakes("a")
    b = await fakes("b")
    proxy = await proxies(
        build_config(
            {"a": a, "b": b}, two_deployments(), "breaker: {fail_max: 3, reset_timeout_s: 1}\n"
        )
    )
    return a, b, proxy


# A real redis-server per test (shared-state tests); at the bottom: it imports free_port.
from tests.redis_server import persistent_redis, redis_server  # noqa: E402, F401
