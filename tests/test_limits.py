"""Client keys and limits through the real proxy: auth, 403, rpm/tpm at the boundary under
concurrency, headers, SDK back-off, max_concurrent and loop detection."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import openai
import orjson
import pytest

from proxy.core.usage import estimate_tokens
from proxy.fakes.base import Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy
from tests.limits_helpers import KEY_A, KEY_B, chat_body, keyed_config, metric, post


def freeze(proxy: RunningProxy) -> list[float]:
    """Stop the limits' clock (buckets do not refill) so boundaries are exact; returns its cell."""
    now = [time.monotonic()]
    proxy.gateway.limits.clock = lambda: now[0]
    return now


async def test_open_proxy_needs_no_key_and_says_so_loudly(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import build_config, two_deployments

    a, b = await fakes("a"), await fakes("b")
    with caplog.at_level(logging.INFO, logger="llmproxy"):
        proxy = await proxies(build_config({"a": a, "b": b}, two_deployments()))
    assert any("the proxy is OPEN" in r.getMessage() for r in caplog.records)
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await post(s, proxy, chat_body(), key=None)
    assert status == 200
    assert not any(h.lower().startswith("x-ratelimit") for h in headers)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_authorization_header"),
        ({"Authorization": "Bearer "}, "invalid_authorization_header"),
        ({"Authorization": "Bearer"}, "invalid_authorization_header"),
        ({"Authorization": "Bearer sk-not-a-client-key"}, "invalid_api_key"),
        ({"x-api-key": "sk-not-a-client-key"}, "invalid_api_key"),
        ({"x-api-key": "  "}, "missing_api_key"),
    ],
)
async def test_missing_malformed_or_unknown_keys_get_a_clear_401(
    fakes: FakeFactory, proxies: ProxyFactory, headers: dict[str, str], code: str
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a))
    async with aiohttp.ClientSession() as s:
        status, _, body = await post(s, proxy, chat_body(), key=None, headers=headers)
    assert status == 401
    assert body["error"]["code"] == code
    assert "key" in body["error"]["message"]
    assert a.stats.total_requests == 0
    reason = "invalid_key" if code == "invalid_api_key" else "missing_key"
    text = await proxy.metrics_text()
    assert (
        metric(text, "llmproxy_client_limit_rejections_total", client="_unknown_", reason=reason)
        == 1
    )


async def test_both_sdks_key_styles_authenticate_and_groups_are_enforced(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a))
    async with aiohttp.ClientSession() as s:
        ok_bearer = await post(s, proxy, chat_body())
        ok_x_api_key = await post(s, proxy, chat_body(), key=None, headers={"x-api-key": KEY_A})
        forbidden = await post(s, proxy, {**chat_body(), "model": "other"})
        other_client = await post(s, proxy, {**chat_body(), "model": "other"}, key=KEY_B)
    assert ok_bearer[0] == ok_x_api_key[0] == 200
    assert forbidden[0] == 403
    assert forbidden[2]["error"]["code"] == "model_not_allowed"
    assert (
        "'other'" in forbidden[2]["error"]["message"]
        and "smart" in forbidden[2]["error"]["message"]
    )
    assert other_client[0] == 200  # team-b has no `models:`: every group
    text = await proxy.metrics_text()
    assert (
        metric(
            text,
            "llmproxy_client_limit_rejections_total",
            client="team-a",
            reason="model_not_allowed",
        )
        == 1
    )


async def test_rpm_is_exact_at_the_boundary_under_50_concurrent_requests(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a, "{rpm: 10}"))
    freeze(proxy)
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s, proxy, chat_body(f"q{i}")) for i in range(50)))
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 429]
        assert len(ok) == 10 and len(refused) == 40
        assert a.stats.total_requests == 10
        # Each admitted request saw a distinct remaining count: 9, 8, ... 0.
        assert sorted(int(h["x-ratelimit-remaining-requests"]) for _, h, _ in ok) == list(range(10))
        for _, h, body in refused:
            assert h["x-ratelimit-limit-requests"] == "10"
            assert h["x-ratelimit-remaining-requests"] == "0"
            assert h["x-ratelimit-reset-requests"] == "1m0s"  # empty bucket: 60 s to full
            assert h["retry-after"] == "6"  # one request per 6 s refills
            assert h["retry-after-ms"] == "6000"
            assert body["error"]["code"] == "rpm"
            assert "requests per minute" in body["error"]["message"]
            assert "Resets at" in body["error"]["message"]
    text = await proxy.metrics_text()
    assert (
        metric(text, "llmproxy_client_limit_rejections_total", client="team-a", reason="rpm") == 40
    )


