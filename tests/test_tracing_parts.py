"""The parts of `proxy.tracing` on their own: what recorded content looks like in every
inbound API, the tables checked at import, and the accounting of spans that never made it
to a collector."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from typing import Any

import orjson
import pytest

from proxy.config import parse_config
from proxy.core.vendor_types import VENDOR_TYPES
from proxy.tracing import SpanDrops, start_tracing
from proxy.tracing.content import Budget, StreamText, input_messages, output_messages
from proxy.tracing.conventions import GEN_AI_PROVIDERS

KEY = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"


def test_every_vendor_type_has_a_gen_ai_provider_name() -> None:
    assert set(GEN_AI_PROVIDERS) == set(VENDOR_TYPES)


@pytest.mark.parametrize(
    ("body", "system", "messages"),
    [
        (  # OpenAI chat, with an image part: its type only
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                        ],
                    },
                ]
            },
            None,
            [
                {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
                {
                    "role": "user",
                    "parts": [{"type": "text", "content": "what is this?"}, {"type": "image_url"}],
                },
            ],
        ),
        (  # Anthropic Messages: system apart, tool results by type
            {
                "system": [{"type": "text", "text": "you are terse"}],
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
                ],
            },
            [{"type": "text", "content": "you are terse"}],
            [
                {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
                {"role": "user", "parts": [{"type": "tool_result"}]},
            ],
        ),
        (  # Responses API
            {"instructions": "obey", "input": "hello"},
            [{"type": "text", "content": "obey"}],
            [{"role": "user", "parts": [{"type": "text", "content": "hello"}]}],
        ),
        (  # legacy completions
            {"prompt": ["a", "b"]},
            None,
            [
                {"role": "user", "parts": [{"type": "text", "content": "a"}]},
                {"role": "user", "parts": [{"type": "text", "content": "b"}]},
            ],
        ),
    ],
)
def test_input_messages_of_each_inbound_api(
    body: dict[str, Any], system: Any, messages: list[dict[str, Any]]
) -> None:
    got_system, got_messages = input_messages(body, Budget(1000))
    assert (None if got_system is None else orjson.loads(got_system)) == system
    assert got_messages is not None and orjson.loads(got_messages) == messages


def test_the_budget_redacts_keys_and_caps_the_text() -> None:
    budget = Budget(40)
    assert budget.take(f"key {KEY} end") == "key [redacted] end"
    rest = budget.take("x" * 100)
    assert rest == "x" * (40 - len("key [redacted] end")) + "…"
    assert budget.take("more") is None
    # A key cut by the cap is redacted whole, never half-shown.
    assert Budget(10).take(f"{KEY} tail") == "[redacted]…"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            {
                "choices": [
                    {"message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}
                ]
            },
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "Hi!"}],
                    "finish_reason": "stop",
                }
            ],
        ),
        (
            {
                "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "t"}],
                "stop_reason": "tool_use",
            },
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "Hi"}, {"type": "tool_use"}],
                    "finish_reason": "tool_use",
                }
            ],
        ),
        (
            {"output": [{"type": "message", "content": [{"type": "output_text", "text": "yo"}]}]},
            [{"role": "assistant", "parts": [{"type": "text", "content": "yo"}]}],
        ),
    ],
)
def test_output_messages_of_each_api(answer: dict[str, Any], expected: Any) -> None:
    got = output_messages(orjson.dumps(answer), Budget(100))
    assert got is not None and orjson.loads(got) == expected


def test_an_embedding_has_no_output_text() -> None:
    assert output_messages(b'{"data": [{"embedding": [0.1]}]}', Budget(100)) is None


@pytest.mark.parametrize(
    "events",
    [
        [  # OpenAI chat chunks
            {"choices": [{"delta": {"role": "assistant"}}]},
            {"choices": [{"delta": {"content": "Hel"}}]},
            {"choices": [{"delta": {"content": "lo " + KEY[:12]}}]},
            {"choices": [{"delta": {"content": KEY[12:]}}]},
        ],
        [  # Anthropic events
            {"type": "message_start", "message": {}},
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hel"}},
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "lo " + KEY}},
        ],
        [  # Responses API events
            {"type": "response.output_text.delta", "delta": "Hel"},
            {"type": "response.output_text.delta", "delta": "lo " + KEY},
        ],
    ],
)
def test_stream_text_is_gathered_across_reads_and_redacted_as_a_whole(
    events: list[dict[str, Any]],
) -> None:
    wire = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    text = StreamText(Budget(100))
    for i in range(0, len(wire), 7):  # events split across reads
        text.feed(wire[i : i + 7])
    assert orjson.loads(text.messages()) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Hello [redacted]"}]}
    ]


async def test_closing_with_a_collector_that_never_answers_is_bounded_and_counts_the_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "30")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        config = parse_config(
            "vendors: {a: {type: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
            "models: {m: {deployments: [{vendor: a, model: x}]}}\n"
            f"tracing: {{enabled: true, endpoint: 'http://127.0.0.1:{silent.getsockname()[1]}'}}\n",
            env={},
        )
        drops = SpanDrops()
        tracing = start_tracing(config.tracing, "replica-1", drops)
        assert tracing is not None
        for i in range(5):
            tracing.tracer.start_span(f"span {i}").end()
        await asyncio.sleep(0.2)  # the export thread has taken them and waits for an answer
        await tracing.close(timeout_s=0.5)
    assert drops.counts() == {"queue_full": 0, "export_failed": 5}


def test_a_proxy_without_tracing_never_imports_the_sdk() -> None:
    """Tracing off costs no start-up time or memory: not even the API is loaded."""
    code = (
        "import sys\n"
        "from proxy.app import create_app\n"
        "from proxy.config import parse_config\n"
        "config = parse_config(\"vendors: {a: {type: openai, base_url: 'http://127.0.0.1:9/v1'}}\\n"
        'models: {m: {deployments: [{vendor: a, model: x}]}}\\n", env={})\n'
        "create_app(config)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'google.protobuf', 'grpc')))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_vendor_headers_plus_a_trace_context_reuse_what_was_encoded() -> None:
    from proxy.http1 import Headers, InvalidHeader
    from proxy.http1.request import encode_headers

    vendor = Headers({"Authorization": "Bearer k", "Accept": "application/json"})
    traced = vendor.plus({"traceparent": "00-ab-cd-01"})
    assert dict(traced) == {
        "Authorization": "Bearer k",
        "Accept": "application/json",
        "traceparent": "00-ab-cd-01",
    }
    assert encode_headers(traced) == encode_headers(dict(traced))
    # A header the vendor's set already has is replaced, never sent twice.
    replaced = vendor.plus({"Accept": "text/event-stream"})
    assert encode_headers(replaced).count(b"Accept:") == 1
    assert replaced["Accept"] == "text/event-stream"
    with pytest.raises(InvalidHeader):
        vendor.plus({"traceparent": "bad\r\nInjected: yes"})


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_a_requests_spans_are_freed_without_the_garbage_collector(ratio: float) -> None:
    """No reference cycle per request: the proxy's hot path leaves nothing for the cyclic
    collector, and tracing must not start feeding it."""
    import gc

    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.core.usage import Usage
    from proxy.tracing.spans import AttemptSpan, RequestSpan
    from proxy.vendors.base import UpstreamCall
    from proxy.vendors.http import JSONResponse

    config = parse_config(
        "vendors: {a: {type: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
        "models: {m: {deployments: [{vendor: a, model: x}]}}\n"
        f"tracing: {{enabled: true, endpoint: 'http://127.0.0.1:9', sample_ratio: {ratio}}}\n",
        env={},
    )
    tracing = start_tracing(config.tracing, "replica-1", SpanDrops())
    assert tracing is not None

    class Request:
        method = "POST"
        path = "/v1/chat/completions"
        flags = "01" if ratio else "00"  # the caller's decision: sampled or not
        headers = CIMultiDictProxy(
            CIMultiDict({"traceparent": f"00-{'a' * 32}-{'b' * 16}-{flags}"})
        )

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    answer = JSONResponse(200, b'{"model": "x", "choices": []}', Usage(3, 4, 0))

    def one() -> None:
        span = tracing.request(Request(), Request.path, "chat/completions", "rid")  # type: ignore[arg-type]
        span.admitting("m", body, None)
        attempt = span.attempt(
            config.deployments["a/x"],
            config.vendors["a"],
            5.0,
            UpstreamCall("chat/completions", b"{}", body, False, "rid"),
        )
        attempt.answered(0.01, answer)
        attempt.finished(None, None, answer.usage)
        span.finish(200)

    one()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            one()
        gc.collect()
        ours = [o for o in gc.garbage if isinstance(o, RequestSpan | AttemptSpan)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == []
