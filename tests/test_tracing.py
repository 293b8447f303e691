"""OpenTelemetry traces: a real proxy exporting OTLP/HTTP to a receiver started here that
decodes the real protobuf payloads, with the official SDKs as clients.

One request's journey is asserted span by span: its server span continues the client's
`traceparent`, each attempt is a child span with its outcome class, the GenAI attributes
and usage are there, no prompt text is, and the trace id is in the access log and the
response header. A dead collector costs clients nothing and counts the dropped spans.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.fakes import Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config, free_port
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
PROMPT = "The secret plan is in the blue folder"
TRACERESPONSE_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def sampled(traceparent: str) -> bool:
    """The sampled bit of a traceparent's (or traceresponse's) flags."""
    return bool(int(traceparent.rsplit("-", 1)[1], 16) & 1)


@pytest.fixture(autouse=True)
def _fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches leave every 50 ms (the SDK's default is 5 s), exports give up after 2 s."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2")


@pytest.fixture
async def receiver() -> AsyncIterator[OTLPReceiver]:
    r = OTLPReceiver()
    await r.start()
    yield r
    await r.stop()


def tracing_yaml(endpoint: str, **extra: Any) -> str:
    keys = {"enabled": True, "endpoint": endpoint, "service_name": "proxy-under-test", **extra}
    return "tracing: " + orjson.dumps(keys).decode() + "\n"


async def failover_proxy(
    fakes: FakeFactory, proxies: ProxyFactory, endpoint: str, extra: str = "", **tracing: Any
) -> tuple[Any, Any, RunningProxy]:
    """Fake vendors a (primary, answering 429) and b, a proxy tracing to `endpoint`."""
    a = await fakes("a")
    b = await fakes("b")
    a.set_fault(Fault.preset("rate_limited", retry_after_s=7))
    models = (
        "  smart:\n"
        "    deployments:\n"
        "      - {vendor: a, model: model-a}\n"
        "      - {vendor: b, model: model-b}\n"
    )
    proxy = await proxies(
        build_config({"a": a, "b": b}, models, tracing_yaml(endpoint, **tracing) + extra)
    )
    return a, b, proxy


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"]


def by_name(spans: list[ReceivedSpan], kind: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_ns)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failover_is_one_trace_continuing_the_clients_with_a_span_per_attempt(
    receiver: OTLPReceiver,
    fakes: FakeFactory,
    proxies: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="llmproxy.access")
    a, b, proxy = await failover_proxy(fakes, proxies, receiver.endpoint)
    client = proxy.client()
    messages = [{"role": "user", "content": PROMPT}]
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendorx=abc"}
    if stream:
        raw_stream = await client.chat.completions.with_raw_response.create(
            model="smart",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
        chunks = [c async for c in raw_stream.parse()]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        response_headers = raw_stream.headers
    else:
        raw = await client.chat.completions.with_raw_response.create(
            model="smart", messages=messages, extra_headers=headers
        )
        assert raw.parse().choices[0].message.content
        response_headers = raw.headers
    assert response_headers["x-proxy-attempts"] == "a/model-a=rate_limited, b/model-b=success"

    expected = 4 if stream else 3  # server, two attempts (and the relay of a stream)
    spans = await receiver.wait_for(expected)
    assert len(spans) == expected, [s.name for s in spans]

    # One trace: the client's. The header and the access log name it.
    assert {s.trace_id for s in spans} == {CLIENT_TRACE}
    traceresponse = TRACERESPONSE_RE.match(response_headers["traceresponse"])
    assert traceresponse is not None and traceresponse.group(1) == CLIENT_TRACE
    (line,) = access_lines(caplog)
    assert line["trace_id"] == CLIENT_TRACE

    (server,) = by_name(spans, "server")
    assert server.parent_span_id == CLIENT_SPAN  # the client's span is its parent
    assert server.span_id == traceresponse.group(2)
    assert server.name == "POST /v1/chat/completions"
    assert server.resource["service.name"] == "proxy-under-test"
    assert server.resource["service.instance.id"] == proxy.gateway.state.origin
    attrs = server.attributes
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "smart"
    assert attrs["llmproxy.model_group"] == "smart"
    assert attrs["llmproxy.deployment"] == "b/model-b"
    assert attrs["llmproxy.attempts"] == 2
    assert attrs["llmproxy.request_id"] == response_headers["x-request-id"]
    assert attrs["gen_ai.usage.input_tokens"] == line["tokens"]["prompt"] > 0
    assert attrs["gen_ai.usage.output_tokens"] == line["tokens"]["completion"] > 0
    assert server.status_code == 0

    # Two attempts, children of the server span, in order, with their outcome classes.
    first, second = by_name(spans, "client")
    assert first.parent_span_id == second.parent_span_id == server.span_id
    assert first.name == "chat model-a" and second.name == "chat model-b"
    assert first.attributes["llmproxy.outcome_class"] == "rate_limited"
    assert first.attributes["error.type"] == "rate_limited"
    assert first.status_code == 2  # error
    assert first.attributes["http.response.status_code"] == 429
    assert first.attributes["llmproxy.attempt.phase"] == "response"
    assert first.attributes["llmproxy.attempt.retry_after_s"] == 7
    assert first.attributes["llmproxy.attempt.cooldown_s"] == 7
    assert first.attributes["llmproxy.deployment"] == "a/model-a"
    assert second.attributes["llmproxy.outcome_class"] == "success"
    assert second.status_code == 0
    for attempt, model in ((first, "model-a"), (second, "model-b")):
        assert attempt.attributes["gen_ai.request.model"] == model
        assert attempt.attributes["gen_ai.operation.name"] == "chat"
        assert attempt.attributes["gen_ai.provider.name"] == "openai"
        assert attempt.attributes["llmproxy.vendor_type"] == "openai"
        assert attempt.attributes["server.address"] == "127.0.0.1"
    assert second.attributes["gen_ai.response.model"] == "model-b"
    assert second.attributes["llmproxy.attempt.time_to_first_byte_s"] > 0
    assert second.attributes["gen_ai.usage.input_tokens"] == line["tokens"]["prompt"]
    assert second.attributes["gen_ai.usage.output_tokens"] == line["tokens"]["completion"]

    # Each vendor was sent its attempt's span as the parent, with the client's tracestate.
    for fake, attempt in ((a, first), (b, second)):
        sent = fake.stats.last_requests[-1].headers
        assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"
        assert sent["tracestate"] == "vendorx=abc"

    if stream:
        (relay,) = [s for s in spans if s.name == "relay"]
        assert relay.parent_span_id == server.span_id
        assert relay.attributes["llmproxy.relay.end"] == "done"
        # every content chunk, the usage chunk and [DONE]
        assert relay.attributes["llmproxy.relay.events"] >= len(chunks) + 1
        assert relay.attributes["llmproxy.relay.bytes"] > 0

    # No prompt or completion text anywhere, unless asked for.
    for span in spans:
        for value in span.attributes.values():
            assert PROMPT not in str(value)
        assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in span.attributes)


async def test_admission_of_a_keyed_client_is_a_span_with_its_limits(
    receiver: OTLPReceiver,
    fakes: FakeFactory,
    proxies: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = await fakes("a")
    clients = (
        "clients:\n"
        "  - name: team-a\n"
        "    key_sha256: " + __import__("hashlib").sha256(b"team-a-key").hexdigest() + "\n"
        "    limits: {rpm: 2, tpm: 100000}\n"
    )
    models = "  smart:\n    deployments: [{vendor: a, model: model-a}]\n"
    proxy = await proxies(build_config({"a": a}, models, tracing_yaml(receiver.endpoint) + clients))
    client = proxy.client(api_key="team-a-key")
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        await client.chat.completions.create(model="smart", messages=messages)
    with pytest.raises(Exception) as refused:
        await client.chat.completions.create(model="smart", messages=messages)
    assert getattr(refused.value, "status_code", None) == 429

    spans = await receiver.wait_for(3 + 3 + 2)  # 2 x (server, admission, attempt); 1 x 2
    admissions = [s for s in spans if s.name == "admission"]
    assert len(admissions) == 3
    servers = {s.span_id: s for s in spans if s.kind == "server"}
    for span in admissions:
        assert span.parent_span_id in servers
        assert span.attributes["llmproxy.client"] == "team-a"
        assert sorted(span.attributes["llmproxy.admission.limits"]) == ["rpm", "tpm"]
        assert span.attributes["llmproxy.admission.shared"] is False
    results = [s.attributes["llmproxy.admission.result"] for s in admissions]
    assert results.count("admitted") == 2 and results.count("rpm") == 1
    admitted = next(
        s for s in admissions if s.attributes["llmproxy.admission.result"] == "admitted"
    )
    assert admitted.attributes["llmproxy.admission.remaining.requests"] in (0, 1)
    assert admitted.attributes["llmproxy.admission.estimated_tokens"] > 0
    refused_server = servers[
        next(
            s for s in admissions if s.attributes["llmproxy.admission.result"] == "rpm"
        ).parent_span_id
    ]
    assert refused_server.attributes["http.response.status_code"] == 429
    assert refused_server.attributes["llmproxy.error_code"] == "rpm"
    assert refused_server.attributes["llmproxy.client"] == "team-a"


async def test_record_content_is_opt_in_redacted_and_capped(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await failover_proxy(
        fakes, proxies, receiver.endpoint, record_content=True, content_max_chars=60
    )
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    client = proxy.client()
    long_prompt = f"my key is {key} and " + "x" * 500
    await client.chat.completions.create(
        model="smart",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": long_prompt},
        ],
    )
    spans = await receiver.wait_for(3)
    (server,) = by_name(spans, "server")
    recorded = orjson.loads(server.attributes["gen_ai.input.messages"])
    assert [m["role"] for m in recorded] == ["system", "user"]
    text = recorded[1]["parts"][0]["content"]
    assert key not in text and "[redacted]" in text
    total = sum(len(p.get("content", "")) for m in recorded for p in m["parts"])
    assert total <= 60 + 1  # the cap, and the mark of the cut
    assert text.endswith("…")
    # The cap is per span: nothing was left for the answer.
    output = orjson.loads(server.attributes["gen_ai.output.messages"])
    assert output[0]["role"] == "assistant" and output[0]["parts"] == []


async def test_record_content_of_a_stream_gathers_the_relayed_text(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await failover_proxy(
        fakes, proxies, receiver.endpoint, record_content=True, headers={"x-backend-key": "k1"}
    )
    client = proxy.client()
    stream = await client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    spans = await receiver.wait_for(4)
    (server,) = by_name(spans, "server")
    output = orjson.loads(server.attributes["gen_ai.output.messages"])
    assert output == [{"role": "assistant", "parts": [{"type": "text", "content": text}]}]
    assert orjson.loads(server.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]
    assert receiver.headers[0]["x-backend-key"] == "k1"  # tracing.headers, on every export


async def test_an_anthropic_client_failing_over_is_traced_the_same(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    """/v1/messages to an Anthropic vendor that is overloaded, then one that is not."""
    a = await fakes("a", vendor="anthropic")
    b = await fakes("b", vendor="anthropic")
    a.set_fault(Fault.preset("overloaded"))
    models = (
        "  claude:\n"
        "    deployments:\n"
        "      - {vendor: a, model: claude-a}\n"
        "      - {vendor: b, model: claude-b}\n"
    )
    proxy = await proxies(build_config({"a": a, "b": b}, models, tracing_yaml(receiver.endpoint)))
    client = proxy.anthropic_client()
    message = await client.messages.create(
        model="claude",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": TRACEPARENT},
    )
    assert message.content
    spans = await receiver.wait_for(3)
    (server,) = by_name(spans, "server")
    assert server.trace_id == CLIENT_TRACE and server.name == "POST /v1/messages"
    assert server.attributes["gen_ai.request.max_tokens"] == 64
    assert server.attributes["gen_ai.usage.input_tokens"] == message.usage.input_tokens
    assert server.attributes["gen_ai.usage.output_tokens"] == message.usage.output_tokens
    first, second = by_name(spans, "client")
    assert first.attributes["llmproxy.outcome_class"] == "overloaded"
    assert first.attributes["gen_ai.provider.name"] == "anthropic"
    assert second.attributes["llmproxy.outcome_class"] == "success"
    assert b.stats.last_requests[-1].headers["traceparent"].split("-")[2] == second.span_id


async def test_a_request_without_traceparent_starts_a_trace_and_unsampled_ones_still_get_an_id(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    models = "  smart:\n    deployments: [{vendor: a, model: model-a}]\n"
    proxy = await proxies(
        build_config({"a": a}, models, tracing_yaml(receiver.endpoint, sample_ratio=0.0))
    )
    client = proxy.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "hi"}]
    )
    unsampled = TRACERESPONSE_RE.match(raw.headers["traceresponse"])
    assert unsampled is not None and not sampled(raw.headers["traceresponse"])
    sent = a.stats.last_requests[-1].headers["traceparent"]
    assert sent.startswith(f"00-{unsampled.group(1)}-") and not sampled(sent)
    # A sampled caller wins over the ratio (parent-based sampling).
    raw = await client.chat.completions.with_raw_response.create(
        model="smart",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": TRACEPARENT},
    )
    assert sampled(raw.headers["traceresponse"])
    # Spans leave in the order they ended: the unsampled request's would have come first.
    spans = await receiver.wait_for(2)
    assert {s.trace_id for s in spans} == {CLIENT_TRACE}


async def test_an_unserved_request_and_its_errors_are_on_the_trace(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await failover_proxy(fakes, proxies, receiver.endpoint)
    a.set_fault(Fault.preset("overloaded"))
    b.set_fault(Fault.preset("server_error"))
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
        ) as resp:
            assert resp.status in (502, 503)
            header = resp.headers["traceresponse"]
        async with session.post(
            f"{proxy.url}/v1/chat/completions", json={"model": "nope", "messages": []}
        ) as resp:
            assert resp.status in (400, 404)
            assert TRACERESPONSE_RE.match(resp.headers["traceresponse"])
    spans = await receiver.wait_for(4)
    server = next(s for s in spans if s.kind == "server" and s.trace_id in header)
    assert server.status_code == 2
    final = server.attributes["llmproxy.outcome_class"]
    assert final in ("overloaded", "server_error") and server.attributes["error.type"] == final
    attempts = [s for s in spans if s.parent_span_id == server.span_id]
    assert [
        s.attributes["llmproxy.outcome_class"] for s in sorted(attempts, key=lambda s: s.start_ns)
    ] == [
        "overloaded",
        "server_error",
    ]
    bad = next(s for s in spans if s.kind == "server" and s.trace_id not in header)
    assert bad.attributes["http.response.status_code"] in (400, 404)
    assert bad.status_code == 0  # a client's error is not the server's


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """A collector that takes connections and never answers (the kernel's backlog)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("collector", ["refusing", "silent"])
async def test_a_dead_collector_costs_clients_nothing_and_drops_are_counted(
    fakes: FakeFactory,
    proxies: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
    silent_collector: str,
    collector: str,
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")  # a small queue fills at once
    refusing = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dead = refusing if collector == "refusing" else silent_collector
    a, b, proxy = await failover_proxy(fakes, proxies, dead)
    client = proxy.client()
    before = await proxy.metrics_text()
    assert 'llmproxy_tracing_spans_dropped_total{reason="queue_full"} 0.0' in before
    assert 'llmproxy_tracing_spans_dropped_total{reason="export_failed"} 0.0' in before

    async def one(i: int) -> None:
        stream = i % 2 == 1
        if stream:
            chunks = await client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": f"hi {i}"}], stream=True
            )
            assert [c async for c in chunks]
        else:
            answer = await client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": f"hi {i}"}]
            )
            assert answer.choices[0].message.content

    for _ in range(4):
        await asyncio.gather(*(one(i) for i in range(10)))  # every one answered: no error
    text = await proxy.metrics_text()
    dropped = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'llmproxy_tracing_spans_dropped_total\{reason="(\w+)"\} ([0-9.e+]+)', text
        )
    }
    # 40 requests made over 120 spans; the queue holds 8 and the export thread is stuck.
    assert dropped["queue_full"] > 40
    assert 'llmproxy_requests_total{model_group="smart",status="200"} 40.0' in text


