"""Secrets stay secret and clients cannot steer the proxy's upstream connections.

Distinctive keys (vendor credentials in both a key-like `sk-` shape and a bare hex shape
like Azure's, a client key, the admin key) go through traffic that includes failures, a
vendor that echoes our credential in its error message, a wrong client key and admin
calls; then every output surface is searched for them: response bodies and headers,
`/admin/status`, `/metrics`, every log record and whatever reached stderr.
"""

from __future__ import annotations

import logging

import aiohttp
import orjson
import pytest

from proxy.fakes import Fault
from proxy.health.breaker import BreakerState
from tests.conftest import FakeFactory, ProxyFactory, vendor_yaml
from tests.limits_helpers import sha

VENDOR_KEY_A = "sk-vendorA-SECRET-1d2c3b4a5f6e7d8c"
VENDOR_KEY_B = "9f8e7d6c5b4a39281706f5e4d3c2b1a0deadbeefcafe"  # no key-like prefix (Azure style)
CLIENT_KEY = "client-SECRET-7a6b5c4d3e2f1a0b"
WRONG_KEY = "wrong-SECRET-0a1b2c3d4e5f6a7b"
ADMIN_KEY = "admin-SECRET-a0b1c2d3e4f5a6b7"
SECRETS = (VENDOR_KEY_A, VENDOR_KEY_B, CLIENT_KEY, WRONG_KEY, ADMIN_KEY)

MODELS = (
    "models:\n"
    "  smart:\n"
    "    deployments:\n"
    "      - {vendor: a, model: model-a}\n"
    "      - {vendor: b, model: model-b}\n"
    "  solo-a:\n"
    "    deployments:\n"
    "      - {vendor: a, model: model-a}\n"
    "  solo-b:\n"
    "    deployments:\n"
    "      - {vendor: b, model: model-b}\n"
)


def _leaks(text: str) -> list[str]:
    # Also the keys' distinctive middles, in case something truncates or masks the ends.
    needles = [*SECRETS, *(s[4:20] for s in SECRETS)]
    return [n for n in needles if n in text]


