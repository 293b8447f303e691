"""The admin API: nothing without the admin key, loopback-only without one configured,
and each action doing what ops expect (logged)."""

from __future__ import annotations

import logging
import time

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.api.admin import ADMIN_ROUTES, require_admin
from proxy.app import GATEWAY, create_app
from proxy.config import parse_config
from proxy.core.errors import ApiError
from proxy.fakes.base import Fault
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config
from tests.limits_helpers import ADMIN_KEY, KEY_A, admin, chat_body, keyed_config, post, sha

# Every admin route, concretely (a route added to ADMIN_ROUTES must be added here).
CALLS = [
    ("GET", "/admin/status"),
    ("GET", "/admin/usage?client=team-a"),
    ("POST", "/admin/clients/team-a/reset-usage"),
    ("POST", "/admin/deployments/a%2Fmodel-a/breaker"),
    ("DELETE", "/admin/deployments/a%2Fmodel-a/cooldown"),
    ("POST", "/admin/reload"),
]


def test_every_admin_route_is_covered_here() -> None:
    assert len(ADMIN_ROUTES) == len(CALLS)
    assert {m for m, _, _ in ADMIN_ROUTES} == {m for m, _ in CALLS}


@pytest.mark.parametrize(("method", "path"), CALLS)
@pytest.mark.parametrize("key", [None, "wrong-key", KEY_A, ""])
async def test_no_admin_call_works_without_the_admin_key(
    fakes: FakeFactory, proxies: ProxyFactory, method: str, path: str, key: str | None
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a))
    before = proxy.gateway.deployments["a/model-a"].breaker.state
    async with aiohttp.ClientSession() as s:
        status, body = await admin(s, proxy.url, method, path, key, json={"state": "open"})
    assert status == 401
    assert body["error"]["code"] in ("missing_admin_key", "invalid_admin_key")
    assert proxy.gateway.deployments["a/model-a"].breaker.state == before


@pytest.mark.parametrize(("method", "path"), CALLS)
async def test_the_admin_key_opens_every_route(
    fakes: FakeFactory, proxies: ProxyFactory, method: str, path: str
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a))
    async with aiohttp.ClientSession() as s:
        status, _ = await admin(s, proxy.url, method, path, ADMIN_KEY, json={"state": "closed"})
    assert status == 200


