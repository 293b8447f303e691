"""Correctness at scale: thousands of slow streams through one proxy, the shared idle wheel,
and the open-file limit at start-up. No timings are asserted: these check what arrives.

The vendor here is the bench's lean upstream (`bench/upstream.py`, in this process): its
`/long-<gap ms>-<events>` routes pace a stream's events with one timer chain per
connection, so it holds thousands of streams on a fraction of a core.
"""

from __future__ import annotations

import asyncio
import re
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from bench.upstream import serve as serve_upstream
from proxy.fdlimit import raise_open_files_limit
from proxy.vendors.idle import SLOT_S, IdleWheel, idle_wheel
from tests.conftest import ProxyFactory, free_port
from tests.processes import Serve, spawn_serve, wait_ready

STREAMS = 2000
EVENTS = 5  # per stream, GAP_MS apart: each stream lasts 4 s
GAP_MS = 1000


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    server = await serve_upstream("127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    yield port
    server.close()
    await server.wait_closed()


def _request(port: int, model: str) -> bytes:
    body = orjson.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _dechunk(raw: bytes) -> bytes:
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:300]
    out = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]


async def _stream(port: int, model: str) -> list[str]:
    """One streamed request on its own connection: the content of each event, in order,
    and "[DONE]" if it came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request(port, model))
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            data = await reader.read(65536)
            if not data:
                break
            raw += data
    finally:
        writer.close()
    seen = []
    for line in _dechunk(raw).split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            seen.append("[DONE]")
            continue
        event = orjson.loads(line[6:])
        if "error" in event:
            seen.append(f"error: {event['error']['message']}")
        else:
            seen.append(event["choices"][0]["delta"]["content"])
    return seen


def _open_files_for(streams: int) -> None:
    """This process holds two sockets per stream (the client's and the upstream's)."""
    needed = 2 * streams + 256
    files = raise_open_files_limit()
    assert files is not None and files.after >= needed, (
        f"this test needs an open-file limit of at least {needed} (ulimit -Hn); the hard "
        f"limit is {files.hard if files else '?'}"
    )


async def test_2000_concurrent_slow_streams_complete_in_order(
    upstream: int, tmp_path: Path
) -> None:
    """2,000 streams at once through a real `llm-proxy serve` with the default config (no
    pool or limit tuned): every stream gets every event in order and its terminator, and
    the access log counts 2,000 answered requests."""
    _open_files_for(STREAMS)
    route = f"long-{GAP_MS}-{EVENTS}"
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "vendors:\n"
        f"  slow: {{type: openai, base_url: 'http://127.0.0.1:{upstream}/{route}/v1', "
        "api_key: sk-test}\n"
        "models:\n"
        "  slow: {deployments: [{vendor: slow, model: gpt-4o-mini}]}\n"
    )
    port = free_port()
    proxy = await spawn_serve(config, port, log_path=tmp_path / "proxy.log")
    try:
        await wait_ready(proxy)

        async def one(i: int) -> list[str]:
            await asyncio.sleep(i / 1000)  # opened at 1,000 a second
            return await _stream(port, "slow")

        results = await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(STREAMS))), timeout=90
        )
        expected = [f"t{i} " for i in range(EVENTS)] + ["[DONE]"]
        wrong = [r for r in results if r != expected]
        assert not wrong, f"{len(wrong)} of {STREAMS} streams differ, e.g. {wrong[0]}"
        answered = await _access_log_count(proxy, STREAMS)
        assert answered == STREAMS
    finally:
        proxy.proc.terminate()
        await asyncio.wait_for(proxy.proc.wait(), 30)


async def _access_log_count(proxy: Serve, want: int) -> int:
    """Answered streams in the access log, once it has caught up (lines are batched)."""
    count = 0
    for _ in range(100):  # 10 s at most
        count = sum(
            1
            for r in proxy.records()
            if r.get("event") == "request" and r.get("status") == 200 and r.get("stream")
        )
        if count >= want:
            break
        await asyncio.sleep(0.1)
    return count


async def test_a_silent_stream_fails_after_its_idle_budget_and_leaves_the_wheel(
    upstream: int, proxies: ProxyFactory
) -> None:
    """A vendor that sends its first event and then nothing for longer than stream_idle_s:
    the client gets the first event, then an error event (not a hang), and the stream
    leaves the loop's idle wheel."""
    proxy = await proxies(
        "server: {host: 127.0.0.1, port: 0}\n"
        "timeouts: {stream_idle_s: 0.5}\n"
        "vendors:\n"
        f"  mute: {{type: openai, base_url: 'http://127.0.0.1:{upstream}/long-5000-2/v1', "
        "api_key: sk-test}\n"
        f"  ok: {{type: openai, base_url: 'http://127.0.0.1:{upstream}/long-100-3/v1', "
        "api_key: sk-test}\n"
        "models:\n"
        "  mute: {deployments: [{vendor: mute, model: m}]}\n"
        "  ok: {deployments: [{vendor: ok, model: m}]}\n"
    )
    wheel = idle_wheel(asyncio.get_running_loop())
    silent, fine = await asyncio.wait_for(
        asyncio.gather(_stream(proxy.port, "mute"), _stream(proxy.port, "ok")), timeout=10
    )
    assert silent[0] == "t0 "
    assert len(silent) == 2 and silent[1].startswith("error: "), silent
    assert "no complete event" in silent[1] or "timed out" in silent[1], silent[1]
    assert fine == ["t0 ", "t1 ", "t2 ", "[DONE]"]  # 0.1 s gaps: well within the budget
    assert len(wheel) == 0


