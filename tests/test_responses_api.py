"""`/v1/responses` through the official openai SDK: served natively by OpenAI-type fakes and
translated for Anthropic (and Gemini, through litellm), with failover before the first
byte, an error event after it, structured output, function tools, and stored responses
(previous_response_id, GET/DELETE) routed to the deployment that owns them."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pydantic
import pytest

from proxy.fakes import Fault
from proxy.health.breaker import BreakerState
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config

MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash", "openai": "gpt-4o"}
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    {
        "type": "function",
        "name": "get_time",
        "description": "Time in a zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
]
BOTH = pytest.mark.parametrize("vendor", ["openai", "anthropic"])
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


class Weather(pydantic.BaseModel):
    city: str
    degrees: int


async def _proxy(
    fakes: FakeFactory,
    proxies: ProxyFactory,
    *vendors: str,
    strategy: str = "priority",
    extra: str = "",
    **kw: Any,
) -> tuple[list[Any], RunningProxy]:
    started = [await fakes(f"v{i}", vendor=v, **kw) for i, v in enumerate(vendors)]
    models = f"  smart:\n    strategy: {strategy}\n    deployments:\n" + "".join(
        f"      - {{vendor: v{i}, model: {MODELS[v]}}}\n" for i, v in enumerate(vendors)
    )
    config = build_config({f"v{i}": f for i, f in enumerate(started)}, models, extra)
    return started, await proxies(config)


async def _create(client: openai.AsyncOpenAI, stream: bool, **kw: Any) -> Any:
    """A response, created as JSON or accumulated from its stream by the SDK."""
    if not stream:
        return await client.responses.create(**kw)
    async with client.responses.stream(**kw) as events:
        async for _ in events:
            pass
        return await events.get_final_response()


# ---------------------------------------------------------------------------- answers


@BOTH
async def test_text_json(fakes: FakeFactory, proxies: ProxyFactory, vendor: str) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, vendor, cached_tokens=4)
    raw = await proxy.client().responses.with_raw_response.create(
        model="smart", input="hello there", instructions="be brief"
    )
    resp = raw.parse()
    assert raw.headers["x-proxy-deployment"] == f"v0/{MODELS[vendor]}"
    assert resp.object == "response" and resp.status == "completed"
    assert resp.output_text == "".join(fake.pieces)
    assert resp.usage is not None and resp.usage.output_tokens == len(fake.pieces)
    assert resp.usage.input_tokens_details.cached_tokens == 4
    metrics = await proxy.metrics_text()
    deployment = f"v0/{MODELS[vendor]}"
    assert f'llmproxy_tokens_total{{deployment="{deployment}",kind="cached_prompt"}} 4.0' in metrics
    assert 'llmproxy_requests_total{model_group="smart",status="200"} 1.0' in metrics
    sent = fake.stats.last_requests[-1]
    if vendor == "anthropic":
        assert sent.path == "/v1/messages"
        assert sent.body["system"] == [{"type": "text", "text": "be brief"}]
        assert sent.body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "hello there"}]}
        ]
    else:  # native: the client's body, model rewritten
        assert sent.path == "/v1/responses"
        assert sent.body == {"model": "gpt-4o", "input": "hello there", "instructions": "be brief"}


@BOTH
async def test_stream_events_accumulate(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, vendor)
    kinds: list[str] = []
    async with proxy.client().responses.stream(model="smart", input="hello") as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_response()
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == len(fake.pieces)
    assert final.output_text == "".join(fake.pieces)
    assert final.usage is not None and final.usage.output_tokens == len(fake.pieces)


@BOTH
@STREAM
async def test_parallel_function_calls_round_trip(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str, stream: bool
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, vendor)
    client = proxy.client()
    first = await _create(client, stream, model="smart", input="weather and time?", tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert orjson.loads(calls[0].arguments)["city"]
    assert len({c.call_id for c in calls}) == 2
    history: list[Any] = [{"role": "user", "content": "weather and time?"}]
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history += [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"result {i}"}
        for i, c in enumerate(calls)
    ]
    second = await _create(client, stream, model="smart", input=history, tools=TOOLS, store=False)
    assert second.output_text == "".join(fake.pieces)
    sent = fake.stats.last_requests[-1].body
    if vendor == "anthropic":
        uses = [b for b in sent["messages"][1]["content"] if b["type"] == "tool_use"]
        results = sent["messages"][2]["content"]
        assert [u["id"] for u in uses] == [c.call_id for c in calls]
        assert [r["tool_use_id"] for r in results] == [c.call_id for c in calls]
        assert [r["content"] for r in results] == ["result 0", "result 1"]
    else:
        assert sent["input"] == orjson.loads(orjson.dumps(history))


@BOTH
@STREAM
async def test_structured_output_parse(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str, stream: bool
) -> None:
    _, proxy = await _proxy(fakes, proxies, vendor)
    client = proxy.client()
    if stream:
        async with client.responses.stream(
            model="smart", input="weather in Paris?", text_format=Weather
        ) as events:
            async for _ in events:
                pass
            parsed = (await events.get_final_response()).output_parsed
    else:
        parsed = (
            await client.responses.parse(model="smart", input="weather?", text_format=Weather)
        ).output_parsed
    assert isinstance(parsed, Weather)


async def test_reasoning_round_trips_anthropic_thinking(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, "anthropic")
    client = proxy.client()
    kw: dict[str, Any] = {"model": "smart", "reasoning": {"effort": "low", "summary": "auto"}}
    first = await _create(client, True, input="think, then call", tools=TOOLS[:1], **kw)
    sent = fake.stats.last_requests[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    reasoning, call = first.output[0], first.output[1]
    assert reasoning.type == "reasoning" and reasoning.summary[0].text
    assert reasoning.encrypted_content and call.type == "function_call"
    history = [
        {"role": "user", "content": "think, then call"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    await client.responses.create(input=history, tools=TOOLS[:1], store=False, **kw)
    turn = fake.stats.last_requests[-1].body["messages"][1]["content"]
    assert [b["type"] for b in turn] == ["thinking", "tool_use"]
    assert turn[0]["signature"]  # the vendor's signature came back with its thinking


# ---------------------------------------------------------------------------- failover


@STREAM
@pytest.mark.parametrize("fault", ["rate_limited", "overloaded", "server_error"])
async def test_failover_before_the_first_byte(
    fakes: FakeFactory, proxies: ProxyFactory, stream: bool, fault: str
) -> None:
    (primary, backup), proxy = await _proxy(fakes, proxies, "openai", "anthropic")
    primary.set_fault(Fault.preset(fault))
    raw = await proxy.client().responses.with_raw_response.create(
        model="smart", input="hi", stream=stream
    )
    assert raw.headers["x-proxy-deployment"] == "v1/claude-sonnet-4-5"
    classes = {"rate_limited": "rate_limited", "overloaded": "overloaded"}
    attempts = raw.headers["x-proxy-attempts"]
    assert attempts.startswith(f"v0/gpt-4o={classes.get(fault, 'server_error')}")
    text = "".join(backup.pieces)
    if stream:
        body = await raw.http_response.aread()
        assert b"event: response.completed" in body and text.encode() in body
    else:
        assert raw.parse().output_text == text


async def test_anthropic_overload_fails_over_to_openai(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (primary, backup), proxy = await _proxy(fakes, proxies, "anthropic", "openai")
    primary.set_fault(Fault.preset("overloaded"))  # Anthropic's 529
    resp = await _create(proxy.client(), True, model="smart", input="hi")
    assert resp.output_text == "".join(backup.pieces)


async def test_response_failed_right_after_the_preamble_fails_over(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (primary, backup), proxy = await _proxy(fakes, proxies, "openai", "openai")
    primary.set_fault(Fault(error_event_after_chunks=2))  # created, in_progress, failed
    raw = await proxy.client().responses.with_raw_response.create(
        model="smart", input="hi", stream=True
    )
    body = await raw.http_response.aread()
    assert raw.headers["x-proxy-attempts"] == "v0/gpt-4o=server_error, v1/gpt-4o=success"
    assert b"response.failed" not in body and b"response.completed" in body


@BOTH
async def test_error_after_the_first_byte_ends_the_stream(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> None:
    # Events apart in time, so the first byte has reached the client when the error comes.
    (fake, backup), proxy = await _proxy(fakes, proxies, vendor, "openai", chunk_delay_s=0.02)
    fake.set_fault(Fault(error_event_after_chunks=6))
    kinds: list[str] = []
    async with proxy.client().responses.stream(model="smart", input="hi") as stream:
        if vendor == "openai":  # the vendor's own response.failed, relayed as it came
            async for event in stream:
                kinds.append(event.type)
            assert kinds[-1] == "response.failed"
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                await stream.get_final_response()
        else:  # translated: the proxy's error event, which the SDK raises on
            with pytest.raises(openai.APIError, match="Upstream stream failed"):
                async for event in stream:
                    kinds.append(event.type)
    assert "response.output_text.delta" in kinds and "response.completed" not in kinds
    assert not backup.stats.last_requests  # committed: no failover after the first byte
    metrics = await proxy.metrics_text()
    assert f'llmproxy_stream_aborts_total{{deployment="v0/{MODELS[vendor]}"' in metrics


# ---------------------------------------------------------------------------- stored responses


async def _owner_group(fakes: FakeFactory, proxies: ProxyFactory, extra: str = "") -> Any:
    """Two OpenAI accounts behind one round-robin group: each request may go either way,
    except those about a stored response."""
    return await _proxy(fakes, proxies, "openai", "openai", strategy="weighted", extra=extra)


@STREAM
async def test_previous_response_id_goes_to_its_owner(
    fakes: FakeFactory, proxies: ProxyFactory, stream: bool
) -> None:
    (a, b), proxy = await _owner_group(fakes, proxies)
    client = proxy.client()
    first = await _create(client, stream, model="smart", input="remember 7")
    owner = a if first.id in a.responses.store else b
    assert first.id in owner.responses.store
    previous = first.id
    for _ in range(4):  # round robin would alternate; a continuation stays with its owner
        raw = await client.responses.with_raw_response.create(
            model="smart", input="and now?", previous_response_id=previous
        )
        assert raw.headers["x-proxy-deployment"] == f"{owner.name}/gpt-4o"
        previous = raw.parse().id
        assert previous in owner.responses.store
    # The owner out of service: said plainly, never sent to the other account.
    proxy.gateway.deployments[f"{owner.name}/gpt-4o"].breaker.force(BreakerState.OPEN)
    before = len((b if owner is a else a).stats.last_requests)
    with pytest.raises(openai.InternalServerError) as err:
        await client.responses.create(model="smart", input="x", previous_response_id=previous)
    assert err.value.status_code == 503
    assert f"vendor '{owner.name}'" in err.value.message and "drained" in err.value.message
    proxy.gateway.deployments[f"{owner.name}/gpt-4o"].breaker.force(BreakerState.CLOSED)
    owner.set_fault(Fault.preset("rate_limited", retry_after_s=30))
    with pytest.raises(openai.APIStatusError) as err:  # the owner's own 429, not a failover
        await client.responses.create(model="smart", input="x", previous_response_id=previous)
    assert "can only be continued at vendor" in err.value.message
    with pytest.raises(openai.InternalServerError) as err:  # and now it is cooling down
        await client.responses.create(model="smart", input="x", previous_response_id=previous)
    assert "cooling down after rate_limited" in err.value.message
    assert 25 <= int(err.value.response.headers["retry-after"]) <= 30
    assert len((b if owner is a else a).stats.last_requests) == before


async def test_previous_response_id_a_translating_vendor_cannot_serve(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    _, proxy = await _proxy(fakes, proxies, "anthropic")
    with pytest.raises(openai.BadRequestError) as err:
        await proxy.client().responses.create(
            model="smart", input="x", previous_response_id="resp_unknown"
        )
    assert err.value.param == "previous_response_id"
    assert "vendor 'v0'" in err.value.message and "no conversation state" in err.value.message


async def test_unknown_previous_response_id_skips_translating_vendors(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude, gpt), proxy = await _proxy(fakes, proxies, "anthropic", "openai")
    with pytest.raises(openai.NotFoundError) as err:
        await proxy.client().responses.create(
            model="smart", input="x", previous_response_id="resp_nobody_has"
        )
    assert err.value.response.headers["x-proxy-attempts"] == (
        "v0/claude-sonnet-4-5=unsupported, v1/gpt-4o=client_error"
    )
    assert not claude.stats.last_requests
    health = proxy.gateway.deployments["v1/gpt-4o"]
    assert health.cooldown_reason == "" and health.breaker.state is BreakerState.CLOSED


async def test_get_delete_and_input_items_go_to_the_owner(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (a, b), proxy = await _owner_group(fakes, proxies)
    client = proxy.client()
    created = [await client.responses.create(model="smart", input=f"n{i}") for i in range(4)]
    for resp in created:
        got = await client.responses.with_raw_response.retrieve(resp.id)
        assert got.parse().id == resp.id and got.parse().output_text == resp.output_text
        owner = "v0" if resp.id in a.responses.store else "v1"
        assert got.headers["x-proxy-deployment"] == f"{owner}/gpt-4o"
    items = await client.responses.input_items.list(created[0].id)
    assert [i.type for i in items.data] == ["message"]
    await client.responses.delete(created[0].id)
    assert created[0].id not in a.responses.store and created[0].id not in b.responses.store
    with pytest.raises(openai.NotFoundError) as err:  # the owner's 404, relayed
        await client.responses.retrieve(created[0].id)
    assert "not found" in err.value.message
    with pytest.raises(openai.NotFoundError) as err:  # an id this proxy never saw
        await client.responses.retrieve("resp_never_seen")
    assert err.value.code == "response_not_found"
    assert "not known to this proxy" in err.value.message
    metrics = await proxy.metrics_text()
    assert 'llmproxy_requests_total{model_group="smart",status="404"} 1.0' in metrics


async def test_stateless_requests_are_not_remembered(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    _, proxy = await _proxy(fakes, proxies, "openai")
    client = proxy.client()
    resp = await client.responses.create(model="smart", input="x", store=False)
    with pytest.raises(openai.NotFoundError) as err:
        await client.responses.retrieve(resp.id)
    assert err.value.code == "response_not_found"


CLIENTS = """clients:
  - {name: team-a, key: "${A_KEY:-key-a}", models: [smart]}
  - {name: team-b, key: "${B_KEY:-key-b}", models: [smart]}
