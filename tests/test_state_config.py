"""The `state:` section: redis needs a URL it can use; memory takes none."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, parse_config

BASE = (
    "vendors: {a: {type: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
    "models: {m: {deployments: [{vendor: a, model: x}]}}\n"
)


def test_default_is_memory() -> None:
    state = parse_config(BASE, env={}).state
    assert (state.backend, state.url, state.key_prefix) == ("memory", None, "llmproxy")


def test_redis_with_a_url_from_the_environment() -> None:
    text = BASE + "state: {backend: redis, url: '${REDIS_URL}', key_prefix: team-a}\n"
    state = parse_config(text, env={"REDIS_URL": "rediss://:pw@redis:6380/1"}).state
    assert (state.backend, state.url, state.key_prefix) == (
        "redis",
        "rediss://:pw@redis:6380/1",
        "team-a",
    )


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("{backend: redis}", "test.yaml:3: state.url: is required with backend redis"),
        (
            "{backend: redis, url: 'redis:6379'}",
            "state.url: must be a redis://, rediss:// or unix://",
        ),
        ("{url: 'redis://r:6379/0'}", "state.url: is only used by backend redis"),
        ("{backend: etcd}", "state.backend: must be one of 'memory', 'redis'"),
    ],
)
def test_state_mistakes_are_reported_with_their_line(state: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + f"state: {state}\n", file="test.yaml", env={})
    assert message in str(err.value)
