"""A/B of the upstream client's CPU per call: this tree's `proxy.http1` against a git ref's.

Each measurement is a fresh client process (importing `proxy` from this tree or from an
export of the ref) that sends requests through `Pool.request` to `bench.upstream` (its
own process, so its CPU is not counted) and reads each answer the way the proxy does:
`read()` for JSON, `deliver_to` callbacks for streams. Old and new alternate, several
rounds, and the medians are compared.

`--proxy` compares whole proxies instead: `llm-proxy serve` from this tree and from the
ref run side by side in front of the same upstream, and the load generator drives them
in turns (JSON at concurrency 32, burst and paced streams at 16), counting each one's CPU. Running
both at once and alternating short rounds puts both under the same noise on a busy
machine.

`--proxy --instructions` runs each proxy under callgrind instead and counts instructions
per request: slow (valgrind), but deterministic enough to compare on a shared machine.

    python -m bench.http1_ab [--ref main] [--rounds 6] [--requests 4000] [--proxy [--instructions]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the client mode runs where `bench` may not be importable
    from bench.loadgen import Request

ROOT = Path(__file__).resolve().parent.parent
MODES = {
    "json": ("/ok/v1/chat/completions", False),
    "stream": ("/ok/v1/chat/completions", True),
    "paced": ("/paced/v1/chat/completions", True),
}


async def _client(mode: str, base: str, requests: int, concurrency: int) -> dict[str, float]:
    from proxy.http1 import Headers, Pool

    path, stream = MODES[mode]
    url = base + path
    pool = Pool(limit=concurrency * 2, read_s=30.0)
    loop = asyncio.get_running_loop()
    headers = Headers({"Authorization": "Bearer sk-bench", "Content-Type": "application/json"})
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":%s}' % (
        b"true" if stream else b"false"
    )

    async def one() -> None:
        resp = await pool.request(
            "POST", url, headers, body, deadline=loop.time() + 30, prompt=stream
        )
        if stream:
            ended: asyncio.Future[BaseException | None] = loop.create_future()
            resp.deliver_to(lambda _: None, ended.set_result)
            if await ended is not None:
                raise RuntimeError("stream broke")
        else:
            await resp.read(deadline=loop.time() + 30)
        resp.release()

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    async def run(n: int) -> None:
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))

    await run(min(requests, 500))  # warm up: connections, caches
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await run(requests)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await pool.close()
    done = requests // concurrency * concurrency
    return {"cpu_us": cpu / done * 1e6, "wall_s": wall}


def _export(ref: str, into: Path) -> None:
    """`proxy/` as it is at `ref`, under `into`."""
    data = subprocess.run(
        ["git", "archive", "--format=tar", ref, "proxy"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


def _measure(tree: Path, mode: str, base: str, requests: int, concurrency: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--client", mode, base, str(requests),
         str(concurrency)],
        cwd=tree, env=env, check=True, capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip
    return float(json.loads(out)["cpu_us"])


_PROXY_CONFIG = """
server: {{host: 127.0.0.1, port: {port}}}
health_check: {{enabled: false}}
vendors:
  ok: {{type: openai, base_url: '{upstream}/ok/v1', api_key: sk-bench}}
  paced: {{type: openai, base_url: '{upstream}/paced/v1', api_key: sk-bench}}
models:
  json: {{deployments: [{{vendor: ok, model: gpt-4o-mini}}]}}
  stream: {{deployments: [{{vendor: ok, model: gpt-4o-mini}}]}}
  paced: {{deployments: [{{vendor: paced, model: gpt-4o-mini}}]}}
