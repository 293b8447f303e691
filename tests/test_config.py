"""Config loading: the contract of DESIGN.md, and errors that name the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent

VALID = """\
server: {port: 4000, request_timeout_s: 60}
timeouts: {connect_s: 3, first_byte_s: 20}
vendors:
  openai: {type: openai, base_url: https://api.openai.com/v1, api_key: ${OPENAI_API_KEY}}
  local:  {type: openai, base_url: "http://vllm:8000/v1/", timeouts: {first_byte_s: 90}}
models:
  smart:
    strategy: weighted
    deployments:
      - {vendor: openai, model: gpt-5, weight: 3, timeouts: {first_byte_s: 10}}
      - {vendor: local, model: llama, id: local-llama}
  other:
    deployments:
      - {vendor: openai, model: gpt-4o}
failover: {max_attempts: 2}
breaker: {fail_max: 4, reset_timeout_s: 15}
"""


def issues(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="routing.yaml", env=env or {})
    return [str(i) for i in info.value.issues]


def test_valid_config_resolves_defaults_and_overrides() -> None:
    c = parse_config(VALID, env={"OPENAI_API_KEY": "sk-test"})
    assert c.vendors["openai"].api_key == "sk-test"
    assert c.vendors["local"].base_url == "http://vllm:8000/v1"  # trailing slash normalised
    assert list(c.deployments) == ["openai/gpt-5", "local-llama", "openai/gpt-4o"]
    dep = c.deployments["openai/gpt-5"]
    assert (dep.timeouts.connect_s, dep.timeouts.first_byte_s, dep.timeouts.attempt_s) == (
        3,
        10,
        60,
    )
    assert c.deployments["local-llama"].timeouts.first_byte_s == 90  # from the vendor
    assert c.models["smart"].strategy == "weighted"
    assert [m.weight for m in c.models["smart"].members] == [3, 1]
    assert c.models["other"].strategy == "priority"
    assert c.failover.max_attempts == 2 and c.breaker.fail_max == 4
    assert c.server.port == 4000 and c.server.host == "0.0.0.0"
    assert len(c.version) == 12


def test_env_default_and_typed_env_values() -> None:
    text = VALID.replace("port: 4000", "port: ${PORT:-4100}")
    assert parse_config(text, env={"OPENAI_API_KEY": "k"}).server.port == 4100
    assert parse_config(text, env={"OPENAI_API_KEY": "k", "PORT": "4200"}).server.port == 4200
    assert issues(text, {"OPENAI_API_KEY": "k", "PORT": "many"}) == [
        "routing.yaml:1: server.port: must be an integer, got 'many'"
    ]


def test_secret_with_yaml_syntax_in_it_stays_a_value() -> None:
    c = parse_config(VALID, env={"OPENAI_API_KEY": "a: b # {c}"})
    assert c.vendors["openai"].api_key == "a: b # {c}"


def test_missing_env_var_is_named() -> None:
    assert issues(VALID) == [
        "routing.yaml:4: vendors.openai.api_key: environment variable OPENAI_API_KEY is not set "
        "(export it, or write ${OPENAI_API_KEY:-default})"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("failover: {max_attempts: 2}", "failover: {max_attempts: 2, max_attempt: 3}"),
            "routing.yaml:15: failover.max_attempt: unknown key (expected one of: max_attempts)",
        ),
        (
            ("breaker: {fail_max: 4", "breaker: {fail_max: four"),
            "routing.yaml:16: breaker.fail_max: must be an integer, got 'four'",
        ),
        (
            ("breaker: {fail_max: 4", "breaker: {fail_max: 0"),
            "routing.yaml:16: breaker.fail_max: must be at least 1, got 0",
        ),
        (
            ("{vendor: local, model: llama", "{vendor: lokal, model: llama"),
            "routing.yaml:11: models.smart.deployments[1].vendor: names unknown vendor 'lokal' (vendors: local, openai)",
        ),
        (
            ("strategy: weighted", "strategy: fastest"),
            "routing.yaml:8: models.smart.strategy: must be one of 'priority', 'weighted', 'least-latency', 'least-busy', 'cache-affinity', got 'fastest'",
        ),
        (
            ("type: openai, base_url: https://api", "type: claude, base_url: https://api"),
            "routing.yaml:4: vendors.openai.type: unsupported vendor type 'claude'; supported: openai, azure, mistral, anthropic, gemini, vertex, bedrock, cohere",
        ),
        (
            ("weight: 3", "weight: -3"),
            "routing.yaml:10: models.smart.deployments[0].weight: must be greater than 0, got -3.0",
        ),
        (
            ("server: {port: 4000", "server: {port: 70000"),
            "routing.yaml:1: server.port: must be a TCP port (0-65535), got 70000",
        ),
        (
            (
                "  other:\n    deployments:\n      - {vendor: openai, model: gpt-4o}\n",
                "  other: {}\n",
            ),
            "routing.yaml:12: models.other.deployments: is required",
        ),
        (
            (
                "deployments:\n      - {vendor: openai, model: gpt-5, weight: 3",
                "deployments:\n      - {model: gpt-5, weight: 3",
            ),
            "routing.yaml:10: models.smart.deployments[0].vendor: is required",
        ),
        (
            (
                "timeouts: {first_byte_s: 90}}",
                'timeouts: {first_byte_s: 90}, headers: {"X-A": "1\\r\\nX-B: 2"}}',
            ),
            "routing.yaml:5: vendors.local.headers: header 'X-A' has a control character (a line break, NUL...) in its value",
        ),
        (
            ('base_url: "http://vllm:8000/v1/"', "base_url: vllm:8000"),
            "routing.yaml:5: vendors.local.base_url: must be an http(s) URL, got 'vllm:8000'",
        ),
        (
            ("vendors:\n", "vendors:\n  local: {type: openai, base_url: http://x/v1}\n"),
            "routing.yaml:6: vendors.local: is given twice",
        ),
        (
            (
                "  other:\n    deployments:\n      - {vendor: openai, model: gpt-4o}\n",
                "  other:\n    deployments:\n      - {vendor: openai, model: gpt-5}\n",
            ),
            "routing.yaml:14: models.other.deployments[0]: deployment 'openai/gpt-5' is defined elsewhere with "
            "different settings; give one of them its own `id:`",
        ),
        (
            ("timeouts: {connect_s: 3", "timeouts: {connect_s: -1"),
            "routing.yaml:2: timeouts.connect_s: must be greater than 0, got -1.0",
        ),
        (
            ("models:\n", "models:\n  broken: [1, 2]\n"),
            "routing.yaml:7: models.broken: must be a mapping, got a list",
        ),
    ],
)
def test_each_error_names_file_line_and_key(change: tuple[str, str], expected: str) -> None:
    text = VALID.replace(*change)
    assert text != VALID
    assert expected in issues(text, {"OPENAI_API_KEY": "k"})


def test_all_problems_are_reported_at_once() -> None:
    text = VALID.replace("fail_max: 4", "fail_max: x").replace("port: 4000", "prot: 4000")
    found = issues(text)
    assert len(found) == 3  # the typo, the bad value and the missing variable
    assert [f.split(":")[1] for f in found] == ["1", "4", "16"]  # sorted by line


def test_context_window_fallback_must_name_a_group() -> None:
    text = VALID.replace("  other:\n", "    context_window_fallback: huge\n  other:\n")
    assert "models.smart.context_window_fallback: names unknown model group 'huge'" in "\n".join(
        issues(text, {"OPENAI_API_KEY": "k"})
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "routing.yaml: the file is empty"),
        ("models: [", "routing.yaml:1: invalid YAML"),
        ("- a\n- b\n", "routing.yaml:1: must be a mapping, got a list"),
        ("vendors: {}\n", "routing.yaml:1: models: is required"),
        ("vendors: {}\nmodels: {}\n", "models: must define at least one model group"),
    ],
)
def test_broken_files(text: str, expected: str) -> None:
    assert any(expected in i for i in issues(text)), issues(text)


def test_shipped_configs_are_valid() -> None:
    from tests.test_cli import EXAMPLE_KEYS

    for name in ("example.yaml", "demo.yaml"):
        config = load_config(ROOT / "config" / name, env=EXAMPLE_KEYS)
        assert config.models
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        load_config(ROOT / "config" / "example.yaml", env={})


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)