"""


async def test_stored_responses_belong_to_the_client_that_made_them(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, "openai", extra=CLIENTS)
    team_a, team_b = proxy.client(api_key="key-a"), proxy.client(api_key="key-b")
    resp = await team_a.responses.create(model="smart", input="secret")
    assert (await team_a.responses.retrieve(resp.id)).id == resp.id
    with pytest.raises(openai.NotFoundError):
        await team_b.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        await team_b.responses.create(model="smart", input="x", previous_response_id=resp.id)
    with pytest.raises(openai.AuthenticationError):
        await proxy.client(api_key="wrong").responses.retrieve(resp.id)
    async with (
        aiohttp.ClientSession() as s,
        s.delete(f"{proxy.url}/v1/responses/{resp.id}") as r,
    ):
        assert r.status == 401  # no key
    ledger = proxy.gateway.limits.clients["team-a"]
    assert ledger.in_flight == 0


async def test_input_tokens(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    for vendor in ("openai", "anthropic"):
        (fake,), proxy = await _proxy(fakes, proxies, vendor)
        counted = await proxy.client().responses.input_tokens.count(
            model="smart", input="count these words please", instructions="be brief"
        )
        assert counted.input_tokens > 0
        expected = (
            "/v1/responses/input_tokens" if vendor == "openai" else "/v1/messages/count_tokens"
        )
        assert fake.stats.last_requests[-1].path == expected
    _, proxy = await _proxy(fakes, proxies, "gemini")
    with pytest.raises(openai.NotFoundError) as err:
        await proxy.client().responses.input_tokens.count(model="smart", input="x")
    assert "gemini" in err.value.message


# ---------------------------------------------------------------------------- translation


async def test_codex_tools_reach_anthropic(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    """Codex's namespace tool is flattened and restored; its hosted web_search becomes
    Anthropic's server-side search; what had no equivalent is reported."""
    (fake,), proxy = await _proxy(fakes, proxies, "anthropic")
    tools: list[Any] = [
        {
            "type": "namespace",
            "name": "multi_agent_v1",
            "description": "Sub-agents.",
            "tools": [
                {
                    "type": "function",
                    "name": "spawn_agent",
                    "strict": False,
                    "parameters": {"type": "object", "properties": {"task": {"type": "string"}}},
                }
            ],
        },
        {"type": "web_search", "external_web_access": False},
    ]
    raw = await proxy.client().responses.with_raw_response.create(
        model="smart", input="delegate", tools=tools, tool_choice="auto", store=False
    )
    call = raw.parse().output[0]
    assert call.type == "function_call"
    assert (call.name, call.namespace) == ("spawn_agent", "multi_agent_v1")
    assert raw.headers["x-proxy-dropped-params"] == "tools[1].external_web_access"
    sent = fake.stats.last_requests[-1].body["tools"]
    assert sent[0]["name"] == "multi_agent_v1__spawn_agent"
    assert sent[1] == {"type": "web_search_20250305", "name": "web_search"}


