"""The fast chaos set: every named scenario, measured, with its client-visible bound.

Each test prints its measurements (``pytest -s`` shows them; ``bench/chaos.py`` runs the
same scenarios longer and writes the table into bench/RESULTS.md).
"""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import SCENARIOS, redis_killed, result_extra, run_scenario
from tests.redis_server import RedisServer


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario(name: str, record_property: pytest.RecordProperty) -> None:
    scenario = SCENARIOS[name]
    result = await run_scenario(scenario)
    print(result.line())
    record_property("chaos", result.line())
    bound = 0 if scenario.max_errors is None else scenario.max_errors
    assert result.errors <= bound, (result.line(), result.error_samples[:3])
    assert result.requests == scenario.requests
    if not scenario.backup:
        # Nowhere to go: each request gets a clean 5xx answer, not a hang or a reset.
        assert all(e.startswith("HTTP 5") for e in result.error_samples), result.error_samples


async def test_redis_killed(redis_server: RedisServer) -> None:
    result = await run_scenario(redis_killed(redis_server))
    print(result.line())
    assert result.errors == 0, result.error_samples[:3]


async def test_rate_limit_storm_primary_takes_traffic_again_after_recovery() -> None:
    result = await run_scenario(SCENARIOS["rate_limit_storm"])
    assert result.errors == 0
    recovered_at = result_extra["recovered_at"]
    assert result.a_requests > recovered_at, "the primary was not used again after the storm"