async def test_tpm_reserves_estimates_and_settles_real_usage_exactly(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a", chunks=5)
    body = chat_body("x" * 200, max_tokens=5)
    raw = orjson.dumps(body)
    prompt_est, completion_est = estimate_tokens("chat/completions", body, len(raw))
    est = prompt_est + completion_est
    tpm = est * 7 + est // 2  # room for exactly 7 reservations
    proxy = await proxies(keyed_config(a, f"{{tpm: {tpm}}}"))
    freeze(proxy)
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s, proxy, raw) for _ in range(50)))
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 429]
        assert len(ok) == 7 and len(refused) == 43
        used = a.stats.tokens["prompt"] + a.stats.tokens["completion"]
        assert used <= tpm  # no overshoot: the vendor served only what was reserved
        for _, h, err in refused:
            assert err["error"]["code"] == "tpm"
            assert h["x-ratelimit-limit-tokens"] == str(tpm)
            assert int(h["retry-after"]) >= 1
        # All 7 have settled: the bucket holds tpm minus the vendor-reported usage, and the
        # next request's headers show that minus its own reservation.
        settled = a.stats.tokens["prompt"] + a.stats.tokens["completion"]
        status, h, _ = await post(s, proxy, raw)
        assert status == 200
        assert int(h["x-ratelimit-remaining-tokens"]) == tpm - settled - est
        reset_s = (settled + est) / (tpm / 60)
        assert _seconds(h["x-ratelimit-reset-tokens"]) == pytest.approx(reset_s, abs=0.002)


def _seconds(go: str) -> float:
    """Parse `1m2.5s` / `20ms` back into seconds."""
    if go.endswith("ms"):
        return int(go[:-2]) / 1000
    total = 0.0
    for unit, factor in (("h", 3600), ("m", 60)):
        if unit in go:
            head, go = go.split(unit, 1)
            total += int(head) * factor
    return total + float(go.rstrip("s") or 0)


async def test_openai_sdk_retry_honours_retry_after(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a, "{rpm: 20}"))  # one request per 3 s once empty
    async with aiohttp.ClientSession() as s:
        first = await asyncio.gather(*(post(s, proxy, chat_body(f"q{i}")) for i in range(20)))
    assert all(r[0] == 200 for r in first)
    client = proxy.client(api_key=KEY_A, max_retries=2, timeout=30)
    started = time.monotonic()
    answer = await client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "after the limit"}]
    )
    waited = time.monotonic() - started
    assert answer.choices[0].message.content
    text = await proxy.metrics_text()
    assert (
        metric(text, "llmproxy_client_limit_rejections_total", client="team-a", reason="rpm") == 1
    )
    # The SDK's own backoff would have retried after < 1 s; it waited for retry-after-ms.
    assert waited >= 1.5
    assert a.stats.total_requests == 21


async def test_max_concurrent_refuses_only_while_the_slots_are_taken(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a", chunks=4, chunk_delay_s=0.3)
    proxy = await proxies(keyed_config(a, "{max_concurrent: 3}"))
    async with aiohttp.ClientSession() as s:
        streams = []
        for i in range(3):
            r = await s.post(
                f"{proxy.url}/v1/chat/completions",
                json=chat_body(f"s{i}", stream=True),
                headers={"Authorization": f"Bearer {KEY_A}"},
            )
            assert r.status == 200
            await r.content.readany()  # the stream is under way
            streams.append(r)
        status, h, body = await post(s, proxy, chat_body("fourth"))
        assert status == 429
        assert body["error"]["code"] == "max_concurrent"
        assert h["retry-after"] == "1"
        other = await post(s, proxy, chat_body("other client"), key=KEY_B)
        assert other[0] == 200  # limits are per client
        for r in streams:
            await r.read()
            r.release()
        status, _, _ = await post(s, proxy, chat_body("fifth"))
        assert status == 200
    assert proxy.gateway.limits.clients["team-a"].in_flight == 0


async def test_loop_detection_fires_on_repeats_only(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a, "{loop_max_repeats: 3, loop_window_s: 60}"))
    client = proxy.client(api_key=KEY_A, max_retries=2, timeout=30)
    messages = [{"role": "user", "content": "fix the failing test"}]
    for _ in range(3):
        await client.chat.completions.create(model="smart", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as caught:
        # The same request again (streaming and a user tag do not make it different).
        await client.chat.completions.create(
            model="smart",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            user="agent-7",
        )
    err = caught.value
    assert err.code == "loop_detected"
    assert "loop_max_repeats 3" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    # Different requests are not loops, however many there are.
    for i in range(6):
        await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": f"step {i}"}]
        )
    text = await proxy.metrics_text()
    # Refused once: the SDK did not retry (x-should-retry: false).
    assert (
        metric(
            text, "llmproxy_client_limit_rejections_total", client="team-a", reason="loop_detected"
        )
        == 1
    )
    assert a.stats.total_requests == 9


