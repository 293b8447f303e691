"""Failover on every failure class, the all-failed answer, and what must not fail over."""

from __future__ import annotations

import asyncio
import logging
import time

import openai
import orjson
import pytest

from proxy.fakes import FakeOpenAI, Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config, two_deployments

MESSAGES = [{"role": "user", "content": "hello"}]
Pair = tuple[FakeOpenAI, FakeOpenAI, RunningProxy]


async def _chat(proxy: RunningProxy, stream: bool = False) -> tuple[str, str, str]:
    """One request through the SDK; returns (served-by deployment, attempts header, text)."""
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="smart", messages=MESSAGES, stream=stream
    )
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        text = raw.parse().choices[0].message.content or ""
    return raw.headers["x-proxy-deployment"], raw.headers["x-proxy-attempts"], text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("preset", "outcome"),
    [
        ("insufficient_quota", "quota_exhausted"),
        ("rate_limited", "rate_limited"),
        ("request_too_large", "request_too_large"),
        ("overloaded", "overloaded"),
        ("server_error", "server_error"),
        ("bad_gateway", "server_error"),
        ("auth_error", "auth_error"),
        ("model_not_found", "model_unavailable"),
        ("refuse", "unreachable"),
        ("error_event_first", "overloaded"),
    ],
)
async def test_each_failure_class_fails_over(
    pair: Pair, preset: str, outcome: str, stream: bool
) -> None:
    a, b, proxy = pair
    if preset == "error_event_first":
        # Streams: an error event *before anything was relayed* is a failed attempt like
        # any other. (JSON requests get the same fault as a 503.)
        await a.apply_fault(Fault(error="overloaded", error_event_after_chunks=0))
    else:
        await a.apply_fault(Fault.preset(preset))
    served, attempts, text = await _chat(proxy, stream)
    assert served == "b/model-b"
    assert attempts == f"a/model-a={outcome}, b/model-b=success"
    assert text.startswith("Hello from b")
    metrics = await proxy.metrics_text()
    assert (
        f'llmproxy_failovers_total{{from_deployment="a/model-a",model_group="smart",reason="{outcome}"}} 1.0'
        in metrics
    )


async def test_quota_exhausted_primary_is_not_called_again_until_its_cooldown_ends(
    pair: Pair,
) -> None:
    a, _, proxy = pair
    a.set_fault(Fault.preset("insufficient_quota"))
    for _ in range(5):
        served, _, _ = await _chat(proxy)
        assert served == "b/model-b"
    assert a.stats.total_requests == 1
    dep = proxy.gateway.deployments["a/model-a"]
    assert dep.cooldown_left(time.monotonic()) > 3500  # the configured default, an hour
    metrics = await proxy.metrics_text()
    assert 'llmproxy_deployment_cooldown_seconds{deployment="a/model-a"} 35' in metrics
    # When the cooldown ends the primary takes traffic again.
    a.clear_fault()
    dep.cooldown_until = time.monotonic()
    served, _, _ = await _chat(proxy)
    assert served == "a/model-a"


async def test_retry_after_sets_the_cooldown(pair: Pair) -> None:
    a, _, proxy = pair
    a.set_fault(Fault.preset("rate_limited", retry_after_s=2))
    served, attempts, _ = await _chat(proxy)
    assert (served, attempts) == ("b/model-b", "a/model-a=rate_limited, b/model-b=success")
    left = proxy.gateway.deployments["a/model-a"].cooldown_left(time.monotonic())
    assert 1.0 < left <= 2.0
    a.clear_fault()
    served, _, _ = await _chat(proxy)
    assert served == "b/model-b" and a.stats.total_requests == 1  # still cooling: not asked
    await asyncio.sleep(left + 0.1)
    served, _, _ = await _chat(proxy)
    assert served == "a/model-a"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("preset", ["stall", "stall_first_byte", "black_hole"])
