"""The failover promise at its edges: zero client errors while a healthy deployment remains,
checked against vendors that misbehave in ways our own fakes never did.

- a vendor that sends its head at once and then drips the body a byte a second;
- a vendor whose first stream event is garbage, or whose third one is;
- config reloads that remove and restore the serving deployment under slow uploads;
- content-filtered answers, with and without the group's opt-in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest

from proxy.fakes import FakeOpenAI
from proxy.fakes.base import Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config, vendor_yaml
from tests.hostile_vendor import HostileVendor, Script, chunk, sse_head

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def hostile() -> AsyncIterator[list[HostileVendor]]:
    started: list[HostileVendor] = []
    yield started
    for vendor in started:
        await vendor.stop()


async def _hostile(started: list[HostileVendor], script: Script) -> HostileVendor:
    vendor = HostileVendor(script)
    await vendor.start()
    started.append(vendor)
    return vendor


def _config(
    bad: HostileVendor, good: FakeOpenAI, *, bad_type: str = "openai", extra: str = ""
) -> str:
    base = bad.base_url if bad_type == "openai" else bad.base_url.removesuffix("/v1")
    return (
        "server: {host: 127.0.0.1, port: 0, request_timeout_s: 6}\n"
        "timeouts: {connect_s: 2, first_byte_s: 30, attempt_s: 60, stream_idle_s: 30}\n"
        "health_check: {enabled: false}\n"
        "vendors:\n"
        f"  bad: {{type: {bad_type}, base_url: '{base}', api_key: k}}\n"
        + vendor_yaml("good", good)
        + "models:\n  smart:\n    deployments:\n"
        "      - {vendor: bad, model: m}\n      - {vendor: good, model: m}\n" + extra
    )


async def test_a_body_dripped_after_its_head_fails_over_within_the_attempts_share(
    fakes: FakeFactory, proxies: ProxyFactory, hostile: list[HostileVendor]
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{"
    bad = await _hostile(hostile, Script(head, [b" "] * 30, gap_s=1.0))
    good = await fakes("good")
    proxy = await proxies(_config(bad, good))
    started = time.monotonic()
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    elapsed = time.monotonic() - started
    assert raw.headers["x-proxy-deployment"] == "good/m"
    assert raw.headers["x-proxy-attempts"] == "bad/m=timeout, good/m=success"
    assert raw.parse().choices[0].message.content
    # The drip was cut at its share of the 6 s deadline (3 s of 2 attempts), not at the end.
    assert elapsed < 6.0


async def test_a_stream_dripped_before_its_first_event_fails_over(
    fakes: FakeFactory, proxies: ProxyFactory, hostile: list[HostileVendor]
) -> None:
    event = b'data: {"id":"c","object":"chat.completion.chunk","choices":[]}\n\n'
    drip = [chunk(event[i : i + 1]) for i in range(len(event))]
    bad = await _hostile(hostile, Script(sse_head(), drip, gap_s=1.0))
    good = await fakes("good")
    proxy = await proxies(_config(bad, good))
    stream = await proxy.client().chat.completions.create(
        model="smart", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    assert bad.requests == 1 and good.stats.total_requests == 1


_GARBAGE = b"data: {not json\n\n"
_OPENAI_EVENT = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi "}, "finish_reason": None}],
    }
)


async def test_a_garbage_first_event_fails_over_for_openai_clients(
    fakes: FakeFactory, proxies: ProxyFactory, hostile: list[HostileVendor]
) -> None:
    parts = [chunk(_GARBAGE), chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]
    bad = await _hostile(hostile, Script(sse_head(), parts))
    good = await fakes("good")
    proxy = await proxies(_config(bad, good))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, stream=True
    )
    assert raw.headers["x-proxy-attempts"] == "bad/m=server_error, good/m=success"
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text


async def test_a_garbage_first_event_fails_over_for_anthropic_clients(
    fakes: FakeFactory, proxies: ProxyFactory, hostile: list[HostileVendor]
) -> None:
    garbage = b"event: message_start\n" + _GARBAGE
    bad = await _hostile(hostile, Script(sse_head(), [chunk(garbage), b"0\r\n\r\n"]))
    good = await fakes("good", vendor="anthropic")
    proxy = await proxies(_config(bad, good, bad_type="anthropic"))
    async with proxy.anthropic_client().messages.stream(
        model="smart", max_tokens=50, messages=MESSAGES
    ) as stream:
        message = await stream.get_final_message()
    assert message.content and bad.requests == 1


async def test_a_garbage_third_event_ends_the_stream_with_an_error_event(
    fakes: FakeFactory, proxies: ProxyFactory, hostile: list[HostileVendor]
) -> None:
    good_event = b"data: " + _OPENAI_EVENT + b"\n\n"
    parts = [chunk(good_event), chunk(good_event), chunk(_GARBAGE), b"0\r\n\r\n"]
    bad = await _hostile(hostile, Script(sse_head(), parts, gap_s=0.05))
    good = await fakes("good")
    proxy = await proxies(_config(bad, good))
    body = orjson.dumps({"model": "smart", "messages": MESSAGES, "stream": True})
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 200
        events = [e for e in (await r.read()).split(b"\n\n") if e]
    assert events[:2] == [good_event.strip()] * 2
    error = orjson.loads(events[-1].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_stream_error"
    assert "not JSON" in error["error"]["message"]
    assert len(events) == 3 and good.stats.total_requests == 0
    with pytest.raises(openai.APIError):  # and an SDK raises, never a JSONDecodeError
        stream = await proxy.client().chat.completions.create(
            model="smart", messages=MESSAGES, stream=True
        )
        async for _ in stream:
            pass


@pytest.mark.parametrize("opt_in", [True, False])
async def test_a_content_filtered_answer_fails_over_only_when_the_group_opts_in(
    fakes: FakeFactory, proxies: ProxyFactory, opt_in: bool
) -> None:
    a = await fakes("a")
    b = await fakes("b")
    a.set_fault(
        Fault(
            status=400,
            body={
                "error": {
                    "message": "The response was filtered due to the prompt triggering content management policy.",
                    "type": "invalid_request_error",
                    "code": "content_filter",
                    "param": "prompt",
                }
            },
        )
    )
    models = (
        "  smart:\n"
        f"    failover_on_content_filter: {'true' if opt_in else 'false'}\n"
        "    deployments:\n      - {vendor: a, model: m}\n      - {vendor: b, model: m}\n"
    )
    proxy = await proxies(build_config({"a": a, "b": b}, models))
    client = proxy.client()
    if opt_in:
        raw = await client.chat.completions.with_raw_response.create(
            model="smart", messages=MESSAGES
        )
        assert raw.headers["x-proxy-attempts"] == "a/m=content_filtered, b/m=success"
    else:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="smart", messages=MESSAGES)
        assert refused.value.code == "content_filter"
        assert b.stats.total_requests == 0


# -- one generation per request ----------------------------------------------------------


def _storm_config(fakes_: dict[str, FakeOpenAI], serving: str, extra: str = "") -> str:
    return build_config(
        fakes_, f"  smart:\n    deployments:\n      - {{vendor: {serving}, model: m}}\n", extra
    )


async def _slow_upload(url: str, session: aiohttp.ClientSession, n: int) -> tuple[int, str]:
    body = orjson.dumps({"model": "smart", "messages": [{"role": "user", "content": f"r{n}"}]})
    pieces = [body[i : i + 16] for i in range(0, len(body), 16)]

    async def drip() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece
            await asyncio.sleep(1.0 / len(pieces))

    async with session.post(
        f"{url}/v1/chat/completions", data=drip(), headers={"Content-Type": "application/json"}
    ) as r:
        await r.read()
        return r.status, r.headers.get("x-proxy-deployment", "")


async def _reload_storm(
    proxy: RunningProxy, path: Path, texts: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> list[float]:
    """200 slow uploads while the config flips 20 times; the reloads' durations."""
    caplog.set_level(logging.INFO, logger="llmproxy.access")
    gw = proxy.gateway
    served_by: dict[str, set[str]] = {gw.config.version: set(gw.config.deployments)}
    durations: list[float] = []

    async def flip() -> None:
        for i in range(20):
            await asyncio.sleep(0.05)
            path.write_text(texts[i % 2 == 0])
            started = time.monotonic()
            config = await gw.reload_from_file()
            durations.append(time.monotonic() - started)
            served_by[config.version] = set(config.deployments)

    async with aiohttp.ClientSession() as session:
        results, _ = await asyncio.gather(
            asyncio.gather(*(_slow_upload(proxy.url, session, n) for n in range(200))), flip()
        )
    assert [s for s, _ in results if s != 200] == []
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"]
    lines = [line for line in lines if line.get("path") == "/v1/chat/completions"]
    assert len(lines) == 200
    for line in lines:  # answered by a deployment of the generation it arrived under
        assert line["deployment"] in served_by[line["config_version"]], line
    return durations


