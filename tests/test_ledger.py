"""The usage ledger: exact accounting under mixed traffic, stream usage asked for and kept
out of the client's stream, and persistence across a restart and a kill -9."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy.vendors.openai_compat import _UsageStripper, with_stream_usage
from tests.conftest import FakeFactory, ProxyFactory, free_port
from tests.limits_helpers import KEY_A, KEY_B, PRICE, admin, keyed_config
from tests.processes import run_cli, spawn_serve, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def cost(tokens: dict[str, int]) -> float:
    p, c, cached = tokens["prompt"], tokens["completion"], tokens["cached"]
    return (
        (p - cached) * PRICE["prompt"] + cached * PRICE["cached_prompt"] + c * PRICE["completion"]
    ) / 1e6


async def _mixed_request(client: openai.AsyncOpenAI, i: int) -> dict[str, Any]:
    """One of five request shapes; returns what the client saw of usage."""
    kind = i % 5
    content = f"request {i} " + "z" * (i % 37)
    messages: Any = [{"role": "user", "content": content}]
    if kind == 0:
        r = await client.chat.completions.create(model="smart", messages=messages)
        return {"kind": "json", "usage": r.usage is not None}
    if kind in (1, 2):
        opts: Any = {"include_usage": True} if kind == 2 else openai.NOT_GIVEN
        stream = await client.chat.completions.create(
            model="smart", messages=messages, stream=True, stream_options=opts
        )
        chunks = [c async for c in stream]
        usage_chunks = [c for c in chunks if c.usage is not None]
        empty = [c for c in chunks if not c.choices]
        return {"kind": f"stream{kind}", "usage": bool(usage_chunks), "empty": len(empty)}
    if kind == 3:
        text_stream = await client.completions.create(model="smart", prompt=content, stream=True)
        parts = [c async for c in text_stream]
        return {"kind": "completion_stream", "usage": any(c.usage for c in parts)}
    e = await client.embeddings.create(model="smart", input=[content, content + "!"])
    return {"kind": "embedding", "usage": e.usage is not None}


async def test_usage_after_200_mixed_requests_equals_the_vendors_reported_usage(
    fakes: FakeFactory, proxies: ProxyFactory, tmp_path: Path
) -> None:
    a = await fakes("a", chunks=6, cached_tokens=3)
    db = tmp_path / "usage.sqlite3"
    proxy = await proxies(keyed_config(a, extra=f"state: {{sqlite_path: '{db}'}}\n"))
    client = proxy.client(api_key=KEY_A, timeout=20)
    gate = asyncio.Semaphore(25)

    async def one(i: int) -> dict[str, Any]:
        async with gate:
            return await _mixed_request(client, i)

    seen = await asyncio.gather(*(one(i) for i in range(200)))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for s in seen:
        by_kind.setdefault(s["kind"], []).append(s)
    # A client that did not ask for stream usage never sees it; one that asked gets it.
    assert not any(s["usage"] or s["empty"] for s in by_kind["stream1"])
    assert all(s["usage"] and s["empty"] == 1 for s in by_kind["stream2"])
    assert not any(s["usage"] for s in by_kind["completion_stream"])
    # ...while upstream every stream was asked for its usage.
    streamed = [r.body for r in a.stats.last_requests if r.body.get("stream")]
    assert streamed and all(b["stream_options"]["include_usage"] is True for b in streamed)

    async with aiohttp.ClientSession() as s:
        status, usage = await admin(s, proxy.url, "GET", "/admin/usage?client=team-a")
    assert status == 200
    totals = usage["totals"]
    vendor = a.stats.tokens
    assert totals["requests"] == 200 and totals["errors"] == 0
    assert totals["prompt_tokens"] == vendor["prompt"]
    assert totals["completion_tokens"] == vendor["completion"]
    assert totals["cached_tokens"] == vendor["cached"] > 0
    assert totals["cost_usd"] == pytest.approx(cost(vendor), abs=1e-6)
    assert [r["model_group"] for r in usage["rows"]] == ["smart"]
    # The same figures are in the SQLite file, read back by a fresh ledger.
    await proxy.gateway.ledger.flush()
    import sqlite3

    con = sqlite3.connect(db)
    row = con.execute(
        "SELECT requests, prompt_tokens, completion_tokens, cached_tokens FROM usage "
        "WHERE client = 'team-a'"
    ).fetchone()
    con.close()
    assert row == (200, vendor["prompt"], vendor["completion"], vendor["cached"])


def test_stream_usage_is_spliced_into_the_body_minimally() -> None:
    raw = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],"x_new":1}'
    out = with_stream_usage(raw, orjson.loads(raw))
    assert out == b'{"stream_options":{"include_usage":true},' + raw[1:]
    raw2 = b'{"model":"m","stream":true,"stream_options":{"include_usage":false,"k":2}}'
    doc = orjson.loads(with_stream_usage(raw2, orjson.loads(raw2)))
    assert doc["stream_options"] == {"include_usage": True, "k": 2}


def test_the_usage_event_is_stripped_even_when_split_across_reads() -> None:
    content = b'data: {"choices":[{"delta":{"content":"usage"}}],"usage":null}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    done = b"data: [DONE]\n\n"
    stream = content + usage + done
    for cut in range(1, len(stream)):
        strip = _UsageStripper()
        out = strip.feed(stream[:cut]) + strip.feed(stream[cut:]) + strip.tail()
        assert out == content + done, cut


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    log = tmp_path / "serve.log"

    async def start(config: Path, port: int) -> asyncio.subprocess.Process:
        # With its access log on: when a request here fails, the log says which attempt
        # did what (printed below; pytest shows it for a failed test only).
        server = await spawn_serve(config, port, log_path=log)
        procs.append(server.proc)
        await wait_ready(server)
        return server.proc

    yield start
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()
    if log.exists():
        lines = log.read_text(errors="replace").splitlines()
        print("proxy log (last 60 lines):", *lines[-60:], sep="\n")


async def _traffic(url: str, n: int, offset: int) -> None:
    # Closed here, not left to the GC: see RunningProxy.sdk_clients in conftest.py.
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=KEY_A, max_retries=0, timeout=20
    ) as client:
        await asyncio.gather(*(_mixed_request(client, offset + i) for i in range(n)))


async def test_usage_and_daily_limits_survive_a_restart_and_a_kill_9(
    fakes: FakeFactory, serve: Any, tmp_path: Path
) -> None:
    a = await fakes("a", chunks=4, cached_tokens=2)
    db = tmp_path / "ledger.sqlite3"
    config = tmp_path / "proxy.yaml"
    config.write_text(
        keyed_config(a, "{tokens_per_day: 60000}", extra=f"state: {{sqlite_path: '{db}'}}\n")
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    async def ledger_totals() -> dict[str, Any]:
        async with aiohttp.ClientSession() as s:
            status, body = await admin(s, url, "GET", "/admin/usage?client=team-a")
        assert status == 200
        totals: dict[str, Any] = body["totals"]
        return totals

    def assert_matches(totals: dict[str, Any], requests: int) -> None:
        v = a.stats.tokens
        assert totals["requests"] == requests
        assert (totals["prompt_tokens"], totals["completion_tokens"], totals["cached_tokens"]) == (
            v["prompt"],
            v["completion"],
            v["cached"],
        )

    proc = await serve(config, port)
    await _traffic(url, 25, 0)
    proc.send_signal(signal.SIGKILL)  # no shutdown, no final flush
    await proc.wait()
    proc = await serve(config, port)
    assert_matches(await ledger_totals(), 25)

    try:
        await _traffic(url, 15, 25)
    except openai.OpenAIError:
        print("fake a after the failure:", a.stats.in_flight, "in flight;", dict(a.stats.requests))
        # Which side held the lost requests: SYN-SENT means the proxy's connect never
        # completed; ESTAB with bytes in Recv-Q on the fake's side means it never read them.
        ss = shutil.which("ss")
        if ss is not None:
            sockets = subprocess.run(
                [ss, "-tanpi", f"( sport = :{a.port} or dport = :{a.port} )"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            print("sockets to and from fake a:", sockets.stdout, sep="\n")
        raise
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    proc = await serve(config, port)
    assert_matches(await ledger_totals(), 40)

    # The daily limit counts what the ledger holds: exhaust it, restart, still refused.
    async with (
        openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=KEY_A, max_retries=0, timeout=20
        ) as client,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY_B, max_retries=0, timeout=20) as other,
    ):
        with pytest.raises(openai.RateLimitError):
            for i in range(20):
                await client.chat.completions.create(
                    model="smart",
                    messages=[{"role": "user", "content": f"burn {i} " + "w" * 40000}],
                )
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await serve(config, port)
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "after restart"}]
            )
        assert refused.value.code == "tokens_per_day"
        await other.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "b"}]
        )
        async with aiohttp.ClientSession() as s:
            status, _ = await admin(s, url, "POST", "/admin/clients/team-a/reset-usage")
        assert status == 200
        await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "after the reset"}]
        )
        # The reset itself is durable (the admin call answers once it is on disk).
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await serve(config, port)
        await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "after the reset and a restart"}]
        )


async def test_usage_survives_a_kill_9_with_no_state_section(
    fakes: FakeFactory, serve: Any, tmp_path: Path
) -> None:
    """The embedded mode persists usage by default: next to the config file."""
    a = await fakes("a")
    config = tmp_path / "proxy.yaml"
    config.write_text(keyed_config(a))
    assert "state:" not in config.read_text()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await serve(config, port)
    await _traffic(url, 10, 0)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await serve(config, port)
    async with aiohttp.ClientSession() as s:
        status, body = await admin(s, url, "GET", "/admin/usage?client=team-a")
    assert status == 200 and body["persistent"] is True
    assert body["totals"]["requests"] == 10
    assert (tmp_path / "llm-proxy-state" / "usage.sqlite3").exists()


async def test_opting_out_of_the_ledger_file_is_said_at_start_up(
    fakes: FakeFactory, serve: Any, tmp_path: Path
) -> None:
    a = await fakes("a")
    config = tmp_path / "proxy.yaml"
    config.write_text(keyed_config(a, extra="state: {sqlite_path: null}\n"))
    port = free_port()
    await serve(config, port)
    async with aiohttp.ClientSession() as s:
        status, body = await admin(s, f"http://127.0.0.1:{port}", "GET", "/admin/usage")
    assert status == 200 and body["persistent"] is False
    log = (tmp_path / "serve.log").read_text()
    assert "will not survive a restart" in log
    assert not (tmp_path / "llm-proxy-state").exists()


async def test_an_unusable_sqlite_path_is_a_clear_startup_error(
    fakes: FakeFactory, tmp_path: Path
) -> None:
    a = await fakes("a")
    config = tmp_path / "proxy.yaml"
    config.write_text(keyed_config(a, extra="state: {sqlite_path: /nonexistent/dir/u.db}\n"))
    code, _, text = await run_cli("serve", "--config", str(config), "--port", str(free_port()))
    assert code == 2
    assert "cannot open the usage ledger '/nonexistent/dir/u.db' (state.sqlite_path)" in text
    assert "Traceback" not in text