async def test_stall_past_the_first_byte_timeout_fails_over(
    fakes: FakeFactory, proxies: ProxyFactory, preset: str, stream: bool
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(
        build_config({"a": a, "b": b}, two_deployments()).replace(
            "first_byte_s: 5", "first_byte_s: 0.5"
        )
    )
    a.set_fault(Fault.preset(preset))
    started = time.monotonic()
    served, attempts, _ = await _chat(proxy, stream)
    assert served == "b/model-b"
    assert attempts == "a/model-a=timeout, b/model-b=success"
    assert time.monotonic() - started < 5  # bounded by the 0.5 s budget, not the fake's 60 s stall


async def test_deadline_is_split_across_attempts(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    """With a 2 s deadline and 2 attempts, a black-holed primary gets at most half of it."""
    a, b = await fakes("a"), await fakes("b")
    text = build_config({"a": a, "b": b}, two_deployments()).replace(
        "request_timeout_s: 20", "request_timeout_s: 2"
    )
    proxy = await proxies(
        text.replace("first_byte_s: 5", "first_byte_s: 30") + "failover: {max_attempts: 2}\n"
    )
    a.set_fault(Fault.preset("black_hole"))
    served, attempts, _ = await _chat(proxy)
    assert (served, attempts) == ("b/model-b", "a/model-a=timeout, b/model-b=success")
    assert a.stats.in_flight == 0  # the abandoned attempt was cancelled upstream, not left hanging


async def test_midstream_drop_after_first_chunk_ends_with_an_error_event(pair: Pair) -> None:
    a, b, proxy = pair
    a.chunk_delay_s = 0.05  # so the first chunk is relayed on its own before the drop
    a.set_fault(Fault.preset("drop_midstream"))
    stream = await proxy.client().chat.completions.create(
        model="smart", messages=MESSAGES, stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert received, "the first chunk was relayed before the drop"
    assert (
        "upstream_stream_error" in str(info.value.body)
        or "Upstream stream failed" in info.value.message
    )
    assert b.stats.total_requests == 0  # no failover after the commit point
    metrics = await proxy.metrics_text()
    assert (
        'llmproxy_stream_aborts_total{deployment="a/model-a",model_group="smart",outcome_class="server_error"}'
        in metrics
    )
    assert proxy.gateway.deployments["a/model-a"].breaker.fail_counter == 1


async def test_midstream_vendor_error_event_is_relayed_and_counted(pair: Pair) -> None:
    a, b, proxy = pair
    a.chunk_delay_s = 0.05
    a.set_fault(Fault.preset("error_event_midstream"))
    stream = await proxy.client().chat.completions.create(
        model="smart", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    metrics = await proxy.metrics_text()
    assert 'llmproxy_stream_aborts_total{deployment="a/model-a"' in metrics
    assert b.stats.total_requests == 0


async def test_error_event_before_anything_was_relayed_fails_over(pair: Pair) -> None:
    a, _, proxy = pair
    a.set_fault(Fault.preset("error_event_midstream"))  # chunks + error arrive in one read
    served, attempts, text = await _chat(proxy, stream=True)
    assert served == "b/model-b" and text.startswith("Hello from b")


async def test_client_error_is_returned_as_is_without_failover(pair: Pair) -> None:
    a, b, proxy = pair
    a.set_fault(Fault.preset("bad_request"))
    with pytest.raises(openai.BadRequestError) as info:
        await _chat(proxy)
    assert info.value.response.headers["x-proxy-attempts"] == "a/model-a=client_error"
    assert b.stats.total_requests == 0
    dep = proxy.gateway.deployments["a/model-a"]
    assert dep.breaker.fail_counter == 0 and dep.cooldown_left(time.monotonic()) == 0


async def test_context_too_long_is_a_client_error_without_a_fallback_group(pair: Pair) -> None:
    a, b, proxy = pair
    a.set_fault(Fault.preset("context_too_long"))
    with pytest.raises(openai.BadRequestError) as info:
        await _chat(proxy)
    assert info.value.code == "context_length_exceeded"
    assert b.stats.total_requests == 0


async def test_context_too_long_moves_to_the_configured_fallback_group(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b, big = await fakes("a"), await fakes("b"), await fakes("big")
    models = (
        two_deployments() + "    context_window_fallback: long\n  long:\n    deployments:\n"
        "      - {vendor: big, model: model-big}\n"
    )
    proxy = await proxies(build_config({"a": a, "b": b, "big": big}, models))
    a.set_fault(Fault.preset("context_too_long"))
    served, attempts, _ = await _chat(proxy)
    assert (served, attempts) == (
        "big/model-big",
        "a/model-a=context_too_long, big/model-big=success",
    )
    assert b.stats.total_requests == 0  # same-size models are not tried


async def test_all_deployments_failing_gives_one_aggregated_error(pair: Pair) -> None:
    a, b, proxy = pair
    a.set_fault(Fault.preset("server_error"))
    b.set_fault(Fault.preset("overloaded"))
    with pytest.raises(openai.APIStatusError) as info:
        await _chat(proxy)
    err = info.value
    assert err.status_code == 503  # overloaded is more recoverable than a 500
    assert (
        err.response.headers["x-proxy-attempts"] == "a/model-a=server_error, b/model-b=overloaded"
    )
    assert err.body is not None and err.body["code"] == "upstream_overloaded"  # type: ignore[index]
    assert "Traceback" not in err.response.text


async def test_all_rate_limited_gives_429_with_the_soonest_retry_after(pair: Pair) -> None:
    a, b, proxy = pair
    a.set_fault(Fault.preset("rate_limited", retry_after_s=7))
    b.set_fault(Fault.preset("rate_limited", retry_after_s=3))
    with pytest.raises(openai.RateLimitError) as info:
        await _chat(proxy)
    assert info.value.response.headers["retry-after"] == "3"


async def test_all_quota_exhausted_says_do_not_retry(pair: Pair) -> None:
    a, b, proxy = pair
    a.set_fault(Fault.preset("insufficient_quota"))
    b.set_fault(Fault.preset("insufficient_quota"))
    with pytest.raises(openai.RateLimitError) as info:
        await _chat(proxy)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.code == "insufficient_quota"


async def test_all_unreachable_is_a_502(pair: Pair) -> None:
    a, b, proxy = pair
    await a.apply_fault(Fault.preset("refuse"))
    await b.apply_fault(Fault.preset("refuse"))
    with pytest.raises(openai.APIStatusError) as info:
        await _chat(proxy, stream=True)
    assert info.value.status_code == 502
    assert (
        info.value.response.headers["x-proxy-attempts"]
        == "a/model-a=unreachable, b/model-b=unreachable"
    )


@pytest.mark.parametrize(
    ("preset", "outcome", "status", "detail"),
    [
        ("refuse", "unreachable", None, "unreachable while connecting: ConnectionRefusedError"),
        ("rate_limited", "rate_limited", 429, None),  # the vendor answered: its status says it
    ],
)
async def test_the_access_log_says_what_failed_for_an_attempt_without_an_answer(
    pair: Pair,
    caplog: pytest.LogCaptureFixture,
    preset: str,
    outcome: str,
    status: int | None,
    detail: str | None,
) -> None:
    a, _, proxy = pair
    await a.apply_fault(Fault.preset(preset))
    with caplog.at_level(logging.INFO, logger="llmproxy.access"):
        assert (await _chat(proxy))[0] == "b/model-b"
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"]
    failed, served = line["attempts"]
    assert (failed["outcome_class"], failed["status"]) == (outcome, status)
    if detail is None:
        assert "detail" not in failed
    else:  # then the OS's words, which differ by event loop
        assert failed["detail"].startswith(detail)
    assert served["outcome_class"] == "success" and "detail" not in served


async def test_a_vendor_that_took_the_request_and_never_answered_is_told_from_one_never_reached(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(
        build_config({"a": a, "b": b}, two_deployments()).replace(
            "first_byte_s: 5", "first_byte_s: 0.5"
        )
    )
    a.set_fault(Fault.preset("black_hole"))  # accepts the connection, reads, never answers
    with caplog.at_level(logging.INFO, logger="llmproxy.access"):
        assert (await _chat(proxy))[0] == "b/model-b"
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"]
    assert line["attempts"][0]["outcome_class"] == "timeout"
    assert line["attempts"][0]["detail"] == "timed out waiting for the first byte: TimeoutError"


async def test_max_attempts_bounds_the_attempts(fakes: FakeFactory, proxies: ProxyFactory) -> None:
    fs = {n: await fakes(n) for n in "abc"}
    models = "  smart:\n    deployments:\n" + "".join(
        f"      - {{vendor: {n}, model: m}}\n" for n in "abc"
    )
    proxy = await proxies(build_config(fs, models, "failover: {max_attempts: 2}\n"))
    for f in fs.values():
        f.set_fault(Fault.preset("server_error"))
    with pytest.raises(openai.InternalServerError):
        await _chat(proxy)
    assert [f.stats.total_requests for f in fs.values()] == [1, 1, 0]
