"""The `llm-proxy` command as a user runs it: real subprocesses, real signals."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.fakes import FakeOpenAI
from tests.conftest import FakeFactory, build_config, free_port, two_deployments
from tests.processes import Serve, run_cli, spawn_serve, wait_ready

EXAMPLE_KEYS = {
    name: f"test-{name}"
    for name in (
        "OPENAI_API_KEY",
        "GROQ_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "AZURE_OPENAI_KEY",
    )
}


async def test_check_config_accepts_a_valid_file() -> None:
    code, out, _ = await run_cli("check-config", "config/example.yaml", env=EXAMPLE_KEYS)
    assert code == 0
    assert "config/example.yaml: OK" in out


async def test_check_config_rejects_an_empty_vendor_key_naming_the_vendor() -> None:
    code, _, err = await run_cli(
        "check-config", "config/example.yaml", env={**EXAMPLE_KEYS, "GROQ_API_KEY": " "}
    )
    assert code == 2
    assert "vendors.groq.api_key: is empty (${GROQ_API_KEY} is empty or only whitespace)" in err


async def test_check_config_rejects_a_broken_file_with_its_lines(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "vendors:\n  a: {type: openai, base_url: http://x/v1, api_kee: k}\nmodels:\n  g:\n"
        "    deployments: [{vendor: b, model: m}]\n"
    )
    code, out, err = await run_cli("check-config", str(broken))
    assert code == 2
    assert f"{broken}:2: vendors.a.api_kee: unknown key" in err
    assert f"{broken}:5: models.g.deployments[0].vendor: names unknown vendor 'b'" in err
    assert "Traceback" not in err


async def test_serve_refuses_to_start_on_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("vendors: {a: {type: openai, api_key: ${NOT_SET_ANYWHERE}}}\nmodels: {}\n")
    code, _, err = await run_cli("serve", "--config", str(broken))
    assert code == 2
    assert "environment variable NOT_SET_ANYWHERE is not set" in err


@pytest.fixture
async def served(fakes: FakeFactory, tmp_path: Path) -> AsyncIterator[tuple[FakeOpenAI, Serve]]:
    a, b = await fakes("a", chunk_delay_s=0.1), await fakes("b")
    config = tmp_path / "proxy.yaml"
    config.write_text(build_config({"a": a, "b": b}, two_deployments()))
    server = await spawn_serve(
        config, free_port(), "--shutdown-grace-s", "10", log_path=tmp_path / "serve.log"
    )
    await wait_ready(server)
    yield a, server
    if server.proc.returncode is None:
        server.proc.kill()
        await server.proc.wait()


async def test_serve_answers_logs_json_and_drains_a_stream_on_sigterm(
    served: tuple[FakeOpenAI, Serve],
) -> None:
    import openai

    fake, server = served
    url, proc = server.url, server.proc
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
    done = await client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content
    stream = await client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = []
    async for chunk in stream:
        if not chunks:
            proc.send_signal(signal.SIGTERM)  # mid-stream: the stream must still finish
        chunks.append(chunk)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(fake.pieces)
    await client.close()  # on this loop, not by the GC later (see conftest's sdk_clients)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    lines = server.records()
    requests = [r for r in lines if r.get("event") == "request"]
    assert len(requests) == 2
    assert requests[0]["status"] == 200 and requests[0]["model_group"] == "smart"
    assert requests[0]["client"] is None  # an open proxy: no client key
    assert requests[0]["attempts"][0]["deployment"] == "a/model-a"
    assert requests[1]["stream"] is True
    assert all("key-a" not in json.dumps(r) for r in lines)  # no credentials in logs


async def test_demo_shows_failovers_with_no_client_errors() -> None:
    port = str(free_port())
    code, out, err = await run_cli(
        "demo", "--no-serve", "--requests", "16", "--port", port, timeout=90
    )
    assert code == 0, err
    assert "quota_exhausted -> secondary/gpt-5=success" in out
    assert "server_error -> tertiary/gpt-5-mini=success" in out
    assert "anthropic/claude-sonnet-4-5=overloaded -> tertiary/gpt-5=success" in out
    assert "16 requests, 0 client-visible errors" in out
