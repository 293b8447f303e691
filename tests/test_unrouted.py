"""Requests for an endpoint the proxy lacks: a JSON 404 (or 405) listing every route, one
access-log line, and a count under the bounded `model_group="_no_route_"`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import FakeFactory, ProxyFactory, build_config, two_deployments


async def test_an_unknown_path_is_answered_logged_and_counted(
    fakes: FakeFactory, proxies: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments()))
    before = await proxy.metrics_text()
    # Born at 0, so the first stray client shows in increase() and an alert can fire on it.
    assert 'llmproxy_requests_total{model_group="_no_route_",status="404"} 0.0' in before
    caplog.set_level(logging.INFO, logger="llmproxy.access")
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{proxy.url}/v1/assistants", json={"model": "smart"}, headers={"x-request-id": "r-1"}
        ) as r:
            assert r.status == 404
            message = (await r.json())["error"]["message"]
        async with s.get(f"{proxy.url}/v1/chat/completions") as r:
            assert r.status == 405
    assert message.startswith("No route for POST /v1/assistants. This proxy serves: ")
    for route in (
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/embeddings",
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
        "GET /v1/models",
        "GET /health/ready",
        "GET /metrics",
        "GET /admin/status",
        "POST /admin/reload",
    ):
        assert route in message, route
    await asyncio.sleep(0.01)
    lines: list[dict[str, Any]] = [
        orjson.loads(r.getMessage()) for r in caplog.records if r.name == "llmproxy.access"
    ]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/v1/assistants", 404),
        ("GET", "/v1/chat/completions", 405),
    ]
    assert lines[0]["model_group"] == "_no_route_" and lines[0]["request_id"] == "r-1"
    after = await proxy.metrics_text()
    assert 'llmproxy_requests_total{model_group="_no_route_",status="404"} 1.0' in after
    assert 'llmproxy_requests_total{model_group="_no_route_",status="405"} 1.0' in after
    assert a.stats.total_requests == b.stats.total_requests == 0


async def test_a_404_from_a_route_is_not_a_missing_route(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    """An unknown model group on a real route keeps its own answer and label."""
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(build_config({"a": a, "b": b}, two_deployments()))
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/v1/models/nope") as r:
        assert r.status == 404
        assert "does not exist on this proxy" in (await r.json())["error"]["message"]
    metrics = await proxy.metrics_text()
    assert 'llmproxy_requests_total{model_group="_no_route_",status="404"} 0.0' in metrics
