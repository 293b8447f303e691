"""What translation costs: pass-through vs translated paths, latency and proxy CPU per request.

Runs the proxy (`llm-proxy serve`, access log on, output discarded) and one fake vendor of
each wire format as separate processes on 127.0.0.1, then sends sequential requests from
this process and reports, per path, client-observed latency (p50, p99) and the proxy
process's CPU time per request (from /proc, so only the proxy is measured). The fakes
answer at once, so the differences are the proxy's own work:

- openai -> openai: the pass-through fast path (bytes relayed, only `model` rewritten)
- openai -> anthropic: OpenAI chat translated to/from Anthropic Messages natively
- openai -> gemini: translated by litellm
- messages -> anthropic: `/v1/messages` passed through to Anthropic
- messages -> openai: `/v1/messages` translated to/from OpenAI chat natively

`python -m bench.translated [--requests N] [--out bench/results/translated.md]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

_TICK = os.sysconf("SC_CLK_TCK")

PATHS = [
    # label, inbound path, model group
    ("openai -> openai (pass-through)", "/v1/chat/completions", "oai"),
    ("openai -> anthropic (native translation)", "/v1/chat/completions", "anth"),
    ("openai -> gemini (litellm)", "/v1/chat/completions", "gem"),
    ("messages -> anthropic (pass-through)", "/v1/messages", "anth"),
    ("messages -> openai (native translation)", "/v1/messages", "oai"),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )


async def _wait_ready(session: aiohttp.ClientSession, url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


def _body(path: str, group: str, stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": group,
        "messages": [{"role": "user", "content": "benchmark prompt " * 20}],
    }
    if path == "/v1/messages":
        body["max_tokens"] = 64
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(
    session: aiohttp.ClientSession, url: str, body: bytes, n: int, pid: int
) -> tuple[list[float], float]:
    headers = {"Content-Type": "application/json"}
    for _ in range(max(20, n // 10)):  # warm-up: pools, litellm's lazy schemas
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
    latencies: list[float] = []
    cpu0 = _cpu_s(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}")
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies, (_cpu_s(pid) - cpu0) * 1000 / n


async def run(requests: int) -> str:
    ports = {v: _port() for v in ("openai", "anthropic", "gemini")}
    procs = [
        await _spawn(
            "-m", "proxy.fakes", "--vendor", v, "--port", str(p), "--name", v, "--chunks", "20"
        )
        for v, p in ports.items()
    ]
    proxy_port = _port()
    config = f"""
server: {{host: 127.0.0.1, port: {proxy_port}}}
vendors:
  oai:  {{type: openai,    base_url: "http://127.0.0.1:{ports["openai"]}/v1", api_key: k}}
  anth: {{type: anthropic, base_url: "http://127.0.0.1:{ports["anthropic"]}", api_key: k}}
  gem:  {{type: gemini,    base_url: "http://127.0.0.1:{ports["gemini"]}", api_key: k}}
models:
  oai:  {{deployments: [{{vendor: oai, model: gpt-4o}}]}}
  anth: {{deployments: [{{vendor: anth, model: claude-sonnet-4-5}}]}}
  gem:  {{deployments: [{{vendor: gem, model: gemini-2.5-flash}}]}}
"""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config)
    cli = str(Path(sys.executable).with_name("llm-proxy"))
    proxy = await asyncio.create_subprocess_exec(
        cli,
        "serve",
        "--config",
        f.name,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    procs.append(proxy)
    base = f"http://127.0.0.1:{proxy_port}"
    rows: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"{base}/health/ready")
            baseline: dict[bool, tuple[float, float, float]] = {}
            for stream in (False, True):
                for label, path, group in PATHS:
                    lat, cpu = await _measure(
                        session, base + path, _body(path, group, stream), requests, proxy.pid
                    )
                    p50, p99 = statistics.median(lat), _pct(lat, 0.99)
                    if label.endswith("(pass-through)") and path == "/v1/chat/completions":
                        baseline[stream] = (p50, p99, cpu)
                    b50, b99, bcpu = baseline[stream]
                    rows.append(
                        f"| {'stream' if stream else 'json'} | {label} | {p50:.2f} | {p99:.2f} | "
                        f"{cpu:.3f} | {p50 - b50:+.2f} | {p99 - b99:+.2f} | {cpu - bcpu:+.3f} |"
                    )
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 10)
        os.unlink(f.name)
    header = (
        f"{requests} sequential requests per row after warm-up; fakes answer at once with 20 "
        f"chunks; proxy with access log on; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}.\n"
        "Deltas are against openai -> openai pass-through of the same mode (json/stream).\n\n"
        "| mode | path | p50 ms | p99 ms | proxy CPU ms/req | Δp50 ms | Δp99 ms | ΔCPU ms/req |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    return header + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.translated", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", default="bench/results/translated.md")
    args = parser.parse_args()
    report = asyncio.run(run(args.requests))
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Translated vs pass-through paths\n\n" + report)


if __name__ == "__main__":
    main()
