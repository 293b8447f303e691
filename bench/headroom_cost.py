"""What routing by rate-limit headroom costs per request, measured (not a test).

    .venv/bin/python bench/headroom_cost.py --baseline DIR [--rounds 12] [--requests 2000]
    .venv/bin/python bench/headroom_cost.py --baseline DIR --callgrind [--requests 1000]

Two `llm-proxy serve` processes, one from this tree and one from DIR (a checkout of the
code to compare with, e.g. `git archive main | tar -x -C DIR`), in front of one fake
OpenAI vendor whose every answer carries its rate-limit headers (a budget far too large
to bind: OpenAI sends them on every answer). Rounds alternate between the two (A B B A
...), each a fixed number of pass-through requests at concurrency 16 from an aiohttp
client; a process's CPU (utime + stime from /proc) over its rounds, divided by its
requests, is its CPU per request. Interleaving spreads the machine's noise over both.
A second pass does the same with a vendor that sends no rate-limit headers.

Then, in process, the new per-request work on its own: reading an answer's headers,
reserving and answering an attempt, and the plan's check.

On a shared, loaded machine CPU time is noisy; `--callgrind` counts the instructions each
proxy executes per request instead (valgrind's callgrind: counters zeroed after a warm-up,
dumped after the measured requests), which the machine's load does not change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.redis_state import cpu_s, free_port  # noqa: E402
from proxy.health.headroom import Headroom  # noqa: E402
from proxy.vendors.ratelimit import read_buckets  # noqa: E402

CONFIG = """\
server: {{host: 127.0.0.1, port: {port}}}
health_check: {{enabled: false}}
vendors:
  v: {{type: openai, base_url: 'http://127.0.0.1:{vendor}/v1', api_key: sk}}
models:
  smart: {{deployments: [{{vendor: v, model: m}}]}}
"""
JSON = {"Content-Type": "application/json"}
BODY = b'{"model":"smart","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-tokens": "29999950",
    "x-ratelimit-reset-tokens": "0s",
}


async def _wait(url: str, tries: int = 300) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(tries):
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def _round(port: int, requests: int, concurrency: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as s:
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with s.post(url, data=BODY, headers=JSON) as r:
                    await r.read()
                    assert r.status == 200, r.status

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _serve(
    source: Path, config: Path, log: Path, wrapper: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """`llm-proxy serve` from the tree at `source`, under `wrapper` (e.g. valgrind) if given."""
    argv = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--no-access-log"]
    return subprocess.Popen(
        [*wrapper, *argv],
        env={**os.environ, "PYTHONPATH": str(source)},
        cwd=source,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def compare(baseline: Path, rounds: int, requests: int, headers: bool) -> None:
    vendor = free_port()
    work = Path(tempfile.mkdtemp(prefix="headroom-cost-"))
    fake_args = [sys.executable, "-m", "proxy.fakes", "--port", str(vendor), "--chunks", "3"]
    if headers:  # a budget that never binds: its headers on every answer
        fake_args += ["--budget-requests", "1000000000", "--budget-tokens", "1000000000"]
    fake = subprocess.Popen(
        fake_args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, source in (("baseline", baseline), ("headroom", ROOT)):
            port = free_port()
            config = work / f"{name}.yaml"
            config.write_text(CONFIG.format(port=port, vendor=vendor))
            procs[name] = (_serve(source, config, work / f"{name}.log"), port)
        for _, port in procs.values():
            await _wait(f"http://127.0.0.1:{port}/health/ready")
        for _, port in procs.values():  # warm up pools and caches
            await _round(port, requests // 2, 16)
        cpu = {name: 0.0 for name in procs}
        per_round: dict[str, list[float]] = {name: [] for name in procs}
        order = list(procs)
        for i in range(rounds):
            for name in order if i % 2 == 0 else reversed(order):
                proc, port = procs[name]
                before = cpu_s(proc.pid)
                await _round(port, requests, 16)
                used = cpu_s(proc.pid) - before
                cpu[name] += used
                per_round[name].append(used / requests * 1e6)
        what = "with" if headers else "without"
        print(f"vendor {what} rate-limit headers, {rounds} rounds x {requests} requests each:")
        for name in procs:
            mean = cpu[name] / (rounds * requests) * 1e6
            med = statistics.median(per_round[name])
            print(f"  {name:9} CPU/request mean {mean:6.1f} us  median of rounds {med:6.1f} us")
        a, b = (cpu[n] for n in procs)
        print(f"  headroom / baseline: {b / a:.3f}")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
        fake.terminate()
        fake.wait(10)


def _instructions(dump_dir: Path, pid: int) -> int:
    """Instructions (Ir) in the newest callgrind dump of `pid`."""
    dumps = sorted(dump_dir.glob(f"*.{pid}.out*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


async def instructions(baseline: Path, requests: int, headers: bool) -> None:
    vendor = free_port()
    work = Path(tempfile.mkdtemp(prefix="headroom-callgrind-"))
    fake_args = [sys.executable, "-m", "proxy.fakes", "--port", str(vendor), "--chunks", "3"]
    if headers:
        fake_args += ["--budget-requests", "1000000000", "--budget-tokens", "1000000000"]
    fake = subprocess.Popen(
        fake_args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    what = "with" if headers else "without"
    print(f"vendor {what} rate-limit headers, instructions per request ({requests} requests):")
    results = {}
    try:
        for name, source in (("baseline", baseline), ("headroom", ROOT)):
            port = free_port()
            config = work / f"{name}.yaml"
            config.write_text(CONFIG.format(port=port, vendor=vendor))
            callgrind = (
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={work}/{name}.%p.out",
            )
            proc = _serve(source, config, work / f"{name}.log", callgrind)
            try:
                await _wait(f"http://127.0.0.1:{port}/health/ready", tries=6000)
                await _round(port, 300, 16)
                subprocess.run(
                    ["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True
                )
                await _round(port, requests, 16)
                subprocess.run(
                    ["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True
                )
                results[name] = _instructions(work, proc.pid) / requests
            finally:
                proc.terminate()
                proc.wait(60)
            print(f"  {name:9} {results[name]:12,.0f} instructions per request")
        print(f"  headroom / baseline: {results['headroom'] / results['baseline']:.3f}")
    finally:
        fake.terminate()
        fake.wait(10)


def micro(n: int = 200_000) -> None:
    """The new work per request, in process (microseconds per call)."""
    now = time.monotonic()
    h = Headroom()
    need = (20, 8)
    h.answered(h.reserve(now, need), HEADERS, now)

    def timed(label: str, fn: object, calls: int = n) -> None:
        t0 = time.process_time()
        for _ in range(calls):
            fn()  # type: ignore[operator]
        print(f"  {label:58} {(time.process_time() - t0) / calls * 1e6:6.2f} us")

    print("in process:")
    wall = time.time()
    timed("read_buckets(OpenAI headers)", lambda: read_buckets(HEADERS, wall))
    timed("read_buckets(no rate-limit headers)", lambda: read_buckets({"a": "b"}, wall))

    def attempt() -> None:
        t = time.monotonic()
        h.answered(h.reserve(t, need), HEADERS, t)

    timed("reserve + answered (headers read, figures adopted)", attempt)
    timed("fits (two buckets known)", lambda: h.fits(now, need))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="source tree to compare with")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    args = parser.parse_args()
    if args.callgrind:
        for headers in (True, False):
            _run(instructions(args.baseline.resolve(), args.requests, headers))
        return
    micro()
    for headers in (True, False):
        _run(compare(args.baseline.resolve(), args.rounds, args.requests, headers))


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
