"""What sharing state through Redis costs per request, measured (not a test).

    .venv/bin/python bench/redis_state.py [--requests 3000] [--hits 5000]

Starts its own redis-server (Debian's `redis-server`) on a free port and measures:

1. the round trip a request would await for a shared rate limit (`RedisBackend.hit`,
   one Lua script call): wall-clock latency percentiles and the proxy process's CPU per
   call, against the in-process `MemoryBackend.hit`;
2. `add()` for usage counters (buffered, flushed in batches in the background): CPU per call;
3. the proxy's CPU per pass-through request with `state.backend: memory` and `redis`:
   a real `llm-proxy serve` subprocess, its CPU time read from /proc, a fake vendor, and
   an aiohttp client doing a fixed number of requests at concurrency 16. Routing reads the
   in-process state either way, so the two numbers should agree within noise;
4. the same with a client key that has an `rpm` and a `tokens_per_day` limit: with Redis
   the rpm is taken from the shared window in chunks (proxy/limits/shared.py) and every
   request's usage is added to the cluster's ledger (6 counter additions, batched).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.fakes import FakeOpenAI  # noqa: E402
from proxy.state.memory import MemoryBackend  # noqa: E402
from proxy.state.redis import RedisBackend  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def bench_hits(url: str, hits: int) -> None:
    redis = RedisBackend(url, "bench", "bench-replica")
    await redis.start()
    memory = MemoryBackend("bench")
    for name, backend in (("memory", memory), ("redis", redis)):
        for _ in range(200):  # warm up (script load, connection pool)
            await backend.hit("warm", 10**9, 60)
        lat = []
        cpu0 = time.process_time()
        for _ in range(hits):
            t0 = time.perf_counter()
            await backend.hit("client:rpm", 10**9, 60)
            lat.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / hits
        print(
            f"hit() {name:6}  p50 {pct(lat, 50) * 1e6:7.1f} us  p99 {pct(lat, 99) * 1e6:7.1f} us"
            f"  mean {statistics.mean(lat) * 1e6:7.1f} us  CPU/call {cpu * 1e6:6.1f} us"
        )
    cpu0 = time.process_time()
    for i in range(hits):
        redis.add("usage:team", "tokens", i)
    await asyncio.sleep(0.2)  # let the background flush run
    cpu = (time.process_time() - cpu0) / hits
    print(f"add()  redis   CPU/call including its share of the batched flush: {cpu * 1e6:.1f} us")
    await redis.close()


KEY = "sk-bench-0123456789"
CLIENTS = (
    "clients:\n"
    f"  - {{name: bench, key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, "
    "limits: {rpm: 4000, tokens_per_day: 1000000000000}}\n"
)


async def bench_requests(
    url: str | None, requests: int, vendor: FakeOpenAI, clients: bool = False
) -> float:
    """CPU seconds per request of a proxy subprocess with the given state backend."""
    state = f"state: {{backend: redis, url: '{url}'}}\n" if url else ""
    state += CLIENTS if clients else ""
    headers = {"Authorization": f"Bearer {KEY}"} if clients else {}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "proxy.yaml"
        config.write_text(
            "server: {host: 127.0.0.1}\n"
            f"vendors: {{a: {{type: openai, base_url: '{vendor.base_url}'}}}}\n"
            "models: {smart: {deployments: [{vendor: a, model: m}]}}\n" + state
        )
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "-c", str(config), "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        body = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(100):
                    try:
                        async with s.get(f"{base}/health/ready") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)

                async def worker(n: int) -> None:
                    for _ in range(n):
                        async with s.post(
                            f"{base}/v1/chat/completions", json=body, headers=headers
                        ) as r:
                            await r.read()
                            assert r.status == 200, r.status

                await asyncio.gather(*(worker(50) for _ in range(16)))  # warm up
                cpu0 = cpu_s(proc.pid)
                await asyncio.gather(*(worker(requests // 16) for _ in range(16)))
                return (cpu_s(proc.pid) - cpu0) / (requests // 16 * 16)
        finally:
            proc.terminate()
            proc.wait(30)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--hits", type=int, default=5000)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            url = f"redis://127.0.0.1:{port}/0"
            print(
                f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, Redis on loopback"
            )
            await bench_hits(url, args.hits)
            vendor = FakeOpenAI("a")
            await vendor.start("127.0.0.1", 0)
            try:
                for clients in (False, True):
                    for name, u in (("memory", None), ("redis", url)):
                        per = await bench_requests(u, args.requests, vendor, clients)
                        what = "keyed client (rpm, tokens_per_day)" if clients else "open proxy"
                        print(
                            f"proxy CPU per pass-through request, {what}, state {name:6}: "
                            f"{per * 1e6:6.0f} us"
                        )
            finally:
                await vendor.stop()
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    import uvloop  # the proxy runs on uvloop; measure on the same loop

    uvloop.run(main())