async def test_a_field_no_deployment_can_carry_is_a_400_naming_it(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (claude, gpt), proxy = await _proxy(fakes, proxies, "anthropic", "openai")
    raw = await proxy.client().responses.with_raw_response.create(
        model="smart", input="x", tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}]
    )
    assert raw.headers["x-proxy-attempts"] == (
        "v0/claude-sonnet-4-5=unsupported, v1/gpt-4o=success"
    )
    _, only_claude = await _proxy(fakes, proxies, "anthropic")
    with pytest.raises(openai.BadRequestError) as err:
        await only_claude.client().responses.create(
            model="smart", input="x", tools=[{"type": "code_interpreter"}]
        )
    assert err.value.param == "tools[0].type"
    assert "vendor 'v0'" in err.value.message and "code_interpreter" in err.value.message


async def test_strict_params_refuses_to_drop_hints(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, "anthropic")
    raw = await proxy.client().responses.with_raw_response.create(
        model="smart", input="x", store=False, text={"verbosity": "low"}
    )
    assert raw.headers["x-proxy-dropped-params"] == "text.verbosity"
    assert raw.parse().output_text == "".join(fake.pieces)
    text = build_config(
        {"v0": fake},
        "  smart:\n    strict_params: true\n    deployments:\n"
        "      - {vendor: v0, model: claude-sonnet-4-5}\n",
    )
    strict_proxy = await proxies(text)
    with pytest.raises(openai.BadRequestError) as err:
        await strict_proxy.client().responses.create(
            model="smart", input="x", text={"verbosity": "low"}
        )
    assert err.value.param == "text.verbosity" and "strict_params" in err.value.message


