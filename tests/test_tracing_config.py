"""The `tracing:` section: off by default, the standard OTEL_* variables fill in what the
YAML leaves out, and every problem names its key (and the variable it came from)."""

from __future__ import annotations

import importlib.util

import pytest

from proxy.config import ConfigError, TracingConfig, parse_config

BASE = """\
vendors: {a: {type: openai, base_url: 'http://127.0.0.1:9/v1'}}
models: {m: {deployments: [{vendor: a, model: x}]}}
"""


def tracing(section: str = "", env: dict[str, str] | None = None) -> TracingConfig:
    text = BASE + (f"tracing: {section}\n" if section else "")
    return parse_config(text, file="t.yaml", env=env or {}).tracing


def problems(section: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + f"tracing: {section}\n", file="t.yaml", env=env or {})
    return [str(i) for i in info.value.issues]


def test_off_by_default_with_the_specifications_defaults() -> None:
    assert tracing() == TracingConfig(
        enabled=False,
        endpoint="http://localhost:4318/v1/traces",
        protocol="http/protobuf",
        sample_ratio=1.0,
        headers={},
        service_name="llm-proxy",
    )
    assert tracing("{enabled: true, protocol: grpc}").endpoint == "http://localhost:4317"


@pytest.mark.parametrize(
    ("endpoint", "protocol", "url"),
    [
        ("http://collector:4318", "http/protobuf", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http/protobuf", "http://collector:4318/v1/traces"),
        ("https://api.honeycomb.io", "http/protobuf", "https://api.honeycomb.io/v1/traces"),
        ("http://collector:4318/v1/traces", "http/protobuf", "http://collector:4318/v1/traces"),
        ("http://collector:4317", "grpc", "http://collector:4317"),
    ],
)
def test_the_endpoint_is_a_base_url(endpoint: str, protocol: str, url: str) -> None:
    got = tracing(f"{{enabled: true, endpoint: '{endpoint}', protocol: {protocol}}}")
    assert got.endpoint == url and got.protocol == protocol


def test_otel_variables_fill_in_what_the_yaml_leaves_out() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b,x-team=ops",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=from-resource",
    }
    got = tracing("{enabled: true}", env)
    assert got.endpoint == "http://base:4318/v1/traces"
    assert got.headers == {"api-key": "a b", "x-team": "ops"}
    assert got.sample_ratio == 0.25
    assert got.service_name == "from-resource"
    # The signal's own variables win over the general ones, and are used as they are.
    env |= {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "only=this",
        "OTEL_SERVICE_NAME": "from-service-name",
    }
    got = tracing("{enabled: true}", env)
    assert got.endpoint == "http://traces:9999/custom"
    assert got.headers == {"only": "this"}
    assert got.service_name == "from-service-name"
    # And the YAML wins over all of them.
    got = tracing(
        "{enabled: true, endpoint: 'http://yaml:4318', headers: {k: v}, sample_ratio: 0.5, "
        "service_name: yaml-name}",
        env,
    )
    assert (got.endpoint, dict(got.headers), got.sample_ratio, got.service_name) == (
        "http://yaml:4318/v1/traces",
        {"k": "v"},
        0.5,
        "yaml-name",
    )


@pytest.mark.parametrize(
    ("sampler", "ratio"),
    [("always_on", 1.0), ("always_off", 0.0), ("parentbased_always_off", 0.0)],
)
def test_named_samplers(sampler: str, ratio: float) -> None:
    assert tracing("{enabled: true}", {"OTEL_TRACES_SAMPLER": sampler}).sample_ratio == ratio


def test_otel_sdk_disabled_turns_it_off() -> None:
    assert not tracing("{enabled: true}", {"OTEL_SDK_DISABLED": "true"}).enabled


def test_grpc_from_the_environment() -> None:
    got = tracing(
        "{enabled: true}",
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"},
    )
    assert (got.protocol, got.endpoint) == ("grpc", "https://c:4317")


def test_problems_name_the_key_and_the_variable() -> None:
    found = problems(
        "\n  enabled: true\n  sample_ratio: 2\n  endpoint: collector:4318\n  headers: {'a b': c}",
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    )
    assert any(
        p.startswith("t.yaml:4: tracing.protocol: OTEL_EXPORTER_OTLP_PROTOCOL='http/json'")
        for p in found
    ), found
    assert any(
        p.startswith("t.yaml:5: tracing.sample_ratio: must be between 0 and 1") for p in found
    )
    assert any(
        p.startswith("t.yaml:6: tracing.endpoint: 'collector:4318' is not a collector URL")
        for p in found
    ), found
    assert any("tracing.headers: header 'a b'" in p for p in found), found
    found = problems("{enabled: true}", {"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    assert any("OTEL_TRACES_SAMPLER='jaeger_remote'" in p for p in found), found
    found = problems(
        "{enabled: true}",
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "lots"},
    )
    assert any("OTEL_TRACES_SAMPLER_ARG='lots'" in p for p in found), found
    assert problems("{enabled: true, unknown: 1}")[0].startswith("t.yaml:3: tracing.unknown")


def test_variables_are_not_checked_while_tracing_is_off() -> None:
    """Other software in the container may read them; a YAML key is checked regardless."""
    assert not tracing("", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}).enabled
    assert problems("{endpoint: nowhere}")[0].startswith("t.yaml:3: tracing.endpoint")


def test_enabled_without_the_sdk_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name.startswith("opentelemetry") else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    (problem,) = problems("{enabled: true}")
    assert "pip install 'llm-failover-proxy[tracing]'" in problem
    assert tracing("{enabled: false}").enabled is False  # not needed while off
