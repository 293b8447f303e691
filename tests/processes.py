"""Real `llm-proxy` processes for tests: short CLI commands, and `serve` running alongside.

A long-running `serve` writes its log to a file, not a pipe: a pipe nobody reads until the
end fills up (64 KiB) and then blocks the proxy's event loop on its next log line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["CLI", "ENV", "ROOT", "Serve", "run_cli", "spawn_serve", "wait_ready"]

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "proxy.cli"]
# Without XDG_STATE_HOME: a proxy with the default usage ledger keeps it next to its config
# (each test's own temporary directory), never in a directory shared between tests.
ENV = {
    **{k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"},
    "NO_COLOR": "1",
    "PYTHONUNBUFFERED": "1",
}


async def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `llm-proxy ARGS` to completion: (exit code, stdout, stderr); `env` adds variables."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**ENV, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class Serve:
    """A running `llm-proxy serve` and where its log goes."""

    proc: asyncio.subprocess.Process
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]


async def spawn_serve(
    config: Path,
    port: int,
    *extra: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> Serve:
    """Start `llm-proxy serve --config CONFIG --port PORT EXTRA...` (not waiting for
    readiness), with `env` added to the environment; `preexec_fn` runs in the child before
    it starts (e.g. to set its resource limits)."""
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            *extra,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
            env={**ENV, **(env or {})},
            preexec_fn=preexec_fn,
        )
    return Serve(proc, f"http://127.0.0.1:{port}", log_path)


async def wait_ready(server: Serve, timeout_s: float = 15.0) -> None:
    """Poll /health/ready until 200; fail at once if the process exits."""
    async with aiohttp.ClientSession() as s:
        for _ in range(int(timeout_s / 0.1)):
            if server.proc.returncode is not None:
                raise AssertionError(
                    f"the proxy exited ({server.proc.returncode}):\n{server.log()[-2000:]}"
                )
            try:
                async with s.get(f"{server.url}/health/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    server.proc.kill()
    raise AssertionError(f"the proxy did not become ready:\n{server.log()[-2000:]}")