async def test_every_response_to_a_keyed_client_carries_ratelimit_headers(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a, "{rpm: 100, tpm: 100000, tokens_per_day: 1000000}"))
    async with aiohttp.ClientSession() as s:
        answers = [
            await post(s, proxy, chat_body()),
            await post(s, proxy, chat_body(stream=True)),
            await post(s, proxy, {**chat_body(), "model": "nope"}),
            await post(s, proxy, {"model": "smart"}),
            await post(s, proxy, b"{not json"),
        ]
        a.set_fault(Fault(status=500))
        answers.append(await post(s, proxy, chat_body("upstream down")))
        a.clear_fault()
    assert [x[0] for x in answers] == [200, 200, 404, 400, 400, 502]
    for _, h, _ in answers:
        for kind in ("requests", "tokens", "tokens-day"):
            for part in ("limit", "remaining", "reset"):
                assert f"x-ratelimit-{part}-{kind}" in h


async def test_tokens_per_day_is_refused_until_an_admin_reset(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    from tests.limits_helpers import ADMIN_KEY, admin

    a = await fakes("a", chunks=5)
    proxy = await proxies(keyed_config(a, "{tokens_per_day: 60}"))
    async with aiohttp.ClientSession() as s:
        body = chat_body("x" * 40, max_tokens=5)
        statuses = [(await post(s, proxy, body | {"n": 1, "seed": i}))[0] for i in range(6)]
        assert statuses[0] == 200 and statuses[-1] == 429
        status, h, err = await post(s, proxy, body)
        assert status == 429 and err["error"]["code"] == "tokens_per_day"
        assert h["x-should-retry"] == "false" or int(h["retry-after"]) <= 60
        assert "00:00 UTC" in err["error"]["message"]
        metrics = await proxy.metrics_text()
        used = [
            ln for ln in metrics.splitlines() if ln.startswith("llmproxy_client_budget_used_ratio{")
        ]
        assert used == [
            f'llmproxy_client_budget_used_ratio{{client="team-a",limit="tokens_per_day"}} {used[0].split()[-1]}'
        ]
        assert float(used[0].split()[-1]) >= 1.0  # the alert's "near budget" is this gauge > 0.8
        code, reset = await admin(
            s, proxy.url, "POST", "/admin/clients/team-a/reset-usage", ADMIN_KEY
        )
        assert code == 200 and reset["reset"] is True
        assert reset["limits"]["tokens_per_day"]["used"] == 0
        status, h, _ = await post(s, proxy, body)
        assert status == 200  # access is back at once
        usage = await admin(s, proxy.url, "GET", "/admin/usage?client=team-a", ADMIN_KEY)
    # The ledger is the accounting record: a reset does not erase it.
    total = a.stats.tokens["prompt"] + a.stats.tokens["completion"]
    totals = usage[1]["totals"]
    assert totals["prompt_tokens"] + totals["completion_tokens"] == total


async def test_budget_usd_per_day_counts_the_deployments_prices(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a", chunks=5, cached_tokens=4)
    proxy = await proxies(keyed_config(a, "{budget_usd_per_day: 0.0003}"))
    async with aiohttp.ClientSession() as s:
        results = [
            await post(s, proxy, chat_body("y" * 80, max_tokens=5, seed=i)) for i in range(20)
        ]
    statuses = [r[0] for r in results]
    assert 200 in statuses and statuses[-1] == 429
    assert results[-1][2]["error"]["code"] == "budget_usd_per_day"
    refused_at = statuses.index(429)
    assert all(st == 429 for st in statuses[refused_at:])
    state = proxy.gateway.limits.clients["team-a"]
    assert state.budget is not None
    t = a.stats.tokens
    spent = ((t["prompt"] - t["cached"]) * 2.0 + t["cached"] * 0.5 + t["completion"] * 8.0) / 1e6
    assert state.budget.used == pytest.approx(spent)
    # Overshoot is bounded by one request's real cost.
    assert spent <= 0.0003 + spent / refused_at


async def test_the_access_log_names_the_client_never_its_key(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    import orjson

    from tests.limits_helpers import KEY_A

    a = await fakes("a")
    proxy = await proxies(keyed_config(a))
    with caplog.at_level(logging.INFO, logger="llmproxy.access"):
        async with aiohttp.ClientSession() as s:
            status, _, _ = await post(s, proxy, chat_body("hi"))
    assert status == 200
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"]
    assert [line["client"] for line in lines] == ["team-a"]
    assert KEY_A not in caplog.text
