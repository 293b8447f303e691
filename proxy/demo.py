"""`llm-proxy demo`: the proxy in front of four simulated vendors, breaking them live.

Everything runs in this process on 127.0.0.1 with no network and no keys: three fake
OpenAI-compatible vendors and a fake Anthropic, the proxy on the demo config, and a client
that sends traffic while the demo breaks the primary vendor (quota exhausted), then the
secondary (5xx until its breaker opens), then heals it, and finally overloads Anthropic
(529) under a cross-vendor group that OpenAI- and Anthropic-SDK clients both use. Each
request prints who served it and which attempts it took. Afterwards the proxy keeps
serving so you can try it yourself.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from proxy.app import GATEWAY, create_app
from proxy.config import ConfigError, load_config
from proxy.fakes import FakeAnthropic, FakeOpenAI, FakeVendor, Fault
from proxy.gateway import Gateway

__all__ = ["run_demo"]

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"

_BOLD, _DIM, _RED, _GREEN, _YELLOW, _RESET = (
    "\033[1m",
    "\033[2m",
    "\033[31m",
    "\033[32m",
    "\033[33m",
    "\033[0m",
)


def _c(color: str, text: str) -> str:
    return f"{color}{text}{_RESET}" if os.isatty(1) and not os.environ.get("NO_COLOR") else text


class _Show:
    def __init__(self, session: aiohttp.ClientSession, url: str, gateway: Gateway) -> None:
        self.session = session
        self.url = url
        self.gateway = gateway
        self.n = 0
        self.errors = 0
        self.served: Counter[str] = Counter()
        self.failovers = 0

    async def request(self, stream: bool, group: str = "smart", anthropic: bool = False) -> None:
        self.n += 1
        body: dict[str, object] = {
            "model": group,
            "messages": [{"role": "user", "content": f"demo request {self.n}"}],
        }
        if anthropic:
            body["max_tokens"] = 64
        if stream:
            body["stream"] = True
        path, end = (
            ("/v1/messages", b"message_stop") if anthropic else ("/v1/chat/completions", b"[DONE]")
        )
        started = time.perf_counter()
        async with self.session.post(
            f"{self.url}{path}",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        ) as resp:
            payload = await resp.read()
            ms = (time.perf_counter() - started) * 1000
            attempts = resp.headers.get("x-proxy-attempts", "")
            kind = f"{'messages' if anthropic else 'chat'} {'stream' if stream else 'json'}".ljust(
                15
            )
            if resp.status != 200 or (stream and end not in payload):
                self.errors += 1
                print(
                    f"  #{self.n:3} {kind}  {_c(_RED, f'ERROR {resp.status}')}  attempts: {attempts}  {ms:6.1f} ms"
                )
                return
            served = resp.headers["x-proxy-deployment"]
            self.served[served] += 1
            tried = attempts.split(", ")
            self.failovers += len(tried) - 1
            path = " -> ".join(_c(_GREEN if t.endswith("=success") else _YELLOW, t) for t in tried)
            print(
                f"  #{self.n:3} {kind}  served by {_c(_BOLD, f'{served:28}')} {ms:6.1f} ms   {path}"
            )

    async def run(self, count: int, group: str = "smart", both_apis: bool = False) -> None:
        for i in range(count):
            anthropic = both_apis and i % 2 == 1
            await self.request(stream=self.n % 2 == 1, group=group, anthropic=anthropic)
            await asyncio.sleep(0.08)

    def states(self, group: str = "smart") -> None:
        now = time.monotonic()
        print(_c(_DIM, f"  group {group:23} breaker     cooldown"))
        for dep, _ in self.gateway.groups[group].members:
            left = dep.cooldown_left(now)
            cooling = f"{left:7.0f} s ({dep.cooldown_reason})" if left else "      -"
            breaker = dep.breaker.state.label
            color = _GREEN if breaker == "closed" and not left else _RED
            print(f"  {dep.id:28}  {_c(color, f'{breaker:10}')}  {cooling}")


def _banner(text: str) -> None:
    print(f"\n{_c(_BOLD, '>>> ' + text)}")


async def run_demo(port: int = 4000, requests: int = 40, serve: bool = True) -> int:
    vendors: dict[str, FakeVendor] = {
        name: FakeOpenAI(name, chunks=6, chunk_delay_s=0.002)
        for name in ("primary", "secondary", "tertiary")
    }
    vendors["anthropic"] = FakeAnthropic("anthropic", chunks=6, chunk_delay_s=0.002)
    for fake in vendors.values():
        await fake.start("127.0.0.1", 0)
    env = dict(os.environ)
    env.update({f"DEMO_{name.upper()}_PORT": str(f.port) for name, f in vendors.items()})
    env["DEMO_PROXY_PORT"] = str(port)
    try:
        config = load_config(DEMO_CONFIG, env=env)
    except ConfigError as exc:
        print(f"llm-proxy demo: {exc}")
        return 2
    app = create_app(config)
    gateway = app[GATEWAY]
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.server.host, port).start()
    except OSError as exc:
        print(
            f"llm-proxy demo: cannot listen on {config.server.host}:{port} ({exc.strerror}); "
            "pass --port with a free port"
        )
        await runner.cleanup()
        return 2
    url = f"http://{config.server.host}:{port}"
    print(
        _c(
            _BOLD,
            "llm-proxy demo: four simulated vendors behind one endpoint, all on this machine",
        )
    )
    for name, fake in vendors.items():
        print(f"  vendor {name:10} {fake.base_url}")
    print(f"  proxy             {url}/v1   model groups: {', '.join(config.models)}")
    quarter = max(1, requests // 5)
    async with aiohttp.ClientSession() as session:
        show = _Show(session, url, gateway)
        _banner('All vendors healthy: group "smart" is priority primary -> secondary -> tertiary')
        await show.run(quarter)
        _banner("The primary's quota runs out: it now answers 429 insufficient_quota")
        vendors["primary"].set_fault(Fault.preset("insufficient_quota"))
        await show.run(quarter)
        print("  The primary is skipped for its quota cooldown; nobody saw an error.")
        show.states()
        _banner("The secondary starts failing with 500s: its breaker opens after 3 failures")
        vendors["secondary"].set_fault(Fault.preset("server_error"))
        await show.run(quarter)
        show.states()
        _banner(
            "The secondary recovers: after reset_timeout_s (5 s) one trial request closes its breaker"
        )
        vendors["secondary"].clear_fault()
        await asyncio.sleep(config.breaker.reset_timeout_s + 0.2)
        await show.run(quarter)
        show.states()
        _banner(
            'Cross-vendor group "claude": Anthropic first, OpenAI second; OpenAI- and '
            "Anthropic-SDK clients (/v1/messages) alike"
        )
        last = max(4, requests - 4 * quarter)
        await show.run(2, group="claude", both_apis=True)
        print("  Anthropic is overloaded now (529 overloaded_error): requests fail over to OpenAI,")
        print("  translated both ways, for both kinds of client.")
        vendors["anthropic"].set_fault(Fault.preset("overloaded"))
        await show.run(last - 2, group="claude", both_apis=True)
        show.states("claude")
        served = ", ".join(f"{dep} {n}" for dep, n in show.served.most_common())
        color = _GREEN if show.errors == 0 else _RED
        print(
            f"\n{_c(_BOLD, 'Summary')}: {show.n} requests, {_c(color, f'{show.errors} client-visible errors')}, "
            f"{show.failovers} failovers; served by: {served}"
        )
    if serve:
        for fake in vendors.values():
            fake.clear_fault()
        print(
            f"\nThe proxy keeps serving at {url} (Ctrl-C to stop). Faults are cleared, but the primary stays"
        )
        print("in its quota cooldown, so group smart is served by the secondary. Try:")
        print(f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\")
        print('       -d \'{"model": "smart", "messages": [{"role": "user", "content": "hi"}]}\'')
        print(f"  curl -s {url}/metrics | grep ^llmproxy_failovers")
        print(
            f"  python -c \"import openai; c = openai.OpenAI(base_url='{url}/v1', api_key='x'); "
            "print(c.chat.completions.create(model='fast', messages=[{'role': 'user', 'content': 'hi'}]))\""
        )
        try:
            await asyncio.Event().wait()
        finally:
            await _stop(runner, vendors)
    else:
        await _stop(runner, vendors)
    return 0 if show.errors == 0 else 1


async def _stop(runner: web.AppRunner, vendors: dict[str, FakeVendor]) -> None:
    await runner.cleanup()
    for fake in vendors.values():
        await fake.stop()
