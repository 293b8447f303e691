"""A real `redis-server` for the tests: own port, own temp dir, killed afterwards.

Debian's `redis-server` package provides it (.ci/run installs it). Locally the tests that
need it skip with a message when it is missing; in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

__all__ = ["RedisServer", "redis_server"]


class RedisServer:
    """One redis-server process that a test can kill and restart on the same port."""

    def __init__(self, binary: str, workdir: Path, *, persist: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), "--save", "", "--daemonize", "no"]
        # persist: an append-only file fsynced per write, so a restart keeps the data.
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill looks like to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def command(self, *args: str) -> str:
        """Run one command with redis-cli-like simplicity over RESP (for test assertions)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload.encode())
            return s.recv(65536).decode()


def _binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: .ci/run must install it")
        pytest.skip(f"{message}; the shared-state tests run in CI")
    return path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(_binary(), tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis whose data survives a kill and restart (append-only file, fsync always)."""
    server = RedisServer(_binary(), tmp_path, persist=True)
    server.start()
    yield server
    server.kill()
