"""The `tracing:` section resolved against the standard OTEL_* environment variables.

A key written in the YAML wins; a key left out takes the variable the OpenTelemetry
specification names for it, then a default. Resolving them here (not in the SDK, which
reads `os.environ` itself) means `llm-proxy check-config` reports a bad variable with the
key it stands for, and the exporter is built from one set of explicit values.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Final, cast
from urllib.parse import unquote, urlsplit

from proxy.config.schema import (
    TRACING_PROTOCOLS,
    TracingConfig,
    TracingProtocol,
    TracingSpec,
)
from proxy.http1 import header_problem

__all__ = ["TRACING_EXTRA", "resolve_tracing"]

IssueFn = Callable[[tuple[str | int, ...], str, str], None]

TRACING_EXTRA: Final = "pip install 'llm-failover-proxy[tracing]'"
_DEFAULT_SERVICE: Final = "llm-proxy"
_DEFAULT_ENDPOINT: Final[Mapping[str, str]] = {
    "http/protobuf": "http://localhost:4318",
    "grpc": "http://localhost:4317",
}
_TRACES_PATH: Final = "/v1/traces"
# The exporter module each protocol needs (the `tracing` extra installs both).
_EXPORTERS: Final[Mapping[str, str]] = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc",
}
# OTEL_TRACES_SAMPLER values -> the ratio of a parent-based sampler (None: the _ARG's).
_SAMPLERS: Final[Mapping[str, float | None]] = {
    "always_on": 1.0,
    "parentbased_always_on": 1.0,
    "always_off": 0.0,
    "parentbased_always_off": 0.0,
    "traceidratio": None,
    "parentbased_traceidratio": None,
}


def _first(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of `names` set (non-empty) in `env`, with its value."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _pairs(text: str) -> dict[str, str]:
    """`k=v,k2=v2` with percent-encoded values (OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_RESOURCE_ATTRIBUTES); a member without `=` is skipped, as the SDK does."""
    out: dict[str, str] = {}
    for member in text.split(","):
        key, sep, value = member.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    return out


def _with_traces_path(url: str) -> str:
    """An OTLP/HTTP base URL -> the traces URL (a URL that already names it is kept)."""
    url = url.rstrip("/")
    return url if url.endswith(_TRACES_PATH) else url + _TRACES_PATH


def resolve_tracing(spec: TracingSpec, env: Mapping[str, str], issue: IssueFn) -> TracingConfig:
    """The section with every key made concrete; problems go to `issue` (the result is then
    not used). A variable that tracing left off would not use is not checked: other
    software in the same container may read it."""

    def problem(key: str, message: str) -> None:
        written = getattr(spec, key) is not None
        if written or spec.enabled:
            issue(("tracing", key) if written else ("tracing",), f"tracing.{key}", message)

    protocol = _protocol(spec, env, problem)
    endpoint = _endpoint(spec, env, protocol, problem)
    headers = spec.headers
    if headers is None:
        found = _first(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
        headers = _pairs(found[1]) if found else {}
    for name, value in headers.items():
        if reason := header_problem(name, value):
            problem("headers", f"header {name!r} {reason}")
    sample_ratio = spec.sample_ratio
    if sample_ratio is None:
        sample_ratio = _sampler_ratio(env, problem)
    service_name = (
        spec.service_name
        or env.get("OTEL_SERVICE_NAME", "").strip()
        or _pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", "")).get("service.name")
        or _DEFAULT_SERVICE
    )
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    enabled = spec.enabled and not disabled
    if enabled:
        for module in ("opentelemetry.sdk", _EXPORTERS[protocol]):
            if importlib.util.find_spec(module) is None:
                problem(
                    "enabled",
                    f"tracing is on but the OpenTelemetry SDK ({module}) is not installed: "
                    f"{TRACING_EXTRA}, or set `enabled: false`",
                )
                break
    return TracingConfig(
        enabled=enabled,
        endpoint=endpoint,
        protocol=protocol,
        sample_ratio=sample_ratio,
        headers=headers,
        service_name=service_name,
        record_content=spec.record_content,
        content_max_chars=spec.content_max_chars,
    )


def _protocol(
    spec: TracingSpec, env: Mapping[str, str], problem: Callable[[str, str], None]
) -> TracingProtocol:
    if spec.protocol is not None:
        return spec.protocol
    found = _first(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if found is None:
        return "http/protobuf"
    name, value = found
    if value not in TRACING_PROTOCOLS:
        problem(
            "protocol",
            f"{name}={value!r} is not a protocol this proxy exports with: use "
            f"{' or '.join(TRACING_PROTOCOLS)}",
        )
        return "http/protobuf"
    return cast(TracingProtocol, value)


def _endpoint(
    spec: TracingSpec,
    env: Mapping[str, str],
    protocol: TracingProtocol,
    problem: Callable[[str, str], None],
) -> str:
    """The URL the exporter sends to. For http/protobuf a base URL (the YAML key,
    OTEL_EXPORTER_OTLP_ENDPOINT) gets `/v1/traces`; the signal's own variable is used as
    it is, as the specification says."""
    http = protocol == "http/protobuf"
    source = None
    if spec.endpoint is not None:
        given, base = spec.endpoint, True
    elif found := _first(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        (source, given), base = found, False
    elif found := _first(env, "OTEL_EXPORTER_OTLP_ENDPOINT"):
        (source, given), base = found, True
    else:
        given, base = _DEFAULT_ENDPOINT[protocol], True
    parts = urlsplit(given)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem(
            "endpoint",
            f"{f'{source}={given!r}' if source else repr(given)} is not a collector URL: give "
            f"its http:// or https:// URL, e.g. http://otel-collector:{'4318' if http else '4317'}",
        )
    return _with_traces_path(given) if http and base else given


def _sampler_ratio(env: Mapping[str, str], problem: Callable[[str, str], None]) -> float:
    found = _first(env, "OTEL_TRACES_SAMPLER")
    if found is None:
        return 1.0
    sampler = found[1].lower()
    if sampler not in _SAMPLERS:
        problem(
            "sample_ratio",
            f"OTEL_TRACES_SAMPLER={found[1]!r} is not a sampler this proxy knows ("
            f"{', '.join(_SAMPLERS)}); set `tracing.sample_ratio` instead",
        )
        return 1.0
    ratio = _SAMPLERS[sampler]
    if ratio is not None:
        return ratio
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
    try:
        ratio = float(arg)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        problem(
            "sample_ratio",
            f"OTEL_TRACES_SAMPLER_ARG={arg!r} must be a number between 0 and 1",
        )
        return 1.0
    return ratio