async def test_no_secret_reaches_any_output_surface(
    fakes: FakeFactory,
    proxies: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await fakes("a", api_key=VENDOR_KEY_A)
    b = await fakes("b", api_key=VENDOR_KEY_B)
    text = (
        f"server: {{host: 127.0.0.1, port: 0, admin_key_sha256: {sha(ADMIN_KEY)}}}\n"
        "timeouts: {connect_s: 2, first_byte_s: 5, attempt_s: 10, stream_idle_s: 5}\n"
        "vendors:\n" + vendor_yaml("a", a, VENDOR_KEY_A) + vendor_yaml("b", b, VENDOR_KEY_B)
    )
    text += MODELS + f"clients:\n  - {{name: team, key_sha256: {sha(CLIENT_KEY)}}}\n"
    proxy = await proxies(text)
    seen: list[str] = []

    async def call(model: str, key: str, stream: bool = False) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with s.post(
            f"{proxy.url}/v1/chat/completions", data=orjson.dumps(body), headers=headers
        ) as r:
            seen.append(await r.text())
            seen.append(repr(dict(r.headers)))
            return r.status

    async with aiohttp.ClientSession() as s:
        assert await call("smart", CLIENT_KEY) == 200
        # Vendors that echo the credential they were sent in their error message.
        a.set_fault(Fault(status=401, message=f"Incorrect API key provided: {VENDOR_KEY_A}."))
        b.set_fault(Fault(status=500, message=f"internal error for key {VENDOR_KEY_B}"))
        assert await call("solo-a", CLIENT_KEY) >= 400
        assert await call("solo-b", CLIENT_KEY) >= 400
        assert await call("solo-b", CLIENT_KEY, stream=True) >= 400
        assert await call("smart", CLIENT_KEY) >= 400
        # An in-stream error after content was relayed: its message reaches the client.
        b.chunk_delay_s = 0.02
        dep = proxy.gateway.deployments["b/model-b"]
        dep.clear_cooldown()
        dep.breaker.force(BreakerState.CLOSED)
        b.set_fault(
            Fault(error_event_after_chunks=3, message=f"server error for key {VENDOR_KEY_B}")
        )
        assert await call("solo-b", CLIENT_KEY, stream=True) == 200, seen[-2]
        assert "server error for key [redacted]" in seen[-2]  # relayed, minus the key
        # A client error is returned as the vendor worded it: still without the key.
        b.set_fault(Fault(status=400, message=f"Bad request for key {VENDOR_KEY_B}"))
        dep.clear_cooldown()
        dep.breaker.force(BreakerState.CLOSED)
        assert await call("solo-b", CLIENT_KEY) == 400
        assert "Bad request" in seen[-2], seen[-2]
        assert await call("smart", WRONG_KEY) == 401
        # A malformed request (an oversized Authorization header): aiohttp answers 400 and
        # would log the start of the offending line, i.e. the key.
        async with s.get(
            f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}" + "x" * 9000}
        ) as r:
            assert r.status == 400
        for path in ("/admin/status", "/admin/usage"):
            async with s.get(
                f"{proxy.url}{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ) as r:
                assert r.status == 200, path
                seen.append(await r.text())
        async with s.get(
            f"{proxy.url}/admin/status", headers={"Authorization": f"Bearer {WRONG_KEY}"}
        ) as r:
            assert r.status == 401
            seen.append(await r.text())
        async with s.get(f"{proxy.url}/dashboard") as r:
            seen.append(await r.text())
        seen.append(await proxy.metrics_text())
    # The vendors did receive their keys (the test would prove nothing otherwise).
    assert a.stats.last_requests[-1].headers["authorization"] == f"Bearer {VENDOR_KEY_A}"
    seen.extend(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    out, err = capfd.readouterr()
    seen += [out, err]
    leaks = {surface[:80]: _leaks(surface) for surface in seen if _leaks(surface)}
    assert not leaks, leaks


async def test_clients_cannot_choose_the_upstream(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    evil = await fakes("evil")  # where a hostile client would like the proxy to connect
    proxy = await proxies(
        "server: {host: 127.0.0.1, port: 0}\n"
        "timeouts: {connect_s: 2, first_byte_s: 5, attempt_s: 10, stream_idle_s: 5}\n"
        "vendors:\n" + vendor_yaml("a", a) + "models:\n  smart:\n    deployments:\n"
        "      - {vendor: a, model: model-a}\n"
    )
    target = evil.base_url
    hostile_models = [
        target, f"{target}/chat/completions", "../../v1/chat/completions", "smart/../evil",
        "http://evil/", "//127.0.0.1:1/x", "smart?x=1", "smart#frag", "a/model-a",
    ]  # fmt: skip
    statuses = []
    async with aiohttp.ClientSession() as s:
        for model in hostile_models:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(f"{proxy.url}/v1/chat/completions", json=body) as r:
                statuses.append((model, r.status))
        body = {
            "model": "smart",
            "messages": [{"role": "user", "content": "hi"}],
            "base_url": target, "api_base": target, "url": target, "endpoint": target,
            "extra_headers": {"Host": evil.origin}, "extra_query": {"x": target},
        }  # fmt: skip
        headers = {
            "X-Forwarded-Host": evil.origin,
            "X-Original-URL": target,
            "Forwarded": f"host={evil.origin}",
        }
        async with s.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
    assert all(status == 404 for _, status in statuses), statuses
    assert evil.stats.total_requests == 0
    # Everything that reached the vendor went to its configured path, as its configured model.
    assert {r.path for r in a.stats.last_requests} == {"/v1/chat/completions"}
    assert {r.body["model"] for r in a.stats.last_requests} == {"model-a"}
