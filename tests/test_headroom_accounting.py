"""The headroom arithmetic on its own: vendors' headers, reservations, resets, staleness, and
the cluster's grants in a real Redis (the end-to-end behaviour is in test_headroom.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from proxy.health.headroom import Headroom, capacity_ratio
from proxy.health.headroom_share import HeadroomShare
from proxy.state.base import BucketClaim, HeadroomReport
from proxy.state.redis import RedisBackend
from proxy.vendors.ratelimit import parse_go_duration, read_buckets
from tests.conftest import free_port
from tests.redis_server import RedisServer

NOW_WALL = 1_750_000_000.0
NEED = (100, 20)  # prompt, completion tokens of one request


def openai_headers(requests: int, tokens: int, reset: str = "10s") -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "50",
        "x-ratelimit-remaining-requests": str(requests),
        "x-ratelimit-reset-requests": reset,
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": str(tokens),
        "x-ratelimit-reset-tokens": reset,
    }


def test_read_buckets_reads_both_header_families_and_refuses_garbage() -> None:
    openai = read_buckets(openai_headers(7, 900, "1m30.5s"), NOW_WALL)
    assert openai == [("requests", 7, 50, 90.5), ("tokens", 900, 10000, 90.5)]
    anthropic = read_buckets(
        {
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": "2025-06-15T15:07:00Z",
            "anthropic-ratelimit-output-tokens-remaining": "8000",
            "anthropic-ratelimit-output-tokens-reset": "2025-06-15T15:06:40.5Z",
        },
        time.mktime(time.strptime("2025-06-15T15:06:20", "%Y-%m-%dT%H:%M:%S")) - time.timezone,
    )
    assert anthropic == [("input_tokens", 39000, 40000, 40.0), ("output_tokens", 8000, None, 20.5)]
    # Azure's Responses surface has sent -1; a reset that is no duration is no reset.
    assert read_buckets({"x-ratelimit-remaining-requests": "-1"}, NOW_WALL) is None
    assert read_buckets(
        {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "soon"}, NOW_WALL
    ) == [("requests", 3, None, None)]
    assert read_buckets({"content-type": "application/json"}, NOW_WALL) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("59.4s", 59.4),
        ("120ms", 0.12),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("20us", 20e-6),
        ("0", 0.0),
        ("1e3s", None),
        ("-1s", None),
        ("infs", None),
        ("s", None),
        ("ms", None),
    ],
)
def test_go_durations_fast_path_and_regex_agree(text: str, seconds: float | None) -> None:
    value = parse_go_duration(text)
    assert value == pytest.approx(seconds) if seconds is not None else value is None


def test_reservations_since_the_figures_count_until_answered() -> None:
    h = Headroom()
    first = h.reserve(1.0, NEED)
    h.answered(first, openai_headers(3, 9000), 1.1)  # as of t=1.0: 3 requests left
    in_flight = [h.reserve(1.2 + i / 10, NEED) for i in range(2)]
    assert h.fits(1.5, NEED)  # 3 left, 2 on their way: one more fits
    third = h.reserve(1.5, NEED)
    assert not h.fits(1.6, NEED)
    # An answer about the request sent at 1.2 says 2 left: the two sent after it still count.
    h.answered(in_flight[0], openai_headers(2, 9000), 1.7)
    assert (h.pend_req, h.pend_in) == (2, 200)
    assert h.fits(1.7, NEED) is False
    h.release(third)  # cancelled before any answer: its reservation goes
    assert h.fits(1.8, NEED)


def test_a_slow_answer_about_an_older_request_never_overwrites_fresher_figures() -> None:
    h = Headroom()
    old, new = h.reserve(1.0, NEED), h.reserve(2.0, NEED)
    h.answered(new, openai_headers(0, 9000), 2.5)
    h.answered(old, openai_headers(40, 9000), 3.0)  # figures as of t=1.0: stale
    assert not h.fits(3.0, NEED)
    assert next(h.remaining()) == ("requests", 0)


def test_full_again_at_the_reset_and_a_bucket_without_one_never_decides() -> None:
    h = Headroom()
    h.answered(h.reserve(0.0, NEED), openai_headers(0, 9000, "2s"), 0.0)
    assert not h.fits(1.9, NEED)
    assert h.ready_at(1.0, NEED) == pytest.approx(2.0)
    assert h.fits(2.0, NEED)  # its limit (50) again
    no_limit = Headroom()
    no_limit.answered(
        no_limit.reserve(0.0, NEED),
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"},
        0.0,
    )
    assert not no_limit.fits(1.0, NEED)
    assert no_limit.fits(2.5, NEED)  # reset, limit unknown: not short
    azure = Headroom()  # Azure sends what is left, never when it refills
    azure.answered(azure.reserve(0.0, NEED), {"x-ratelimit-remaining-requests": "0"}, 0.0)
    assert azure.limits and azure.fits(0.1, NEED)


def test_tokens_count_prompt_and_completion_by_bucket() -> None:
    h = Headroom()
    headers = {
        "anthropic-ratelimit-input-tokens-remaining": "150",
        "anthropic-ratelimit-input-tokens-reset": "2099-01-01T00:00:00Z",
        "anthropic-ratelimit-output-tokens-remaining": "30",
        "anthropic-ratelimit-output-tokens-reset": "2099-01-01T00:00:00Z",
    }
    h.answered(h.reserve(0.0, NEED), headers, 0.0)
    assert h.fits(1.0, (150, 30))
    assert not h.fits(1.0, (151, 0))
    assert not h.fits(1.0, (0, 31))


def test_group_ratio_is_the_scarcer_kind_and_unknown_is_not_short() -> None:
    a, b = Headroom(), Headroom()
    a.answered(a.reserve(0.0, NEED), openai_headers(5, 9000), 0.0)
    assert capacity_ratio([a, b], 1.0) == 1.0  # b has said nothing
    b.answered(b.reserve(0.0, NEED), openai_headers(45, 1000), 0.0)
    # requests: 50 of 100 left; tokens: 10000 of 20000: both half.
    assert capacity_ratio([a, b], 1.0) == pytest.approx(0.5)
    b.reserve(0.5, (4000, 1000))  # more than b's 1000 tokens on their way: b has none left
    assert capacity_ratio([a, b], 1.0) == pytest.approx(9000 / 20000)


# ------------------------------------------------------------------ the cluster's grants


@pytest.fixture
async def backends(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    one = RedisBackend(redis_server.url, "hrtest", "replica-1")
    two = RedisBackend(redis_server.url, "hrtest", "replica-2")
    for backend in (one, two):
        await backend.start()
    yield one, two
    for backend in (one, two):
        await backend.close()


def _report(
    asof: float, remaining: float | None, claim: int, want: int, need: int
) -> HeadroomReport:
    reset = time.time() + 60
    return HeadroomReport(
        asof,
        (
            BucketClaim(
                "requests",
                remaining,
                None if remaining is None else 100.0,
                None if remaining is None else reset,
                claim,
                want,
                need,
            ),
        ),
    )


async def test_replicas_are_granted_what_the_newest_figures_leave_after_every_claim(
    backends: tuple[RedisBackend, RedisBackend],
) -> None:
    one, two = backends
    t0 = time.time()
    grant = await one.headroom("d", _report(t0, 10, 0, 6, 1))
    assert grant.granted == (6,) and grant.asof == pytest.approx(t0, abs=1e-3)
    # Replica 2 knows nothing yet: it is granted what replica 1's claim leaves, and told the
    # figures it lacks.
    grant = await two.headroom("d", _report(0.0, None, 0, 6, 1))
    assert grant.granted == (4,)
    assert grant.figures[0][0] == 10 and grant.asof == pytest.approx(t0, abs=1e-3)
    assert (await two.headroom("d", _report(t0, 10, 4, 1, 1))).granted == (0,)
    # Replica 1's answers come in: 4 of its 6 were counted (6 left as of later), it still
    # holds 2 unspent. Its claim shrinks to those 2, so 4 are free for the others.
    await one.headroom("d", _report(t0 + 1, 6, 2, 0, 0))
    assert (await two.headroom("d", _report(t0, 10, 0, 5, 1))).granted == (4,)
    # Stale figures (older than the stored ones) change nothing.
    assert (await one.headroom("d", _report(t0 - 5, 100, 2, 3, 1))).granted == (0,)


async def test_a_share_spends_grants_and_fetches_more_without_a_request_waiting(
    backends: tuple[RedisBackend, RedisBackend],
) -> None:
    one, _ = backends
    h = Headroom()
    h.share = HeadroomShare(one, "e")
    assert h.fits(time.monotonic(), NEED)  # nothing known: no grant needed
    now = time.monotonic()
    h.answered(h.reserve(now, NEED), openai_headers(20, 100000, "60s"), now)
    assert not h.fits(time.monotonic(), NEED)  # figures known, no grant at hand: fetching
    for _ in range(100):
        await asyncio.sleep(0.01)
        if h.fits(time.monotonic(), NEED):
            break
    else:
        raise AssertionError("no grant arrived")
    sent = 0
    for _ in range(40):
        if not h.fits(time.monotonic(), NEED):
            await asyncio.sleep(0.02)  # the next chunk is on its way
            continue
        h.reserve(time.monotonic(), NEED)
        sent += 1
    assert sent == 20  # the figures' 20, however many chunks it took, and not one more


async def test_while_the_backend_is_down_a_replica_assumes_its_share_of_each_figure() -> None:
    # Nothing listens there: the backend never comes up (it keeps retrying in the background).
    down = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", "hrtest", "replica-1")
    down.replicas = 2  # as last seen while it was up
    h = Headroom()
    h.share = HeadroomShare(down, "f")
    now = time.monotonic()
    h.answered(h.reserve(now, NEED), openai_headers(10, 100000, "60s"), now)
    sent = 0
    while h.fits(time.monotonic(), NEED) and sent < 20:
        h.reserve(time.monotonic(), NEED)
        sent += 1
    assert sent == 5  # half of the 10 left: the other replica may spend the other half
    await down.close()
