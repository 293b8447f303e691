"""`llm-proxy serve` plus a sampler that records the process's own RSS, fds and tasks.

The soak run needs the asyncio task count of the proxy process, which only code inside
that process can see; this wrapper runs the real ``proxy.server.serve`` (same app, same
lifecycle as the CLI) with one extra background task that appends a JSON line every
``--sample-s`` seconds. RSS and fds are read from /proc/self so the three figures come
from the same instant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import orjson

from proxy.cli import _load, new_event_loop, setup_logging
from proxy.server import serve

_PAGE = os.sysconf("SC_PAGE_SIZE")


def sample() -> dict[str, float]:
    with open("/proc/self/statm", "rb") as f:
        rss = int(f.read().split()[1]) * _PAGE
    return {
        "t": time.time(),
        "rss_mb": rss / 1e6,
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
    }


async def sampler(path: Path, every_s: float) -> None:
    with path.open("ab") as out:
        while True:
            out.write(orjson.dumps(sample()) + b"\n")
            out.flush()
            await asyncio.sleep(every_s)


async def main_async(args: argparse.Namespace) -> None:
    config = _load(args.config)
    task = asyncio.create_task(sampler(Path(args.samples), args.sample_s))
    try:
        await serve(config, "127.0.0.1", args.port, grace_s=2.0)
    finally:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--samples", required=True, help="JSON-lines file to append to")
    parser.add_argument("--sample-s", type=float, default=5.0)
    args = parser.parse_args()
    setup_logging("warning", access_log=False)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main_async(args))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
