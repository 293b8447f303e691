"""`llm-proxy serve --workers N`: N serving processes on one port (SO_REUSEPORT).

The kernel spreads connections over the workers. Each worker is a full `llm-proxy serve`
with its own event loop, vendor pools and metrics; breakers and cooldowns are shared
through the Redis state backend, which is why workers require it. This parent only
supervises: it forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that dies, and exits
once every worker has drained and stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time

__all__ = ["run_workers"]

log = logging.getLogger("llmproxy")

RESTART_DELAY_S = (0.5, 10.0)  # first, cap
CRASH_LOOP = 5  # workers dying this many times within CRASH_WINDOW_S: give up
CRASH_WINDOW_S = 30.0


async def run_workers(child_args: list[str], count: int, stop_timeout_s: float) -> int:
    """Run `count` workers (`python -m proxy.cli serve <child_args>`) until a signal."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    workers: dict[int, asyncio.subprocess.Process] = {}
    crashes: list[float] = []
    gave_up = False
    delay = RESTART_DELAY_S[0]

    async def spawn(slot: int) -> None:
        workers[slot] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", *child_args
        )
        log.info(
            "worker %d started (pid %d)",
            slot,
            workers[slot].pid,
            extra={"event": "worker_start", "worker": slot, "pid": workers[slot].pid},
        )

    def forward(sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping.set()
        for proc in workers.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, forward, sig)
    try:
        for slot in range(count):
            await spawn(slot)
        while not stopping.is_set():
            waits = {asyncio.ensure_future(p.wait()): slot for slot, p in workers.items()}
            stop = asyncio.ensure_future(stopping.wait())
            done, _ = await asyncio.wait([*waits, stop], return_when=asyncio.FIRST_COMPLETED)
            for fut in [*waits, stop]:
                if fut not in done:
                    fut.cancel()
            if stopping.is_set():
                break
            for slot in [waits[f] for f in done if f in waits]:
                code = workers[slot].returncode
                now = time.monotonic()
                crashes[:] = [t for t in crashes if now - t < CRASH_WINDOW_S] + [now]
                log.error(
                    "worker %d exited with code %s; restarting it in %.1f s",
                    slot,
                    code,
                    delay,
                    extra={"event": "worker_exit", "worker": slot, "code": code},
                )
                if len(crashes) >= CRASH_LOOP:
                    log.error(
                        "workers keep dying (%d exits in %.0f s); stopping",
                        len(crashes),
                        CRASH_WINDOW_S,
                        extra={"event": "worker_crash_loop"},
                    )
                    gave_up = True
                    forward(signal.SIGTERM)
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_S[1])
                if not stopping.is_set():
                    await spawn(slot)
        codes = []
        for proc in workers.values():
            try:
                codes.append(await asyncio.wait_for(proc.wait(), stop_timeout_s))
            except TimeoutError:
                proc.kill()
                codes.append(await proc.wait())
        return 1 if gave_up or any(c != 0 for c in codes) else 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
