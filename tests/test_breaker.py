"""Circuit breaker: unit behaviour, and end to end under concurrency."""

from __future__ import annotations

import asyncio

import pytest

from proxy.fakes import Fault
from proxy.health.breaker import BreakerState, DeploymentBreaker, Permit
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config

MESSAGES = [{"role": "user", "content": "hello"}]


def test_opens_after_fail_max_consecutive_failures() -> None:
    b = DeploymentBreaker(fail_max=3, reset_timeout_s=10)
    for _ in range(2):
        b.record(b.acquire(0), success=False)
    b.record(b.acquire(0), success=True)  # a success resets the count
    for _ in range(2):
        b.record(b.acquire(0), success=False)
    assert b.state is BreakerState.CLOSED
    b.record(b.acquire(0), success=False)
    assert b.state is BreakerState.OPEN
    assert b.acquire(now=b.open_until() - 1) is Permit.DENIED


def test_neutral_outcomes_neither_count_nor_reset() -> None:
    b = DeploymentBreaker(fail_max=2, reset_timeout_s=10)
    b.record(b.acquire(0), success=False)
    b.record(b.acquire(0), success=None)  # e.g. a 429: not flakiness, not health either
    assert b.fail_counter == 1
    b.record(b.acquire(0), success=False)
    assert b.state is BreakerState.OPEN


def test_half_open_hands_out_exactly_one_trial() -> None:
    b = DeploymentBreaker(fail_max=1, reset_timeout_s=5)
    b.record(b.acquire(0), success=False)
    later = b.open_until() + 0.1
    assert b.would_admit(later)
    trial = b.acquire(later)
    assert trial is Permit.TRIAL and b.state is BreakerState.HALF_OPEN
    assert [b.acquire(later) for _ in range(20)] == [Permit.DENIED] * 20
    assert not b.would_admit(later)
    b.record(trial, success=False)  # the trial failed: open again
    assert b.state is BreakerState.OPEN
    trial = b.acquire(b.open_until() + 0.1)
    b.record(trial, success=True)
    assert b.state is BreakerState.CLOSED
    assert b.acquire(0) is Permit.NORMAL


def test_a_cancelled_trial_frees_the_slot() -> None:
    b = DeploymentBreaker(fail_max=1, reset_timeout_s=5)
    b.record(b.acquire(0), success=False)
    later = b.open_until() + 0.1
    b.release(b.acquire(later))
    assert b.acquire(later) is Permit.TRIAL


def test_forced_success_closes_an_open_breaker() -> None:
    b = DeploymentBreaker(fail_max=1, reset_timeout_s=60)
    b.record(b.acquire(0), success=False)
    b.record(Permit.FORCED, success=True)
    assert b.state is BreakerState.CLOSED


def test_state_changes_are_reported() -> None:
    seen: list[BreakerState] = []
    b = DeploymentBreaker(fail_max=1, reset_timeout_s=5, on_change=seen.append)
    b.record(b.acquire(0), success=False)
    b.record(b.acquire(b.open_until() + 1), success=True)
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


async def _breaker_gauge(proxy: RunningProxy, dep: str) -> float:
    for line in (await proxy.metrics_text()).splitlines():
        if line.startswith(f'llmproxy_breaker_state{{deployment="{dep}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no breaker gauge")


async def test_breaker_opens_half_opens_with_one_trial_under_concurrency_and_closes(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a, b = await fakes("a"), await fakes("b")
    models = (
        "  smart:\n    deployments:\n      - {vendor: a, model: m}\n      - {vendor: b, model: m}\n"
    )
    proxy = await proxies(
        build_config({"a": a, "b": b}, models, "breaker: {fail_max: 3, reset_timeout_s: 1}\n")
    )
    client = proxy.client()
    a.set_fault(Fault.preset("server_error"))
    for _ in range(3):
        await client.chat.completions.create(model="smart", messages=MESSAGES)
    assert await _breaker_gauge(proxy, "a/m") == 2  # open
    for _ in range(5):  # open: a is not asked at all
        await client.chat.completions.create(model="smart", messages=MESSAGES)
    assert a.stats.total_requests == 3

    async def burst() -> list[str]:
        async def one() -> str:
            raw = await client.chat.completions.with_raw_response.create(
                model="smart", messages=MESSAGES
            )
            return raw.headers["x-proxy-deployment"]

        return list(await asyncio.gather(*(one() for _ in range(20))))

    # Still broken, and slow, so the trial is in flight while the others arrive.
    a.set_fault(Fault.preset("server_error", latency_s=0.3))
    await asyncio.sleep(1.1)
    served = await burst()
    assert a.stats.total_requests == 4, "exactly one half-open trial reached the sick deployment"
    assert served.count("b/m") == 20  # the trial itself failed over too: nobody saw an error
    assert await _breaker_gauge(proxy, "a/m") == 2  # the failed trial opened it again

    a.set_fault(Fault(latency_s=0.3))  # healthy again, still slow
    await asyncio.sleep(1.1)
    served = await burst()
    assert a.stats.total_requests == 5
    assert served.count("a/m") == 1 and served.count("b/m") == 19
    assert await _breaker_gauge(proxy, "a/m") == 0  # the successful trial closed it
    raw = await client.chat.completions.with_raw_response.create(model="smart", messages=MESSAGES)
    assert raw.headers["x-proxy-deployment"] == "a/m"


async def test_when_every_deployment_is_open_the_least_bad_is_still_tried(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    a = await fakes("a")
    models = "  solo:\n    deployments:\n      - {vendor: a, model: m}\n"
    proxy = await proxies(
        build_config({"a": a}, models, "breaker: {fail_max: 2, reset_timeout_s: 600}\n")
    )
    client = proxy.client()
    a.set_fault(Fault.preset("server_error"))
    for _ in range(2):
        with pytest.raises(Exception, match="server"):
            await client.chat.completions.create(model="solo", messages=MESSAGES)
    assert await _breaker_gauge(proxy, "a/m") == 2
    a.clear_fault()
    # The breaker would refuse for ten minutes; a partial outage must not become a total one.
    completion = await client.chat.completions.create(model="solo", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert await _breaker_gauge(proxy, "a/m") == 0


def test_a_breaker_a_peer_opened_lets_this_replica_try_but_a_drained_one_stays_out() -> None:
    opened = DeploymentBreaker(fail_max=1, reset_timeout_s=5)
    opened.adopt(BreakerState.OPEN, opened_at=100.0, drained=False)
    assert opened.acquire(104.0) is Permit.DENIED
    assert opened.acquire(105.5) is Permit.TRIAL  # its own trial after reset_timeout_s
    drained = DeploymentBreaker(fail_max=1, reset_timeout_s=5)
    drained.adopt(BreakerState.OPEN, opened_at=100.0, drained=True)
    assert drained.acquire(1e9) is Permit.DENIED
    drained.adopt(BreakerState.CLOSED, opened_at=0.0, drained=False)  # undrained elsewhere
    assert drained.acquire(1e9) is Permit.NORMAL
