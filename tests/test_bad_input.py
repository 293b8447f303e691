"""Bad input gets a clear 4xx in OpenAI's error shape, never a 500, and never reaches a vendor."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from proxy.fakes import FakeOpenAI
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config, two_deployments

JSON = {"Content-Type": "application/json"}
OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def small(fakes: FakeFactory, proxies: ProxyFactory) -> tuple[FakeOpenAI, RunningProxy]:
    a, b = await fakes("a"), await fakes("b")
    text = build_config({"a": a, "b": b}, two_deployments())
    proxy = await proxies(
        text.replace("request_timeout_s: 20", "request_timeout_s: 20, max_body_bytes: 2000")
    )
    return a, proxy


async def _post(
    proxy: RunningProxy, path: str, data: bytes, headers: dict[str, str] | None = None
) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}{path}", data=data, headers=headers) as r,
    ):
        body = await r.read()
        return r.status, r.headers, body


CASES: list[tuple[str, str, bytes, dict[str, str] | None, int, str]] = [
    ("malformed JSON", "/v1/chat/completions", b'{"model": "smart",', JSON, 400, "not valid JSON"),
    ("invalid UTF-8", "/v1/chat/completions", b'{"model": "\xff"}', JSON, 400, "not valid JSON"),
    ("empty body", "/v1/chat/completions", b"", JSON, 400, "empty"),
    (
        "array body",
        "/v1/chat/completions",
        b"[1, 2]",
        JSON,
        400,
        "must be a JSON object, got an array",
    ),
    ("string body", "/v1/chat/completions", b'"hi"', JSON, 400, "must be a JSON object"),
    (
        "missing model",
        "/v1/chat/completions",
        b'{"messages": []}',
        JSON,
        400,
        "Missing required parameter: 'model'",
    ),
    (
        "model not a string",
        "/v1/chat/completions",
        b'{"model": 5, "messages": [{"role": "user"}]}',
        JSON,
        400,
        "Invalid type for 'model'",
    ),
    ("missing messages", "/v1/chat/completions", b'{"model": "smart"}', JSON, 400, "'messages'"),
    (
        "messages not a list",
        "/v1/chat/completions",
        b'{"model": "smart", "messages": "hi"}',
        JSON,
        400,
        "Invalid type for 'messages': expected an array, but got a string",
    ),
    (
        "empty messages",
        "/v1/chat/completions",
        b'{"model": "smart", "messages": []}',
        JSON,
        400,
        "must not be empty",
    ),
    (
        "message without role",
        "/v1/chat/completions",
        b'{"model": "smart", "messages": [{"content": "x"}]}',
        JSON,
        400,
        "'messages[0].role'",
    ),
    (
        "message not an object",
        "/v1/chat/completions",
        b'{"model": "smart", "messages": ["x"]}',
        JSON,
        400,
        "messages[0]",
    ),
    (
        "temperature a string",
        "/v1/chat/completions",
        b'{"model": "smart", "messages": [{"role": "user"}], "temperature": "hot"}',
        JSON,
        400,
        "Invalid type for 'temperature': expected a number, but got a string",
    ),
    (
        "stream not a boolean",
        "/v1/chat/completions",
        b'{"model": "smart", "messages": [{"role": "user"}], "stream": "yes"}',
        JSON,
        400,
        "'stream'",
    ),
    (
        "max_tokens a boolean",
        "/v1/chat/completions",
        b'{"model": "smart", "messages": [{"role": "user"}], "max_tokens": true}',
        JSON,
        400,
        "'max_tokens'",
    ),
    (
        "unknown model group",
        "/v1/chat/completions",
        b'{"model": "gpt-9", "messages": [{"role": "user"}]}',
        JSON,
        404,
        "The model 'gpt-9' does not exist",
    ),
    (
        "wrong content type",
        "/v1/chat/completions",
        b'{"model": "smart"}',
        {"Content-Type": "text/plain"},
        415,
        "Content-Type",
    ),
    (
        "form post",
        "/v1/chat/completions",
        b"model=smart",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "Content-Type",
    ),
    (
        "oversized body",
        "/v1/chat/completions",
        b'{"model": "smart", "pad": "' + b"x" * 3000 + b'"}',
        JSON,
        413,
        "max_body_bytes",
    ),
    ("completions without prompt", "/v1/completions", b'{"model": "smart"}', JSON, 400, "'prompt'"),
    ("embeddings without input", "/v1/embeddings", b'{"model": "smart"}', JSON, 400, "'input'"),
    (
        "streamed embeddings",
        "/v1/embeddings",
        b'{"model": "smart", "input": "x", "stream": true}',
        JSON,
        400,
        "Streaming is not supported",
    ),
    (
        "deeply nested",
        "/v1/chat/completions",
        b'{"model": "smart", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        JSON,
        413,
        "max_body_bytes",
    ),
    (
        "huge number",
        "/v1/chat/completions",
        b'{"model": "smart", "messages": [{"role": "user"}], "n": 1e999}',
        JSON,
        400,
        "not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_input_is_a_clear_4xx(
    small: tuple[FakeOpenAI, RunningProxy],
    path: str,
    body: bytes,
    headers: dict[str, str] | None,
    status: int,
    text: str,
) -> None:
    fake, proxy = small
    got_status, got_headers, raw = await _post(proxy, path, body, headers)
    assert got_status == status, raw
    assert got_headers["Content-Type"].startswith("application/json")
    import orjson

    error = orjson.loads(raw)["error"]
    assert text in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fake.stats.total_requests == 0


async def test_chunked_oversized_body_is_refused(small: tuple[FakeOpenAI, RunningProxy]) -> None:
    fake, proxy = small

    async def gen() -> Any:
        for _ in range(10):
            yield b"x" * 500

    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", data=gen(), headers=JSON) as r,
    ):
        assert r.status == 413
    assert fake.stats.total_requests == 0


async def test_unknown_route_and_method_are_json(small: tuple[FakeOpenAI, RunningProxy]) -> None:
    _, proxy = small
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/v1/nope") as r:
            assert r.status == 404
            assert "No route" in (await r.json())["error"]["message"]
        async with s.get(f"{proxy.url}/v1/chat/completions") as r:
            assert r.status == 405
            assert (await r.json())["error"]["message"].startswith("Method GET is not allowed")


async def test_the_sdk_sees_the_proxy_errors_as_its_own_exceptions(
    small: tuple[FakeOpenAI, RunningProxy],
) -> None:
    import openai

    _, proxy = small
    with pytest.raises(openai.NotFoundError) as info:
        await proxy.client().chat.completions.create(model="nope", messages=OK_MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


async def test_a_bad_request_does_not_disturb_a_concurrent_good_one(
    small: tuple[FakeOpenAI, RunningProxy],
) -> None:
    import asyncio

    fake, proxy = small
    fake.chunk_delay_s = 0.02
    client = proxy.client()
    good = asyncio.create_task(client.chat.completions.create(model="smart", messages=OK_MESSAGES))  # type: ignore[arg-type]
    bad = [await _post(proxy, "/v1/chat/completions", b"{garbage", JSON) for _ in range(5)]
    assert all(status == 400 for status, _, _ in bad)
    assert (await good).choices[0].message.content
