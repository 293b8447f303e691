"""Run one fake vendor standalone until SIGINT/SIGTERM.

``python -m proxy.fakes --port 9001 --name a [--vendor openai|anthropic|gemini] [--host 127.0.0.1] [--fault PRESET]
[--latency-ms N] [--chunks N] [--budget-requests N] [--budget-tokens N] [--budget-window-s S]``.
A subprocess fake is steered over HTTP through its ``/_fake/fault``, ``/_fake/budget``,
``/_fake/stats`` and ``/_fake/reset`` endpoints. Prints one
``listening on <base_url>`` line (flushed) once the socket is bound, so a parent
process can wait for it instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from proxy.fakes import FAKES
from proxy.fakes.base import PRESETS, Fault
from proxy.fakes.budget import Budget


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.fakes", description="Run a fake LLM vendor."
    )
    parser.add_argument("--vendor", choices=sorted(FAKES), default="openai", help="wire format")
    parser.add_argument("--port", type=int, required=True, help="port to bind (0: any free)")
    parser.add_argument("--name", default="fake", help="vendor name, echoed in answers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fault", choices=sorted(PRESETS), default="none", help="fault preset")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument("--chunks", type=int, default=5, help="pieces per answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="between stream chunks")
    parser.add_argument("--models", default="", help="comma-separated model ids to list")
    parser.add_argument("--api-key", default=None, help="require this key (in the vendor's header)")
    parser.add_argument("--seed", type=int, default=0, help="seed for fault rates")
    parser.add_argument("--budget-requests", type=int, help="requests per window (rate limit)")
    parser.add_argument("--budget-tokens", type=int, help="tokens per window (rate limit)")
    parser.add_argument("--budget-window-s", type=float, default=60.0, help="the budget's window")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    fault: Fault | None = Fault.preset(args.fault)
    if args.latency_ms:
        fault = Fault.preset(args.fault, latency_s=args.latency_ms / 1000)
    models = [m for m in args.models.split(",") if m] or None
    fake = FAKES[args.vendor](
        args.name,
        models=models,
        chunks=args.chunks,
        chunk_delay_s=args.chunk_delay_ms / 1000,
        api_key=args.api_key,
        fault=fault,
        seed=args.seed,
        budget=Budget.from_dict(
            {
                "requests": args.budget_requests,
                "tokens": args.budget_tokens,
                "window_s": args.budget_window_s,
            }
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    await fake.start(host=args.host, port=args.port)
    print(f"fake {args.vendor} {args.name!r} listening on {fake.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point; uvloop when installed (the benchmarks' fakes must not be the bottleneck)."""
    args = _parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