@STREAM
async def test_gemini_through_the_chat_bridge(
    fakes: FakeFactory, proxies: ProxyFactory, stream: bool
) -> None:
    (fake,), proxy = await _proxy(fakes, proxies, "gemini")
    client = proxy.client()
    resp = await _create(client, stream, model="smart", input="hello")
    assert resp.output_text == "".join(fake.pieces)
    called = await _create(client, stream, model="smart", input="weather?", tools=TOOLS[:1])
    assert [item.type for item in called.output] == ["function_call"]
    assert called.output[0].name == "get_weather"


async def test_azure_native_responses(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    for version, path in (
        ("v1", "/openai/v1/responses"),
        ("2025-04-01-preview", "/openai/responses"),
    ):
        fake = await fakes("az", vendor="azure", api_key="az-key")
        text = (
            "server: {host: 127.0.0.1, port: 0}\n"
            f"vendors:\n  az: {{type: azure, base_url: '{fake.origin}', api_key: az-key, "
            f"api_version: '{version}'}}\n"
            "models:\n  smart:\n    deployments:\n      - {vendor: az, model: my-gpt}\n"
        )
        proxy = await proxies(text)
        client = proxy.client()
        resp = await _create(client, True, model="smart", input="hi")
        sent = fake.stats.last_requests[-1]
        assert sent.path == path and sent.body["model"] == "my-gpt"
        assert (await client.responses.retrieve(resp.id)).id == resp.id


async def test_session_headers_keep_a_conversation_on_one_deployment(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    (a, b), proxy = await _proxy(fakes, proxies, "openai", "openai", strategy="cache-affinity")
    client = proxy.client()
    for session in ("s-1", "s-2", "s-3", "s-4"):
        served = set()
        for turn in range(3):
            raw = await client.responses.with_raw_response.create(
                model="smart", input=f"turn {turn}", store=False, prompt_cache_key=session
            )
            served.add(raw.headers["x-proxy-deployment"])
            header = await client.responses.with_raw_response.create(
                model="smart", input=f"turn {turn}", store=False,
                extra_headers={"session-id": session},
            )  # fmt: skip
            served.add(header.headers["x-proxy-deployment"])
        assert len(served) == 1


async def test_bad_bodies_are_400s(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    _, proxy = await _proxy(fakes, proxies, "anthropic", "openai")
    bodies: list[Any] = [
        {"input": "x"},
        {"model": "smart", "input": 5},
        {"model": "smart", "input": [1]},
        {"model": "smart", "input": "x", "tools": [1]},
        {"model": "smart", "input": "x", "tools": "x"},
        {"model": "smart", "input": [{"type": "message", "role": "user", "content": 3}]},
        {"model": "smart", "input": [{"type": "function_call_output"}], "store": "no"},
    ]
    async with aiohttp.ClientSession() as s:
        for body in bodies:
            async with s.post(f"{proxy.url}/v1/responses", json=body) as r:
                assert 400 <= r.status < 500, (body, await r.text())
                assert (await r.json())["error"]["message"]


async def test_polling_a_stored_response_is_not_a_loop(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    extra = (
        "clients:\n  - {name: poller, key: '${POLL_KEY:-k-poll}', "
        "limits: {loop_max_repeats: 2, loop_window_s: 60}}\n"
    )
    _, proxy = await _proxy(fakes, proxies, "openai", extra=extra)
    client = proxy.client(api_key="k-poll")
    resp = await client.responses.create(model="smart", input="x", background=True)
    for _ in range(5):
        assert (await client.responses.retrieve(resp.id)).id == resp.id
    for _ in range(2):
        await client.responses.create(model="smart", input="same", store=False)
    with pytest.raises(openai.RateLimitError) as err:  # a model call repeated still is
        await client.responses.create(model="smart", input="same", store=False)
    assert err.value.code == "loop_detected"