async def test_without_an_admin_key_only_loopback_clients_are_served(
    fakes: FakeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a = await fakes("a")
    config = parse_config(keyed_config(a, admin=False), env={})
    assert config.server.admin_key_sha256 is None
    app = create_app(config)
    with caplog.at_level(logging.WARNING, logger="llmproxy"):
        await app[GATEWAY].start()
    try:
        assert any(
            "admin API answers loopback clients only" in r.getMessage() for r in caplog.records
        )
        local = {"Host": "localhost:4000"}
        json = {"Content-Type": "application/json"}
        for method, remote, headers, allowed in (
            ("GET", "127.0.0.1", local, True),
            ("GET", "::1", {"Host": "[::1]:4000"}, True),
            ("GET", "127.0.0.1", {"Host": "127.0.0.1"}, True),
            ("GET", "10.0.0.8", local, False),
            ("GET", "192.168.1.20", local, False),
            ("GET", "", local, False),
            # A DNS-rebound name reaches loopback with a foreign Host.
            ("GET", "127.0.0.1", {"Host": "attacker.example:4000"}, False),
            ("GET", "127.0.0.1", {}, False),
            # A page of another site, driving this machine's browser.
            ("GET", "127.0.0.1", {**local, "Origin": "https://attacker.example"}, False),
            ("GET", "127.0.0.1", {**local, "Origin": "http://localhost:4000"}, True),
            ("GET", "127.0.0.1", {**local, "Sec-Fetch-Site": "cross-site"}, False),
            # A write must be JSON: a cross-site form post cannot be, without a preflight.
            ("POST", "127.0.0.1", local, False),
            ("POST", "127.0.0.1", {**local, "Content-Type": "text/plain"}, False),
            ("POST", "127.0.0.1", {**local, **json}, True),
        ):
            request = make_mocked_request(method, "/admin/reload", headers=headers, app=app)
            request = request.clone(remote=remote)
            if allowed:
                require_admin(request)
            else:
                with pytest.raises(ApiError) as refused:
                    require_admin(request)
                assert refused.value.status == 403
                assert "server.admin_key" in refused.value.message
    finally:
        await app[GATEWAY].close()


async def test_the_admin_key_can_come_from_the_environment(fakes: FakeFactory) -> None:
    a = await fakes("a")
    text = keyed_config(a, admin=False).replace(
        "server: {", "server: {admin_key: ${LLM_PROXY_ADMIN_KEY}, ", 1
    )
    config = parse_config(text, env={"LLM_PROXY_ADMIN_KEY": ADMIN_KEY})
    assert config.server.admin_key_sha256 == sha(ADMIN_KEY)
    assert config.server.admin_key is None  # only the digest is kept


async def test_draining_a_deployment_holds_until_it_is_closed_again(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(
        build_config(
            {"a": a, "b": b},
            "  smart:\n    deployments:\n      - {vendor: a, model: model-a}\n"
            "      - {vendor: b, model: model-b}\n",
            f"server: {{host: 127.0.0.1, admin_key_sha256: {sha(ADMIN_KEY)}}}\n"
            "breaker: {fail_max: 3, reset_timeout_s: 1}\n",
        ).replace("server: {host: 127.0.0.1, port: 0, request_timeout_s: 20}\n", "", 1)
    )
    path = "/admin/deployments/a%2Fmodel-a/breaker"
    async with aiohttp.ClientSession() as s:
        with caplog.at_level(logging.INFO, logger="llmproxy.admin"):
            status, body = await admin(s, proxy.url, "POST", path, json={"state": "open"})
        assert status == 200 and body == {
            "deployment": "a/model-a",
            "breaker": "open",
            "drained": True,
        }
        assert any(
            getattr(r, "event", None) == "admin_action"
            and getattr(r, "action", None) == "force-breaker"
            for r in caplog.records
        )
        for _ in range(3):
            assert (await post(s, proxy, chat_body(), key=None))[1][
                "x-proxy-deployment"
            ] == "b/model-b"
        breaker = proxy.gateway.deployments["a/model-a"].breaker
        assert not breaker.would_admit(time.monotonic() + 3600)  # no trial after reset_timeout_s
        assert 'llmproxy_breaker_state{deployment="a/model-a"} 2.0' in await proxy.metrics_text()
        status, body = await admin(s, proxy.url, "POST", path, json={"state": "closed"})
        assert status == 200 and body["breaker"] == "closed"
        assert (await post(s, proxy, chat_body(), key=None))[1]["x-proxy-deployment"] == "a/model-a"
        assert a.stats.total_requests == 1
        # Bad input: a clear 400, not a 500.
        for bad in ({"state": "half-open"}, {}, ["open"]):
            status, err = await admin(s, proxy.url, "POST", path, json=bad)
            assert status == 400 and err["error"]["param"] == "state"
        status, err = await admin(
            s, proxy.url, "POST", "/admin/deployments/nope%2Fx/breaker", json={"state": "open"}
        )
        assert status == 404 and "a/model-a" in err["error"]["message"]


async def test_clearing_a_cooldown_routes_to_the_deployment_again(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    text = build_config(
        {"a": a, "b": b},
        "  smart:\n    deployments:\n      - {vendor: a, model: model-a}\n"
        "      - {vendor: b, model: model-b}\n",
    ).replace("server: {", f"server: {{admin_key_sha256: {sha(ADMIN_KEY)}, ", 1)
    proxy: RunningProxy = await proxies(text)
    a.set_fault(Fault(error="insufficient_quota"))
    async with aiohttp.ClientSession() as s:
        assert (await post(s, proxy, chat_body(), key=None))[1]["x-proxy-deployment"] == "b/model-b"
        a.clear_fault()
        assert (await post(s, proxy, chat_body(), key=None))[1]["x-proxy-deployment"] == "b/model-b"
        status, body = await admin(s, proxy.url, "DELETE", "/admin/deployments/a/model-a/cooldown")
        assert status == 200
        assert body["reason"] == "quota_exhausted" and body["was_left_s"] > 3000
        assert (await post(s, proxy, chat_body(), key=None))[1]["x-proxy-deployment"] == "a/model-a"


async def test_usage_and_status_answer_for_clients(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    proxy = await proxies(keyed_config(a, "{rpm: 50, tokens_per_day: 100000}"))
    async with aiohttp.ClientSession() as s:
        await post(s, proxy, chat_body())
        status, st = await admin(s, proxy.url, "GET", "/admin/status")
        assert status == 200 and st["open"] is False and "generated_at" in st
        team = st["clients"]["team-a"]
        assert team["today"]["requests"] == 1
        assert team["limits"]["rpm"]["limit"] == 50 and team["limits"]["rpm"]["remaining"] == 49
        assert st["clients"]["team-b"]["today"] == {"requests": 0}
        status, all_usage = await admin(s, proxy.url, "GET", "/admin/usage?days=7")
        assert status == 200 and [r["client"] for r in all_usage["rows"]] == ["team-a"]
        for bad in ("0", "x", "400"):
            status, err = await admin(s, proxy.url, "GET", f"/admin/usage?days={bad}")
            assert status == 400 and err["error"]["param"] == "days"
        status, err = await admin(s, proxy.url, "GET", "/admin/usage?client=nobody")
        assert status == 404 and "team-a" in err["error"]["message"]
        status, err = await admin(s, proxy.url, "POST", "/admin/clients/nobody/reset-usage")
        assert status == 404