class _Stream:
    """What the wheel watches, as a relayed stream presents itself to it."""

    def __init__(self, last_event: float, idle_s: float) -> None:
        self.last_event = last_event
        self.idle_s = idle_s
        self.idle_slot = 0
        self.expired_at: float | None = None
        self.looks = 0

    def idle_deadline(self, now: float) -> float | None:
        self.looks += 1
        deadline = self.last_event + self.idle_s
        if now < deadline:
            return deadline
        self.expired_at = now
        return None


async def test_idle_wheel_expires_only_streams_that_stayed_silent() -> None:
    loop = asyncio.get_running_loop()
    wheel = IdleWheel(loop)
    t0 = loop.time()
    quiet = _Stream(t0, 0.3)
    talking = _Stream(t0, 0.3)
    gone = _Stream(t0, 0.3)
    for s in (quiet, talking, gone):
        wheel.watch(s, s.last_event + s.idle_s)
    wheel.unwatch(gone)  # a stream that ended: never looked at again
    for _ in range(8):  # events every 0.1 s for 0.8 s
        await asyncio.sleep(0.1)
        talking.last_event = loop.time()
    assert quiet.expired_at is not None
    assert quiet.expired_at >= t0 + 0.3  # never early
    assert quiet.looks == 1
    assert talking.expired_at is None
    assert gone.looks == 0
    wheel.unwatch(talking)
    for _ in range(20):
        if len(wheel) == 0:
            break
        await asyncio.sleep(SLOT_S)
    assert len(wheel) == 0


async def test_idle_wheel_holds_one_timer_for_many_streams() -> None:
    """5,000 streams filed over 50 slots keep a single loop timer, re-armed as slots come due."""
    loop = asyncio.get_running_loop()
    wheel = IdleWheel(loop)
    t0 = loop.time()
    streams = [_Stream(t0 + (i % 50) * 0.01, 0.2) for i in range(5000)]
    for s in streams:
        wheel.watch(s, s.last_event + s.idle_s)
    scheduled = loop._scheduled  # type: ignore[attr-defined]  # asyncio's timer heap
    ours = [t for t in scheduled if not t.cancelled() and t._callback == wheel._fire]
    assert len(ours) == 1
    for _ in range(50):
        if all(s.expired_at is not None for s in streams):
            break
        await asyncio.sleep(0.05)
    assert all(s.expired_at is not None and s.expired_at >= s.last_event + 0.2 for s in streams)
    assert len(wheel) == 0


async def test_start_up_raises_the_open_file_limit_and_says_so(tmp_path: Path) -> None:
    """A process started with a soft limit of 1,024 raises it to the hard limit and logs it;
    one whose hard limit is too low for server.max_connections says what to do."""
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "vendors: {v: {type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: sk-test}}\n"
        "models: {m: {deployments: [{vendor: v, model: m}]}}\n"
        "health_check: {enabled: false}\n"
    )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    assert hard > 1024, "this test needs a hard open-file limit above 1024"
    cases = {"raised": (1024, hard), "too_low": (512, 1024)}
    for name, (soft_limit, hard_limit) in cases.items():
        port = free_port()
        log_path = tmp_path / f"{name}.log"

        def limits(soft_limit: int = soft_limit, hard_limit: int = hard_limit) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard_limit))

        server = await spawn_serve(config, port, log_path=log_path, preexec_fn=limits)
        try:
            await wait_ready(server)
            lines = [r for r in server.records() if r.get("event") == "open_files_limit"]
        finally:
            server.proc.terminate()
            await asyncio.wait_for(server.proc.wait(), 30)
        if name == "raised":
            assert lines and lines[0]["before"] == 1024 and lines[0]["limit"] == hard, lines
            assert re.search(r"raised from 1024 to \d+", lines[0]["message"])
        else:
            warning = [r for r in lines if r["level"] == "warning"]
            assert warning, lines
            assert warning[0]["limit"] == 1024 and warning[0]["needed"] == 20_000
            assert "server.max_connections" in warning[0]["message"]
            assert "ulimit" in warning[0]["message"]
