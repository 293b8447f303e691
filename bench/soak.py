"""Soak: mixed traffic at a fixed rate for a long time, faults injected, leaks measured.

``python -m bench.soak --duration-s 600 --rate 20`` starts two fake OpenAI vendors in this
process, the proxy as a subprocess (``bench.soak_proxy``: the real server plus a sampler
of its own RSS, open fds and asyncio task count), and sends a fixed-rate mix: JSON chat,
streamed chat, embeddings, and streams the client hangs up on after the first event. The
primary vendor cycles through faults (500s on half the requests, mid-stream cuts, 429
storms, a partial black hole) so every failure path runs thousands of times.

The report (``bench/SOAK.md``) gives each resource's least-squares slope after warm-up,
per minute and over the whole run: a leak shows as a slope that does not go to zero.
Not a test: it takes minutes and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson

from proxy.fakes import FakeOpenAI, Fault
from tests.conftest import build_config, free_port, two_deployments

ROOT = Path(__file__).resolve().parent.parent

#: The primary's fault schedule, one step per ``--fault-period-s``, repeated.
FAULT_CYCLE: tuple[tuple[str, Fault | None], ...] = (
    ("healthy", None),
    ("50% 500s", Fault.preset("server_error", rate=0.5)),
    ("mid-stream cut", Fault.preset("drop_midstream")),
    ("429 storm, retry-after 1 s", Fault.preset("rate_limited", retry_after_s=1.0)),
    ("30% black hole", Fault.preset("black_hole", rate=0.3)),
    ("truncated streams", Fault.preset("truncated_stream")),
)

#: Traffic mix: (kind, weight).
MIX: tuple[tuple[str, int], ...] = (("chat", 5), ("stream", 3), ("embed", 1), ("hangup", 1))

CHAT = {"model": "smart", "messages": [{"role": "user", "content": "soak"}], "max_tokens": 8}


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t seconds, value) in value per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else 60.0 * sum((t - mt) * (v - mv) for t, v in points) / den


async def one(session: aiohttp.ClientSession, url: str, kind: str, tally: Counter[str]) -> None:
    try:
        if kind == "embed":
            body: dict[str, object] = {"model": "smart", "input": "soak"}
            async with session.post(f"{url}/v1/embeddings", json=body) as r:
                await r.read()
                tally[f"{kind} {r.status}"] += 1
            return
        body = {**CHAT, "stream": kind != "chat"}
        async with session.post(f"{url}/v1/chat/completions", json=body) as r:
            if kind == "hangup":
                await r.content.readline()
                tally[f"{kind} {r.status}"] += 1
                r.close()
                return
            data = await r.read()
            ok = r.status == 200 and (kind == "chat" or b"[DONE]" in data)
            tally[f"{kind} {r.status}" + ("" if ok or r.status != 200 else " broken")] += 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally[f"{kind} {type(exc).__name__}"] += 1


async def drive(args: argparse.Namespace, url: str, a: FakeOpenAI) -> tuple[Counter[str], int]:
    tally: Counter[str] = Counter()
    rng = random.Random(1)
    kinds = [k for k, w in MIX for _ in range(w)]
    limit = asyncio.Semaphore(args.concurrency)
    dropped = 0
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def guarded(kind: str) -> None:
            async with limit:
                await one(session, url, kind, tally)

        start = time.monotonic()
        step = -1
        i = 0
        while (now := time.monotonic()) - start < args.duration_s:
            new_step = int((now - start) // args.fault_period_s)
            if new_step != step:
                step = new_step
                name, fault = FAULT_CYCLE[step % len(FAULT_CYCLE)]
                a.set_fault(fault)
                print(f"[{now - start:6.0f} s] primary: {name}", flush=True)
            if limit.locked():
                dropped += 1  # the proxy is not keeping up: counted, not queued forever
            else:
                task = asyncio.create_task(guarded(rng.choice(kinds)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
        a.set_fault(None)
        await asyncio.gather(*tasks, return_exceptions=True)
    return tally, dropped


def render(args: argparse.Namespace, samples: list[dict[str, float]], tally: Counter[str],
           dropped: int, fakes: Sequence[FakeOpenAI]) -> str:  # fmt: skip
    t0 = samples[0]["t"]
    warm = [s for s in samples if s["t"] - t0 >= args.warmup_s]
    out = [
        "# Soak report",
        "",
        f"Written by `python -m bench.soak --duration-s {args.duration_s:.0f} --rate {args.rate:g}"
        f" --concurrency {args.concurrency}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" ({platform.machine()}, Python {platform.python_version()}).",
        "",
        f"Fixed rate {args.rate:g} requests/s for {args.duration_s:.0f} s; mix "
        + ", ".join(f"{k} {w}" for k, w in MIX)
        + " (hangup: a stream the client closes after its first event). The primary vendor "
        f"cycles every {args.fault_period_s:.0f} s through: "
        + "; ".join(n for n, _ in FAULT_CYCLE)
        + f". Resources sampled every {args.sample_s:g} s inside the proxy process; slopes "
        f"are least-squares fits over the samples after a {args.warmup_s:.0f} s warm-up.",
        "",
        "## Resources",
        "",
        "| resource | first | after warm-up | last | max | slope after warm-up (/min) |"
        " change over the rest of the run |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, unit in (("rss_mb", "MB"), ("fds", ""), ("tasks", "")):
        pts = [(s["t"] - t0, s[key]) for s in warm]
        sl = slope_per_min(pts)
        span_min = (pts[-1][0] - pts[0][0]) / 60 if len(pts) > 1 else 0.0
        out.append(
            f"| {key} | {samples[0][key]:.1f} | {warm[0][key]:.1f} | {samples[-1][key]:.1f} | "
            f"{max(s[key] for s in samples):.1f} | {sl:+.3f} {unit} | {sl * span_min:+.2f} {unit} |"
        )
    sent = sum(tally.values())
    out += ["", "## Traffic", "", f"Sent {sent} requests ({dropped} skipped: concurrency cap).", ""]
    out += ["| request outcome | count |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in sorted(tally.items())]
    out += ["", "| vendor | requests | disconnects seen | faults injected |", "|---|---|---|---|"]
    for f in fakes:
        out.append(
            f"| {f.name} | {f.stats.total_requests} | {f.stats.disconnects} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(f.stats.faults.items()))
            + " |"
        )
    out += [
        "",
        "## Samples (every minute)",
        "",
        "| t (s) | RSS (MB) | fds | tasks |",
        "|---|---|---|---|",
    ]
    last = -60.0
    for s in samples:
        if s["t"] - t0 - last >= 60 or s is samples[-1]:
            last = s["t"] - t0
            out.append(f"| {last:.0f} | {s['rss_mb']:.1f} | {s['fds']:.0f} | {s['tasks']:.0f} |")
    return "\n".join(out) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    async with FakeOpenAI("a", seed=7) as a, FakeOpenAI("b", seed=8) as b:
        a.chunks = b.chunks = 8
        cfg = build_config(
            {"a": a, "b": b},
            two_deployments(),
            "breaker: {fail_max: 5, reset_timeout_s: 5}\n",
        ).replace("first_byte_s: 5", "first_byte_s: 2")
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path, samples_path = Path(tmp) / "proxy.yaml", Path(tmp) / "samples.jsonl"
            cfg_path.write_text(cfg)
            port = free_port()
            cmd = [sys.executable, "-m", "bench.soak_proxy", "--config", str(cfg_path),
                   "--port", str(port), "--samples", str(samples_path),
                   "--sample-s", str(args.sample_s)]  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=ROOT)
            url = f"http://127.0.0.1:{port}"
            try:
                async with aiohttp.ClientSession() as s:
                    for _ in range(100):
                        with contextlib.suppress(aiohttp.ClientError):
                            async with s.get(f"{url}/health/ready") as r:
                                if r.status == 200:
                                    break
                        await asyncio.sleep(0.1)
                tally, dropped = await drive(args, url, a)
                await asyncio.sleep(args.sample_s * 2)  # idle samples: what is left after load
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            samples = [orjson.loads(line) for line in samples_path.read_bytes().splitlines()]
    report = render(args, samples, tally, dropped, (a, b))
    args.out.write_text(report)
    print(report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--concurrency", type=int, default=64, help="cap on requests in flight")
    p.add_argument("--fault-period-s", type=float, default=20.0)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--warmup-s", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "SOAK.md")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