async def test_reloads_never_change_what_an_in_flight_request_sees(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await fakes("a"), await fakes("b")
    texts = (_storm_config({"a": a, "b": b}, "a"), _storm_config({"a": a, "b": b}, "b"))
    proxy = await proxies(texts[0])
    await _reload_storm(proxy, Path(proxy.config.source), texts, caplog)


async def test_reloads_answer_promptly_under_traffic_on_the_redis_backend(
    fakes: FakeFactory,
    proxies: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    redis_server: object,
) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    a, b = await fakes("a"), await fakes("b")
    state = f"state: {{backend: redis, url: '{url}'}}\n"
    health = "health_check: {interval_s: 0.2, timeout_s: 1}\n"
    texts = (
        _storm_config({"a": a, "b": b}, "a", state + health),
        _storm_config({"a": a, "b": b}, "b", state + health),
    )
    proxy = await proxies(texts[0])
    durations = await _reload_storm(proxy, Path(proxy.config.source), texts, caplog)
    assert max(durations) < 2.0, durations


async def test_a_deployment_that_cannot_serve_the_request_is_skipped_not_blamed(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    claude = await fakes("claude", vendor="anthropic")
    gpt = await fakes("gpt")
    models = (
        "  smart:\n    deployments:\n      - {vendor: claude, model: c}\n"
        "      - {vendor: gpt, model: g}\n"
        "  only-claude:\n    deployments:\n      - {vendor: claude, model: c}\n"
    )
    proxy = await proxies(
        build_config({"claude": claude, "gpt": gpt}, models, "breaker: {fail_max: 1}\n")
    )
    client = proxy.client()
    raw = await client.embeddings.with_raw_response.create(model="smart", input="x")
    assert raw.headers["x-proxy-attempts"] == "claude/c=unsupported, gpt/g=success"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model="only-claude", input="x")
    assert refused.value.code == "unsupported_parameter"
    assert "'claude'" in refused.value.message
    assert claude.stats.total_requests == 0
    assert proxy.gateway.deployments["claude/c"].breaker.state.name == "CLOSED"


async def test_an_endless_first_event_is_cut_at_the_size_cap_and_fails_over(
    fakes: FakeFactory, proxies: ProxyFactory, hostile: list[HostileVendor]
) -> None:
    endless = [chunk(b"data: {" + b"x" * 65536)] + [chunk(b"x" * 65536)] * 40  # ~2.6 MB, no end
    bad = await _hostile(hostile, Script(sse_head(), endless, linger_s=10))
    good = await fakes("good")
    config = _config(bad, good).replace("api_key: k}", "api_key: k, max_response_bytes: 1048576}")
    proxy = await proxies(config)
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, stream=True
    )
    assert raw.headers["x-proxy-attempts"] == "bad/m=server_error, good/m=success"
    assert "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
