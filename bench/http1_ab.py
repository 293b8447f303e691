"""A/B of the upstream client's CPU per call: this tree's `proxy.http1` against a git ref's.

Each measurement is a fresh client process (importing `proxy` from this tree or from an
export of the ref) that sends requests through `Pool.request` to `bench.upstream` (its
own process, so its CPU is not counted) and reads each answer the way the proxy does:
`read()` for JSON, `deliver_to` callbacks for streams. Old and new alternate, several
rounds, and the medians are compared.

    python -m bench.http1_ab [--ref main] [--rounds 6] [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="the git ref to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        mode, base, requests, concurrency = args.client
        import uvloop

        result = uvloop.run(_client(mode, base, int(requests), int(concurrency)))
        print(json.dumps(result))
        return 0

    port = 19000 + os.getpid() % 1000
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(port)], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        time.sleep(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            old = Path(tmp)
            _export(args.ref, old)
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
            print(f"\nmedians over {args.rounds} rounds, {args.requests} calls each:")
            for mode in args.modes.split(","):
                a = statistics.median(results[(mode, "old")])
                b = statistics.median(results[(mode, "new")])
                print(
                    f"{mode:6}  {args.ref}: {a:7.1f} us/call   this tree: {b:7.1f} us/call"
                    f"   {100 * (b - a) / a:+.1f}%"
                )
    finally:
        upstream.terminate()
        upstream.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
