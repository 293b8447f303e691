"""The `state:` section: redis needs a URL it can use; memory takes none."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config, parse_config

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


def test_the_usage_ledger_is_a_file_by_default(tmp_path: Path) -> None:
    """Next to the config file, or under $XDG_STATE_HOME; memory only when asked (null), when
    there is no file to sit beside, or with Redis (the cluster's ledger is there)."""
    path = tmp_path / "proxy.yaml"
    path.write_text(BASE)
    state = load_config(path, env={}).state
    assert state.sqlite_path == str(tmp_path / "llm-proxy-state" / "usage.sqlite3")
    assert state.sqlite_path_is_default
    xdg = load_config(path, env={"XDG_STATE_HOME": "/var/lib"}).state
    assert xdg.sqlite_path == "/var/lib/llm-proxy/usage.sqlite3"
    path.write_text(BASE + "state: {sqlite_path: null}\n")
    assert load_config(path, env={}).state.sqlite_path is None
    assert parse_config(BASE, env={}).state.sqlite_path is None
    redis = BASE + "state: {backend: redis, url: 'redis://r:6379/0'}\n"
    assert parse_config(redis, file=str(path), env={}).state.sqlite_path is None
    explicit = BASE + "state: {sqlite_path: /data/u.db}\n"
    chosen = parse_config(explicit, file=str(path), env={}).state
    assert (chosen.sqlite_path, chosen.sqlite_path_is_default) == ("/data/u.db", False)


def test_the_derived_flag_is_not_a_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + "state: {sqlite_path_is_default: true}\n", env={})
    assert "state.sqlite_path_is_default: unknown key" in str(err.value)