async def test_tracing_off_sends_no_trace_context_and_adds_nothing(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmproxy.access")
    a = await fakes("a")
    models = "  smart:\n    deployments: [{vendor: a, model: model-a}]\n"
    proxy = await proxies(build_config({"a": a}, models))
    assert proxy.gateway.current.tracing is None
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": TRACEPARENT},
    )
    assert "traceresponse" not in raw.headers
    assert "traceparent" not in a.stats.last_requests[-1].headers
    (line,) = access_lines(caplog)
    assert "trace_id" not in line


async def test_a_reload_turns_tracing_on_and_off(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    models = "  smart:\n    deployments: [{vendor: a, model: model-a}]\n"
    off = build_config({"a": a}, models)
    proxy = await proxies(off)
    client = proxy.client()
    ask = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
    path = proxy.config.source
    with open(path, "w") as f:
        f.write(off + tracing_yaml(receiver.endpoint))
    await proxy.gateway.reload_from_file()
    assert proxy.gateway.current.tracing is not None
    await client.chat.completions.create(**ask)
    spans = await receiver.wait_for(2)
    assert {s.kind for s in spans} == {"server", "client"}
    with open(path, "w") as f:
        f.write(off)
    await proxy.gateway.reload_from_file()
    assert proxy.gateway.current.tracing is None
    raw = await client.chat.completions.with_raw_response.create(**ask)
    assert "traceresponse" not in raw.headers


async def test_a_hedged_attempt_that_lost_is_a_span_of_its_own(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    b = await fakes("b")
    a.set_fault(Fault(stall_s=30))  # no first byte for far longer than hedge_after_ms
    models = (
        "  smart:\n"
        "    hedge_after_ms: 100\n"
        "    deployments:\n"
        "      - {vendor: a, model: model-a}\n"
        "      - {vendor: b, model: model-b}\n"
    )
    proxy = await proxies(build_config({"a": a, "b": b}, models, tracing_yaml(receiver.endpoint)))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-proxy-attempts"] == "a/model-a=hedge_lost, b/model-b=success"
    spans = await receiver.wait_for(3)
    classes = {
        s.attributes["llmproxy.deployment"]: s.attributes["llmproxy.outcome_class"]
        for s in spans
        if s.kind == "client"
    }
    assert classes == {"a/model-a": "hedge_lost", "b/model-b": "success"}
    assert all(s.status_code == 0 for s in spans)  # losing a race is not an error


@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_translated_vendors_get_the_attempts_trace_context(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> None:
    """OpenAI SDK -> an Anthropic vendor (the native bridge) or Gemini (through litellm)."""
    a = await fakes("a", vendor=vendor)
    models = "  smart:\n    deployments: [{vendor: a, model: some-model}]\n"
    proxy = await proxies(build_config({"a": a}, models, tracing_yaml(receiver.endpoint)))
    answer = await proxy.client().chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": TRACEPARENT},
    )
    assert answer.choices[0].message.content
    spans = await receiver.wait_for(2)
    (attempt,) = [s for s in spans if s.kind == "client"]
    assert (
        attempt.attributes["gen_ai.provider.name"]
        == {
            "anthropic": "anthropic",
            "gemini": "gcp.gemini",
        }[vendor]
    )
    sent = a.stats.last_requests[-1].headers
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"


async def test_a_malformed_client_trace_context_starts_a_new_trace_and_never_reaches_a_vendor(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    models = "  smart:\n    deployments: [{vendor: a, model: model-a}]\n"
    proxy = await proxies(build_config({"a": a}, models, tracing_yaml(receiver.endpoint)))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={
            "traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # invalid
            "tracestate": "not a=valid;;state," + "x" * 600,
        },
    )
    assert raw.parse().choices[0].message.content
    own = TRACERESPONSE_RE.match(raw.headers["traceresponse"])
    assert own is not None and own.group(1) != "0" * 32
    sent = a.stats.last_requests[-1].headers
    assert sent["traceparent"].startswith(f"00-{own.group(1)}-")
    assert "tracestate" not in sent
    spans = await receiver.wait_for(2)
    (server,) = [s for s in spans if s.kind == "server"]
    assert server.parent_span_id == ""  # a root: the client's context was not valid


@pytest.fixture
async def grpc_receiver() -> AsyncIterator[OTLPReceiver]:
    r = OTLPReceiver(grpc=True)
    await r.start()
    yield r
    await r.stop()


async def test_grpc_export_with_the_configured_headers(
    grpc_receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await failover_proxy(
        fakes,
        proxies,
        grpc_receiver.endpoint,
        protocol="grpc",
        headers={"x-backend-key": "secret-123"},
    )
    await proxy.client().chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "hi"}]
    )
    spans = await grpc_receiver.wait_for(3)
    assert sorted(s.kind for s in spans) == ["client", "client", "server"]
    assert {s.trace_id for s in spans} == {spans[0].trace_id}
    assert grpc_receiver.headers[0]["x-backend-key"] == "secret-123"


async def test_the_responses_api_is_traced_with_its_route_templates(
    receiver: OTLPReceiver, fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, proxy = await failover_proxy(fakes, proxies, receiver.endpoint)
    client = proxy.client()
    created = await client.responses.create(model="smart", input="hi")
    assert created.output_text
    stored = await client.responses.retrieve(created.id)
    assert stored.id == created.id
    spans = await receiver.wait_for(4)
    servers = {s.name: s for s in spans if s.kind == "server"}
    create = servers["POST /v1/responses"]
    assert create.attributes["gen_ai.operation.name"] == "chat"
    assert create.attributes["llmproxy.deployment"] == "b/model-b"
    attempts = [s for s in spans if s.parent_span_id == create.span_id]
    assert sorted(s.attributes["llmproxy.outcome_class"] for s in attempts) == [
        "rate_limited",
        "success",
    ]
    get = servers["GET /v1/responses/{response_id}"]  # the route, not the id: bounded names
    assert get.attributes["http.route"] == "/v1/responses/{response_id}"
    assert get.attributes["url.path"] == f"/v1/responses/{created.id}"
