"""Run the Codex CLI against `llm-proxy serve` and fake vendors, all inside one loopback-only
network namespace (`unshare --net`): nothing Codex does can reach another network.

Run by tests/test_codex_cli.py as `unshare --net python tests/codex_launcher.py SPEC`,
where SPEC is a JSON file: `{"codex": path to the codex binary, "work": a temp dir,
"vendors": {name: fake type}, "group": [[vendor, model], ...], "faults": {name: preset},
"prompt": text}`. It brings the namespace's loopback up, starts the fakes in this process
and the proxy as a subprocess, runs `codex exec` once, and prints one JSON report line:
Codex's exit code and output, and what each fake vendor was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from proxy.fakes import FAKES, Fault

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_CLIENT_KEY = "codex-client-key"


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _proxy_config(vendors: dict[str, Any], group: list[list[str]], port: int) -> str:
    lines = [
        f"server: {{host: 127.0.0.1, port: {port}, request_timeout_s: 60}}",
        "timeouts: {connect_s: 2, first_byte_s: 10, attempt_s: 30, stream_idle_s: 10}",
        "vendors:",
    ]
    for name, fake in vendors.items():
        lines.append(
            f"  {name}: {{type: {fake.vendor_type}, base_url: '{fake.base_url}', api_key: k-{name}}}"
        )
    lines += ["models:", "  codex-model:", "    deployments:"]
    lines += [f"      - {{vendor: {vendor}, model: {model}}}" for vendor, model in group]
    lines += ["clients:", f"  - {{name: codex, key: '${{CODEX_CLIENT_KEY:-{_CLIENT_KEY}}}'}}"]
    return "\n".join(lines) + "\n"


def _codex_config(proxy_port: int) -> str:
    return (
        'model = "codex-model"\n'
        'model_provider = "proxy"\n'
        "[model_providers.proxy]\n"
        'name = "llm-failover-proxy"\n'
        f'base_url = "http://127.0.0.1:{proxy_port}/v1"\n'
        'env_key = "OPENAI_API_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )


async def _wait_ready(port: int, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError("the proxy did not become ready")


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    loopback_up()
    work = Path(spec["work"])
    vendors = {}
    for name, kind in spec["vendors"].items():
        fake = FAKES[kind](name)
        await fake.start("127.0.0.1", 0)
        vendors[name] = fake
    for name, preset in spec.get("faults", {}).items():
        vendors[name].set_fault(Fault.preset(preset))
    port = _free_port()
    config = work / "proxy.yaml"
    config.write_text(_proxy_config(vendors, spec["group"], port))
    with open(work / "proxy.log", "wb") as log:
        proxy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        await _wait_ready(port)
        home = work / "codex-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(_codex_config(port))
        project = work / "project"
        project.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "CODEX_HOME": str(home),
            "OPENAI_API_KEY": _CLIENT_KEY,
            "RUST_LOG": "error",
        }
        codex = await asyncio.create_subprocess_exec(
            spec["codex"], "exec", "--skip-git-repo-check", "--sandbox", "read-only",
            "--cd", str(project), *spec.get("codex_args", ()), spec["prompt"],
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(codex.communicate(), spec.get("timeout_s", 120))
        except TimeoutError:
            codex.kill()
            out, err = await codex.communicate()
        return {
            "codex_rc": codex.returncode,
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace")[-4000:],
            "vendors": {
                name: [
                    {"path": r.path, "method": r.method, "body": r.body}
                    for r in fake.stats.last_requests
                ]
                for name, fake in vendors.items()
            },
            "pieces": {name: "".join(fake.pieces) for name, fake in vendors.items()},
            "proxy_log": (work / "proxy.log").read_text(errors="replace")[-20000:],
        }
    finally:
        proxy.terminate()
        await proxy.wait()
        for fake in vendors.values():
            await fake.stop()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    report = asyncio.run(run(spec))
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