"""
# (model group = mode, stream?, concurrency)
_PROXY_MODES = (("json", False, 32), ("stream", True, 16), ("paced", True, 16))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(url: str, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.2)):
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def _serve(
    tree: Path, port: int, upstream: str, workdir: Path, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    config = workdir / f"proxy-{port}.yaml"
    config.write_text(_PROXY_CONFIG.format(port=port, upstream=upstream))
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _request(mode: str, stream: bool, port: int) -> Request:
    from bench.loadgen import Request

    body = b'{"model":"%s","messages":[{"role":"user","content":"hi"}]%s}' % (
        mode.encode(),
        b',"stream":true' if stream else b"",
    )
    return Request(
        "127.0.0.1", port, "/v1/chat/completions", body,
        expect=b"[DONE]" if stream else b"", stream=stream,
    )  # fmt: skip


def _compare_proxies(args: argparse.Namespace, old: Path, upstream: str) -> None:
    from bench.loadgen import run_load
    from bench.procstat import cpu_seconds

    ports = {"old": _free_port(), "new": _free_port()}
    procs = {
        side: _serve(tree, ports[side], upstream, old)
        for side, tree in (("old", old), ("new", ROOT))
    }
    modes = [m for m in _PROXY_MODES if m[0] in args.modes.split(",")]
    try:
        for port in ports.values():
            _wait_ready(f"http://127.0.0.1:{port}/health/ready")
        results: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for mode, stream, concurrency in modes:
                sides = ["old", "new"] if r % 2 == 0 else ["new", "old"]
                for side in sides:
                    req = _request(mode, stream, ports[side])
                    before = cpu_seconds(procs[side].pid)
                    load = asyncio.run(
                        run_load(
                            req, concurrency=concurrency, requests=args.requests, max_seconds=120
                        )
                    )
                    cpu = (cpu_seconds(procs[side].pid) - before) / max(load.requests, 1) * 1e6
                    if load.errors:
                        raise RuntimeError(
                            f"{side}: {load.errors} errors: {load.error_samples[:2]}"
                        )
                    results.setdefault((mode, side), []).append(cpu)
                    print(f"round {r + 1} {mode:6} {side}: {cpu:7.1f} us/request", flush=True)
        _summary(args, results, tuple(m for m, _, _ in modes), "request")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait()


def _count_instructions(args: argparse.Namespace, old: Path, upstream: str) -> None:
    """Each proxy in turn under callgrind: instructions per request, which a busy machine
    does not blur (the upstream paces streams 30 ms apart so that the slowed-down proxy
    still reads one event at a time)."""
    from bench.loadgen import run_load

    modes = [m for m in _PROXY_MODES if m[0] in args.modes.split(",")]
    counts: dict[tuple[str, str], list[float]] = {}
    for mode, stream, concurrency in modes:
        requests = args.requests if mode != "paced" else max(args.requests // 4, 16)
        for side, tree in (("old", old), ("new", ROOT)):
            port = _free_port()
            dump = old / f"callgrind-{side}-{mode}.out"
            prefix = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}")
            proc = _serve(tree, port, upstream, old, prefix)
            try:
                _wait_ready(f"http://127.0.0.1:{port}/health/ready", timeout_s=600)
                req = _request(mode, stream, port)
                asyncio.run(
                    run_load(
                        req, concurrency=concurrency, requests=concurrency * 4, max_seconds=600
                    )
                )
                subprocess.run(
                    ["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True
                )
                load = asyncio.run(
                    run_load(req, concurrency=concurrency, requests=requests, max_seconds=1800)
                )
                subprocess.run(
                    ["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True
                )
            finally:
                proc.terminate()
                proc.wait()
            if load.errors:
                raise RuntimeError(f"{side}: {load.errors} errors: {load.error_samples[:2]}")
            total = max(
                int(line.split()[1])
                for line in Path(f"{dump}.1").read_text().splitlines()
                if line.startswith(("summary:", "totals:"))
            )
            per = total / load.requests
            counts[(mode, side)] = [per]
            print(f"{mode:6} {side}: {per:,.0f} instructions/request", flush=True)
    _summary(args, counts, tuple(m for m, _, _ in modes), "request", "instructions")


def _summary(
    args: argparse.Namespace,
    results: dict[tuple[str, str], list[float]],
    modes: tuple[str, ...],
    unit: str,
    measure: str = "us",
) -> None:
    print(f"\nmedians over {len(next(iter(results.values())))} round(s):")
    for mode in modes:
        a = statistics.median(results[(mode, "old")])
        b = statistics.median(results[(mode, "new")])
        print(
            f"{mode:6}  {args.ref}: {a:9,.1f} {measure}/{unit}   this tree: {b:9,.1f} "
            f"{measure}/{unit}   {100 * (b - a) / a:+.1f}%"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="the git ref to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--proxy", action="store_true", help="whole proxies, not the client")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="with --proxy: instructions per request under callgrind (valgrind), not CPU time",
    )
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        mode, base, requests, concurrency = args.client
        import uvloop

        result = uvloop.run(_client(mode, base, int(requests), int(concurrency)))
        print(json.dumps(result))
        return 0

    port = _free_port()
    gap = "30" if args.instructions else "1"
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(port), "--stream-gap-ms", gap],
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        time.sleep(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            old = Path(tmp)
            _export(args.ref, old)
            if args.proxy:
                if args.instructions:
                    _count_instructions(args, old, base)
                else:
                    _compare_proxies(args, old, base)
                return 0
            results: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds):
                for mode in args.modes.split(","):
                    sides = [("old", old), ("new", ROOT)]
                    if r % 2:
                        sides.reverse()
                    for side, tree in sides:
                        cpu = _measure(tree, mode, base, args.requests, args.concurrency)
                        results.setdefault((mode, side), []).append(cpu)
                        print(f"round {r + 1} {mode:6} {side}: {cpu:7.1f} us/call", flush=True)
            _summary(args, results, tuple(args.modes.split(",")), "call")
    finally:
        upstream.terminate()
        upstream.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
