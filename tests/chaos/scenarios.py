"""Named chaos scenarios and the runner that measures them (shared by tests and bench).

A scenario starts two fake OpenAI vendors, ``a`` (primary, the one that misbehaves) and
``b`` (healthy backup; absent in the "alone" scenarios), and the real proxy app on a real
socket. It sends a healthy baseline, then injects its fault and sends the same traffic
again, measuring what a client sees and what the vendors saw:

- ``errors``: client-visible failures (non-2xx, broken connection, a stream that did not
  end with ``[DONE]``, a JSON answer without choices);
- ``added_p50_ms`` / ``added_p99_ms``: successful-request latency over the baseline's;
- ``after_detection``: requests the failing vendor received while the proxy had already
  marked it down (breaker open or cooling down), sampled every few milliseconds;
- ``tokens_wasted``: tokens the vendors billed (completed answers plus streams cut short)
  that no client received.

Time is compressed (sub-second timeouts, breaker resets and flaps) so that the whole
fast set runs in ``make test`` in well under a minute; ``bench/chaos.py`` runs the same
scenarios with more requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from proxy.app import GATEWAY, create_app, listen
from proxy.config import parse_config
from proxy.fakes import FakeOpenAI, Fault
from proxy.gateway import Gateway
from proxy.listener import Listener
from tests.conftest import build_config, free_port
from tests.redis_server import RedisServer

__all__ = ["SCENARIOS", "Scenario", "ScenarioResult", "redis_killed", "run_scenario"]

#: Compressed timeouts: a black-holed attempt costs a second, not thirty.
TIMEOUTS = "timeouts: {connect_s: 1, first_byte_s: 1, attempt_s: 3, stream_idle_s: 1}\n"
BREAKER = "breaker: {fail_max: 3, reset_timeout_s: 1}\n"

#: Client errors allowed when the vendor fails after bytes reached the client (no failover
#: is possible then): the streams in flight when the first one broke, plus those until the
#: breaker (fail_max 3) opens, at the default concurrency of 4.
_BOUND_RELAYED = 3 + 4

#: Budgets that only the request's deadline bounds: a dripping body must be cut at the
#: attempt's share of it, not at attempt_s.
_GENEROUS = "timeouts: {connect_s: 1, first_byte_s: 30, attempt_s: 60, stream_idle_s: 30}\n"
_GARBAGE = b"{not json"

#: A short "unreachable" cooldown, so a flapping vendor is tried again while it flaps.
_SHORT = "cooldowns: {unreachable_s: 0.3}\n"

Inject = Callable[["Env"], Awaitable[None]]


@dataclass
class Env:
    """What an injector may touch while the scenario runs."""

    a: FakeOpenAI
    b: FakeOpenAI | None
    gateway: Gateway
    background: list[asyncio.Task[None]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """One hostile day. ``max_errors`` None means "zero" (a healthy backup exists)."""

    name: str
    title: str
    inject: Inject
    stream: bool = False
    backup: bool = True
    #: An upper bound on client-visible errors where zero is impossible (no backup, or
    #: bytes already relayed to the client when the vendor failed).
    max_errors: int | None = None
    #: Vendor ``a``'s base_url, if not its fake's (the unresolvable host).
    a_url: str | None = None
    #: Extra config appended (cooldowns, state backend).
    extra_config: str = ""
    #: The `timeouts:` section and the request deadline (server.request_timeout_s).
    timeouts: str = TIMEOUTS
    request_timeout_s: float = 20.0
    #: Requests in the fault phase.
    requests: int = 40
    #: Pause between a worker's requests, so time-based faults (flaps, a storm that ends)
    #: play out during the traffic rather than after it.
    pace_s: float = 0.0


@dataclass
class ScenarioResult:
    name: str
    requests: int
    errors: int
    error_samples: list[str]
    base_p50_ms: float
    base_p99_ms: float
    p50_ms: float
    p99_ms: float
    after_detection: int
    a_requests: int
    tokens_wasted: int
    seconds: float

    @property
    def added_p50_ms(self) -> float:
        return self.p50_ms - self.base_p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.p99_ms - self.base_p99_ms

    def line(self) -> str:
        return (
            f"chaos {self.name}: {self.errors}/{self.requests} client errors, added latency "
            f"p50 {self.added_p50_ms:+.0f} ms p99 {self.added_p99_ms:+.0f} ms, "
            f"{self.after_detection} requests to the failing vendor after detection "
            f"(of {self.a_requests}), {self.tokens_wasted} tokens wasted"
        )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------------------- injectors


def set_fault(fault: Fault) -> Inject:
    async def inject(env: Env) -> None:
        await env.a.apply_fault(fault)

    return inject


async def _flap(env: Env) -> None:
    """Down (refusing connections) and up again every 0.4 s: a vendor flapping, compressed."""

    async def loop() -> None:
        for i in range(200):
            await env.a.apply_fault(Fault.preset("refuse") if i % 2 == 0 else None)
            await asyncio.sleep(0.4)

    env.background.append(asyncio.create_task(loop()))


async def _storm_then_recover(env: Env) -> None:
    """429s with retry-after 1 s for 1.5 s, then healthy: the primary must be used again."""
    await env.a.apply_fault(Fault.preset("rate_limited", retry_after_s=1.0))

    async def recover() -> None:
        await asyncio.sleep(1.5)
        env.a.clear_fault()
        env.extra["recovered_at"] = env.a.stats.total_requests

    env.background.append(asyncio.create_task(recover()))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("black_hole", "accepts TCP, never answers", set_fault(Fault.preset("black_hole"))),
        Scenario(
            "black_hole_alone",
            "black hole, no backup: clean 5xx within the timeout",
            set_fault(Fault.preset("black_hole")),
            backup=False,
            max_errors=12,  # every request, each a clean 5xx after the first-byte timeout
            requests=12,
        ),
        Scenario("slow_drip_json", "a byte every 0.2 s (JSON)", set_fault(Fault(drip_s=0.2))),
        Scenario(
            "slow_drip_stream",
            "a byte every 0.2 s (stream)",
            set_fault(Fault(drip_s=0.2)),
            stream=True,
        ),
        Scenario(
            "flapping", "refusing / serving every 0.4 s", _flap, pace_s=0.2, extra_config=_SHORT
        ),
        Scenario(
            "flapping_stream",
            "refusing / serving every 0.4 s (stream)",
            _flap,
            stream=True,
            pace_s=0.2,
            extra_config=_SHORT,
        ),
        Scenario(
            "midstream_cut",
            "TCP cut after 2 events (bytes already relayed)",
            set_fault(Fault.preset("drop_midstream")),
            stream=True,
            max_errors=_BOUND_RELAYED,
        ),
        Scenario(
            "truncated_sse",
            "stream ends cleanly after 2 events, no [DONE]",
            set_fault(Fault.preset("truncated_stream")),
            stream=True,
            max_errors=_BOUND_RELAYED,
        ),
        Scenario(
            "rate_limit_storm",
            "429 + retry-after 1 s for 1.5 s, then recovery",
            _storm_then_recover,
            pace_s=0.3,
        ),
        Scenario(
            "quota_exhausted", "insufficient_quota", set_fault(Fault.preset("insufficient_quota"))
        ),
        Scenario(
            "random_500s", "50% random 500s", set_fault(Fault.preset("server_error", rate=0.5))
        ),
        Scenario(
            "random_500s_stream",
            "50% random 500s (stream)",
            set_fault(Fault.preset("server_error", rate=0.5)),
            stream=True,
        ),
        Scenario(
            "unresolvable_host",
            "vendor host under .invalid (DNS fails)",
            set_fault(Fault()),
            a_url="http://vendor-a.invalid/v1",
        ),
        Scenario(
            "invalid_json", "200 with a cut-off JSON body", set_fault(Fault.preset("invalid_json"))
        ),
        Scenario(
            "drip_after_head",
            "head at once, then a byte a second (JSON; deadline 4 s, attempt_s 60)",
            set_fault(Fault(drip_s=1.0)),
            timeouts=_GENEROUS,
            request_timeout_s=4.0,
            requests=12,
        ),
        Scenario(
            "garbage_first_event",
            "200 stream whose first event is not JSON",
            set_fault(Fault(error_event_after_chunks=0, body=_GARBAGE)),
            stream=True,
        ),
        Scenario(
            "garbage_later_event",
            "a stream event that is not JSON after 2 good ones",
            set_fault(Fault(error_event_after_chunks=2, body=_GARBAGE)),
            stream=True,
            max_errors=_BOUND_RELAYED,
        ),
    )
}


def redis_killed(redis: RedisServer) -> Scenario:
    """Shared state on ``redis``, which is SIGKILLed as the primary starts failing half its
    requests: breaker changes can no longer be published, and clients must not notice."""

    async def inject(env: Env) -> None:
        await env.a.apply_fault(Fault.preset("server_error", rate=0.5))
        await asyncio.to_thread(redis.kill)

    return Scenario(
        "redis_killed",
        "Redis (shared state) SIGKILLed, primary 50% 500s",
        inject,
        extra_config=f"state: {{backend: redis, url: '{redis.url}'}}\n",
        pace_s=0.02,
    )


# ---------------------------------------------------------------------------- runner


@contextlib.asynccontextmanager
async def _running(scenario: Scenario) -> AsyncIterator[tuple[Env, str]]:
    a = FakeOpenAI("a", seed=1)
    b = FakeOpenAI("b", seed=2) if scenario.backup else None
    await a.start()
    if b is not None:
        await b.start()
    listener: Listener | None = None
    try:
        vendors = {"a": a} if b is None else {"a": a, "b": b}
        deps = "      - {vendor: a, model: model-a}\n" + (
            "      - {vendor: b, model: model-b}\n" if b is not None else ""
        )
        text = build_config(
            vendors, f"  smart:\n    strategy: priority\n    deployments:\n{deps}", BREAKER
        )
        text = text.replace(
            "timeouts: {connect_s: 2, first_byte_s: 5, attempt_s: 10, stream_idle_s: 5}\n",
            scenario.timeouts,
        ).replace("request_timeout_s: 20}", f"request_timeout_s: {scenario.request_timeout_s}}}")
        if scenario.a_url is not None:
            text = text.replace(a.base_url, scenario.a_url)
        config = parse_config(text + scenario.extra_config, env={})
        app = create_app(config)
        port = free_port()
        listener = await listen(app, "127.0.0.1", port, grace_s=1)
        yield Env(a, b, app[GATEWAY]), f"http://127.0.0.1:{port}"
    finally:
        if listener is not None:
            await listener.close(1)
        await a.stop()
        if b is not None:
            await b.stop()


async def _one(
    session: aiohttp.ClientSession, url: str, stream: bool
) -> tuple[float, str | None, int]:
    """One chat request: (latency, error or None, tokens delivered)."""
    body: dict[str, Any] = {"model": "smart", "messages": [{"role": "user", "content": "chaos"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    started = time.monotonic()
    try:
        async with session.post(f"{url}/v1/chat/completions", data=orjson.dumps(body)) as r:
            data = await r.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return time.monotonic() - started, f"{type(exc).__name__}: {exc}", 0
    latency = time.monotonic() - started
    if r.status != 200:
        return latency, f"HTTP {r.status}: {data[:200]!r}", 0
    if stream:
        if not data.rstrip().endswith(b"data: [DONE]"):
            return latency, f"stream without [DONE]: {data[-200:]!r}", 0
        usage = [orjson.loads(line[6:]).get("usage") for line in data.splitlines()
                 if line.startswith(b"data: {")]  # fmt: skip
        last = next((u for u in reversed(usage) if u), None)
        return latency, None, int(last["total_tokens"]) if last else 0
    doc = orjson.loads(data)
    if not doc.get("choices"):
        return latency, f"no choices: {data[:200]!r}", 0
    return latency, None, int(doc.get("usage", {}).get("total_tokens", 0))


async def _phase(
    url: str, stream: bool, requests: int, concurrency: int, pace_s: float
) -> list[tuple[float, str | None, int]]:
    results: list[tuple[float, str | None, int]] = []
    queue = iter(range(requests))
    timeout = aiohttp.ClientTimeout(total=20)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

        async def worker() -> None:
            for _ in queue:
                results.append(await _one(session, url, stream))
                if pace_s:
                    await asyncio.sleep(pace_s)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def _watch(env: Env, counter: list[int]) -> None:
    """Count requests reaching ``a`` while the proxy has it marked down (at arrival)."""
    dep = env.gateway.deployments["a/model-a"]

    def arrived() -> None:
        if dep.down(time.monotonic()):
            counter[0] += 1

    env.a.on_request = arrived


async def run_scenario(
    scenario: Scenario, *, requests: int | None = None, concurrency: int = 4, baseline: int = 20
) -> ScenarioResult:
    """Run ``scenario`` once: ``requests`` (default: the scenario's) after a healthy baseline."""
    requests = scenario.requests if requests is None else requests
    started = time.monotonic()
    async with _running(scenario) as (env, url):
        base = (
            await _phase(url, scenario.stream, baseline, concurrency, scenario.pace_s)
            if scenario.backup
            else []
        )
        env.a.reset_stats()
        if env.b is not None:
            env.b.reset_stats()
        await scenario.inject(env)
        counter = [0]
        _watch(env, counter)
        try:
            results = await _phase(url, scenario.stream, requests, concurrency, scenario.pace_s)
        finally:
            for task in env.background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        fakes = [f for f in (env.a, env.b) if f is not None]
        billed = sum(f.stats.tokens["prompt"] + f.stats.tokens["completion"]
                     + f.stats.tokens_unfinished for f in fakes)  # fmt: skip
        delivered = sum(t for _, _, t in results)
        ok = [lat * 1000 for lat, err, _ in results if err is None]
        base_ok = [lat * 1000 for lat, err, _ in base if err is None]
        errors = [err for _, err, _ in results if err is not None]
        env.extra["a_requests_total"] = env.a.stats.total_requests
        result = ScenarioResult(
            name=scenario.name,
            requests=len(results),
            errors=len(errors),
            error_samples=errors,
            base_p50_ms=_pct(base_ok, 0.5) if base_ok else 0.0,
            base_p99_ms=_pct(base_ok, 0.99) if base_ok else 0.0,
            p50_ms=_pct(ok, 0.5) if ok else 0.0,
            p99_ms=_pct(ok, 0.99) if ok else 0.0,
            after_detection=counter[0],
            a_requests=env.a.stats.total_requests,
            tokens_wasted=billed - delivered,
            seconds=time.monotonic() - started,
        )
        result_extra.clear()
        result_extra.update(env.extra)
    return result


#: What the last run's injectors recorded (e.g. when a vendor recovered), for assertions.
result_extra: dict[str, Any] = {}
