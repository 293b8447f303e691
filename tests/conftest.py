"""Shared fixtures: fake vendors and the proxy, both on real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from proxy.app import GATEWAY, create_app, listen
from proxy.config import Config, load_config
from proxy.fakes import FAKES, FakeOpenAI, FakeVendor
from proxy.gateway import Gateway
from proxy.listener import Listener


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningProxy:
    config: Config
    gateway: Gateway
    listener: Listener
    port: int
    # Every SDK client handed out is kept until teardown and closed there, on the test's
    # loop. A client dropped mid-test is garbage-collected at a random moment: the GC
    # closes its sockets, then the SDK's __del__ schedules a close of its pool, whose
    # transports still hold the old fd numbers and remove whatever reader has reused them
    # meanwhile (seen: a fake vendor's accepted connections, never read, so 504s).
    sdk_clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at the proxy, with its own retries off (we test ours)."""
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        kw.setdefault("api_key", "client-key")
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", **kw)
        self.sdk_clients.append(client)  # see sdk_clients
        return client

    def anthropic_client(self, **kw: Any) -> anthropic.AsyncAnthropic:
        """The official Anthropic SDK pointed at the proxy (as Claude Code is), retries off."""
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        client = anthropic.AsyncAnthropic(base_url=self.url, api_key="client-key", **kw)
        self.sdk_clients.append(client)  # see sdk_clients
        return client

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/metrics") as r:
            return await r.text()


FakeFactory = Callable[..., Awaitable[Any]]
ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def fakes() -> AsyncIterator[FakeFactory]:
    started: list[FakeVendor] = []

    async def make(name: str = "fake", vendor: str = "openai", **kw: Any) -> Any:
        """A started fake vendor of type `vendor` (openai, anthropic, gemini)."""
        fake = FAKES[vendor](name, **kw)
        await fake.start("127.0.0.1", 0)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.stop()


def vendor_yaml(name: str, fake: FakeVendor, key: str | None = None) -> str:
    return (
        f"  {name}: {{type: {fake.vendor_type}, base_url: '{fake.base_url}', "
        f"api_key: '{key or 'key-' + name}'}}\n"
    )


def build_config(
    vendors: Mapping[str, FakeVendor],
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
async def proxies(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProxyFactory]:
    running: list[RunningProxy] = []

    async def make(config_text: str) -> RunningProxy:
        # A real file, so that reloads (SIGHUP, POST /admin/reload) re-read it.
        path = tmp_path_factory.mktemp("proxy") / "proxy.yaml"
        path.write_text(config_text)
        config = load_config(path, env={})
        app = create_app(config)
        port = free_port()
        listener = await listen(app, "127.0.0.1", port, grace_s=2)
        proxy = RunningProxy(config, app[GATEWAY], listener, port)
        running.append(proxy)
        return proxy

    yield make
    for p in running:
        for client in p.sdk_clients:
            await client.close()
        await p.listener.close(2)


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
