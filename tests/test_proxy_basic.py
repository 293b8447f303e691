"""The happy path through the official openai SDK: JSON, streams, completions, embeddings, models."""

from __future__ import annotations

import aiohttp

from proxy.fakes import FakeOpenAI
from tests.conftest import RunningProxy

MESSAGES = [{"role": "user", "content": "hello there"}]


async def test_chat_json_is_served_by_the_primary(
    pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    a, b, proxy = pair
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES
    )
    completion = raw.parse()
    assert (
        completion.choices[0].message.content == " ".join(a.pieces).replace("  ", " ")
        or completion.choices
    )
    assert completion.choices[0].message.content.startswith("Hello from a")
    assert completion.usage is not None and completion.usage.completion_tokens == len(a.pieces)
    assert raw.headers["x-proxy-deployment"] == "a/model-a"
    assert raw.headers["x-proxy-attempts"] == "a/model-a=success"
    assert raw.headers["x-request-id"]
    assert b.stats.total_requests == 0


async def test_body_passes_through_with_only_model_rewritten(
    pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    a, _, proxy = pair
    await proxy.client().chat.completions.create(
        model="smart",
        messages=MESSAGES,
        temperature=0.25,
        extra_body={
            "brand_new_param": {"nested": [1, 2.5, "x"]},
            "metadata": {"model": "not-rewritten"},
        },
    )
    seen = a.stats.last_requests[-1]
    assert seen.body["model"] == "model-a"
    assert seen.body["brand_new_param"] == {"nested": [1, 2.5, "x"]}
    assert seen.body["metadata"] == {"model": "not-rewritten"}
    assert seen.body["temperature"] == 0.25
    # The vendor's credential is sent, never the client's.
    assert seen.headers["authorization"] == "Bearer key-a"


async def test_client_bytes_are_spliced_not_reserialised(
    pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    from proxy.vendors.openai_compat import rewrite_model

    raw = b'{ "messages": [{"role":"user","content":"say \\"model\\": \\"x\\""}],\n  "model" : "smart", "x": 1.10 }'
    out = rewrite_model(raw, {"model": "smart"}, "gpt-5")
    assert (
        out
        == b'{ "messages": [{"role":"user","content":"say \\"model\\": \\"x\\""}],\n  "model":"gpt-5", "x": 1.10 }'
    )


async def test_chat_stream_relays_every_chunk(
    pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    a, _, proxy = pair
    stream = await proxy.client().chat.completions.create(
        model="smart", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == "".join(a.pieces)
    assert usage is not None and usage.completion_tokens == len(a.pieces)
    metrics = await proxy.metrics_text()
    assert (
        'llmproxy_upstream_attempts_total{deployment="a/model-a",outcome_class="success"} 1.0'
        in metrics
    )
    assert 'llmproxy_tokens_total{deployment="a/model-a",kind="completion"} 5.0' in metrics


async def test_completions_embeddings_and_models(
    pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    a, _, proxy = pair
    client = proxy.client()
    completion = await client.completions.create(model="smart", prompt="Say hi")
    assert completion.choices[0].text
    stream = await client.completions.create(model="smart", prompt="Say hi", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices])
    emb = await client.embeddings.create(model="smart", input=["a", "b"])
    assert len(emb.data) == 2 and emb.data[0].embedding
    models = await client.models.list()
    assert [m.id for m in models.data] == ["smart"]
    assert (await client.models.retrieve("smart")).id == "smart"
    assert a.stats.requests == {"/v1/completions": 2, "/v1/embeddings": 1}


async def test_health_endpoints(pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy]) -> None:
    _, _, proxy = pair
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/health/live") as r:
            assert r.status == 200
        async with s.get(f"{proxy.url}/health/ready") as r:
            assert r.status == 200
            assert (await r.json())["config_version"] == proxy.config.version


async def test_client_request_id_is_echoed(
    pair: tuple[FakeOpenAI, FakeOpenAI, RunningProxy],
) -> None:
    _, _, proxy = pair
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, extra_headers={"x-request-id": "trace-123"}
    )
    assert raw.headers["x-request-id"] == "trace-123"
