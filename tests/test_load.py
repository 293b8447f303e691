"""Under load, with one of two deployments dead, clients see zero errors; weighted routing spreads."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from proxy.fakes import Fault
from tests.conftest import FakeFactory, ProxyFactory, build_config, two_deployments

MESSAGES = [{"role": "user", "content": "load"}]


@pytest.mark.parametrize(
    "death", ["refuse", "server_error", "insufficient_quota", "drop_first_byte"]
)
async def test_500_requests_half_streaming_with_the_primary_dead(
    fakes: FakeFactory, proxies: ProxyFactory, death: str
) -> None:
    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(
        build_config(
            {"a": a, "b": b}, two_deployments(), "breaker: {fail_max: 5, reset_timeout_s: 1}\n"
        )
    )
    if death == "drop_first_byte":
        a.set_fault(Fault(drop_after_chunks=0))  # streams die before their first byte; JSON is fine
    else:
        await a.apply_fault(Fault.preset(death))
    client = proxy.client(timeout=30)
    semaphore = asyncio.Semaphore(20)
    served: Counter[str] = Counter()
    errors: list[str] = []

    async def one(i: int) -> None:
        async with semaphore:
            try:
                if i % 2:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="smart",
                        messages=MESSAGES,
                        stream=True,  # type: ignore[arg-type]
                    )
                    chunks = [c async for c in raw.parse()]
                    assert chunks and chunks[-1].choices[0].finish_reason == "stop"
                else:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="smart",
                        messages=MESSAGES,  # type: ignore[arg-type]
                    )
                    assert raw.parse().choices[0].message.content
                served[raw.headers["x-proxy-deployment"]] += 1
            except Exception as exc:  # collected: the assertion below reports them all
                errors.append(f"{i}: {exc!r}")

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(500))), timeout=120)
    assert errors == []
    if death != "drop_first_byte":
        assert served == {"b/model-b": 500}
        # The dead primary was asked a bounded number of times, not 500.
        assert a.stats.total_requests <= 60


async def test_weighted_strategy_spreads_by_weight(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    models = (
        "  smart:\n    strategy: weighted\n    deployments:\n"
        "      - {vendor: a, model: m, weight: 3}\n      - {vendor: b, model: m, weight: 1}\n"
    )
    proxy = await proxies(build_config({"a": a, "b": b}, models))
    client = proxy.client()
    order = []
    for _ in range(40):
        raw = await client.chat.completions.with_raw_response.create(
            model="smart", messages=MESSAGES
        )  # type: ignore[arg-type]
        order.append(raw.headers["x-proxy-deployment"])
    assert Counter(order) == {"a/m": 30, "b/m": 10}
    assert "b/m,b/m" not in ",".join(order)  # smooth: never two of the light one in a row
    # Losing one sends everything to the other, still without errors.
    await a.apply_fault(Fault.preset("refuse"))
    for _ in range(10):
        raw = await client.chat.completions.with_raw_response.create(
            model="smart", messages=MESSAGES
        )  # type: ignore[arg-type]
        assert raw.headers["x-proxy-deployment"] == "b/m"
