"""The config schema: the dataclasses whose fields, types and defaults *are* the accepted
YAML keys (the `...Spec` classes and the sections used as they are), and the resolved,
frozen objects the rest of the proxy reads (`Config` and its parts).

A field made with `check()` carries a validator the loader runs on the converted value; a
field with `metadata={"derived": True}` is set by the loader, never by the YAML.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from proxy.http1 import DIRECT, MAX_BODY, MAX_DECODED, POOL_WAIT_S, Egress

Strategy = Literal["priority", "weighted", "least-latency", "least-busy", "cache-affinity"]
STRATEGY_NAMES: tuple[str, ...] = get_args(Strategy)
ProbeKind = Literal["models", "completion"]
PROBE_KINDS: tuple[str, ...] = get_args(ProbeKind)
TracingProtocol = Literal["http/protobuf", "grpc"]
TRACING_PROTOCOLS: tuple[str, ...] = get_args(TracingProtocol)


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be 0 or greater"


def _at_least_one(v: int) -> str | None:
    return None if v >= 1 else "must be at least 1"


def _at_least_a_mebibyte(v: int) -> str | None:
    # Below that, an answer's first read (up to the read-ahead) could hold more than the
    # cap before it is counted: the cap would not be exact.
    return None if v >= 1024 * 1024 else "must be at least 1048576 (1 MiB)"


def _limit(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0 (to have no such limit, leave the key out)"


def _fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port (0-65535)"


def check(fn: Callable[[Any], str | None], default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with a validator; the loader runs it on the converted value."""
    if default is dataclasses.MISSING and "default_factory" not in kw:
        return field(metadata={"check": fn}, **kw)
    return field(default=default, metadata={"check": fn}, **kw)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt budgets. Each may be overridden per vendor and per deployment.

    `attempt_s` bounds a whole non-streamed attempt (headers and body). A stream, once its
    first byte reached the client, is bounded by `stream_idle_s` between chunks instead:
    long generations are legitimate, stalls are not. `pool_wait_s` bounds the wait for a
    free connection when the vendor's pool is at `max_connections`: past it the attempt
    fails over (the vendor was not contacted, so it is not blamed).
    """

    connect_s: float = check(_positive, 5.0)
    first_byte_s: float = check(_positive, 30.0)
    attempt_s: float = check(_positive, 60.0)
    stream_idle_s: float = check(_positive, 60.0)
    pool_wait_s: float = check(_positive, POOL_WAIT_S)


@dataclass(frozen=True, slots=True)
class PartialTimeouts:
    """A timeouts override: only the keys that are set replace the inherited ones."""

    connect_s: float | None = check(_positive, None)
    first_byte_s: float | None = check(_positive, None)
    attempt_s: float | None = check(_positive, None)
    stream_idle_s: float | None = check(_positive, None)
    pool_wait_s: float | None = check(_positive, None)

    def over(self, base: Timeouts) -> Timeouts:
        return _overlay(self, base)


_T = TypeVar("_T")


def _overlay(partial: Any, base: _T) -> _T:
    """`base` with every field that `partial` sets (is not None) replaced."""
    changes = {f.name: getattr(partial, f.name) for f in dataclasses.fields(partial)}
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Active health checks: one background probe loop per deployment.

    `probe: models` lists the vendor's models (free: no tokens); `completion` asks for a
    one-token completion, for vendors with nothing cheaper. A deployment turns unhealthy
    after `unhealthy_threshold` consecutive failing probes and healthy again after
    `healthy_threshold` passing ones; each wait is `interval_s` +/- `jitter` (a fraction)
    so replicas and deployments do not probe in lockstep.
    """

    enabled: bool = True
    probe: ProbeKind = "models"
    interval_s: float = check(_positive, 15.0)
    timeout_s: float = check(_positive, 5.0)
    unhealthy_threshold: int = check(_at_least_one, 2)
    healthy_threshold: int = check(_at_least_one, 2)
    jitter: float = check(_fraction, 0.2)


@dataclass(frozen=True, slots=True)
class PartialHealthCheck:
    """A deployment's health_check override: only the keys that are set replace the global ones."""

    enabled: bool | None = None
    probe: ProbeKind | None = None
    interval_s: float | None = check(_positive, None)
    timeout_s: float | None = check(_positive, None)
    unhealthy_threshold: int | None = check(_at_least_one, None)
    healthy_threshold: int | None = check(_at_least_one, None)
    jitter: float | None = check(_fraction, None)

    def over(self, base: HealthCheckConfig) -> HealthCheckConfig:
        return _overlay(self, base)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = check(_port, 4000)
    request_timeout_s: float = check(_positive, 120.0)
    max_body_bytes: int = check(_at_least_one, 32 * 1024 * 1024)
    admin_key: str | None = None
    admin_key_sha256: str | None = None
    # What a client may hold: from a request's first byte to the end of its head, from there
    # to the end of its body, between requests on a keep-alive connection, and connections
    # open at once (beyond it a connection is answered 503 and closed).
    header_timeout_s: float = check(_positive, 30.0)
    body_timeout_s: float = check(_positive, 60.0)
    keepalive_s: float = check(_positive, 75.0)
    max_connections: int = check(_at_least_one, 10_000)


@dataclass(frozen=True, slots=True)
class VendorSpec:
    """A vendor as written in YAML (before defaults that depend on its type)."""

    type: str
    base_url: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    region: str | None = None
    project: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # None: half the process's open-file limit, at least 256 (proxy.http1.default_limit).
    max_connections: int | None = check(_at_least_one, None)
    timeouts: PartialTimeouts = field(default_factory=PartialTimeouts)
    max_response_bytes: int = check(_at_least_a_mebibyte, MAX_BODY)
    max_decompressed_bytes: int = check(_at_least_one, MAX_DECODED)
    # An http:// proxy URL, or "direct"; unset: HTTPS_PROXY / HTTP_PROXY / NO_PROXY.
    proxy: str | None = None
    ca_file: str | None = None  # PEM CA certificates trusted besides the system's


@dataclass(frozen=True, slots=True)
class Price:
    """A deployment's list price in USD per million tokens, for usage cost and budgets.

    `cached_prompt` is the price of prompt tokens served from the vendor's prompt cache
    (they are part of the prompt count, as vendors report them); it defaults to `prompt`.
    """

    prompt: float = check(_non_negative)
    completion: float = check(_non_negative)
    cached_prompt: float | None = check(_non_negative, None)

    def cost_usd(self, prompt: int, completion: int, cached_prompt: int) -> float:
        cached = min(cached_prompt, prompt)
        cached_price = self.prompt if self.cached_prompt is None else self.cached_prompt
        return (
            (prompt - cached) * self.prompt + cached * cached_price + completion * self.completion
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    vendor: str
    model: str
    id: str | None = None
    weight: float = check(_positive, 1.0)
    timeouts: PartialTimeouts = field(default_factory=PartialTimeouts)
    price_per_mtok: Price | None = None
    health_check: PartialHealthCheck = field(default_factory=PartialHealthCheck)
    max_concurrent: int | None = check(_at_least_one, None)
    rpm: int | None = check(_at_least_one, None)
    tpm: int | None = check(_at_least_one, None)


@dataclass(frozen=True, slots=True)
class ModelGroupSpec:
    deployments: list[DeploymentSpec]
    strategy: Strategy = "priority"
    context_window_fallback: str | None = None
    hedge_after_ms: float | None = check(_positive, None)
    affinity_hold_s: float | None = check(_non_negative, None)
    # A content-filtered answer is returned as is unless the group opts in to trying the
    # next deployment (whose vendor's policy may differ).
    failover_on_content_filter: bool = False
    # Refuse (400, or skip to a deployment that can) instead of dropping a sampling hint a
    # vendor has no equivalent for (`seed`, penalties, `logit_bias`...).
    strict_params: bool = False


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    max_attempts: int = check(_at_least_one, 3)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    fail_max: int = check(_at_least_one, 5)
    reset_timeout_s: float = check(_positive, 30.0)


@dataclass(frozen=True, slots=True)
class CooldownConfig:
    """How long a deployment is skipped after each kind of failure (DESIGN.md's table).

    Retry-After and rate-limit reset headers win over these where the vendor sends them.
    """

    quota_exhausted_s: float = check(_non_negative, 3600.0)
    rate_limited_s: float = check(_non_negative, 1.0)
    rate_limited_max_s: float = check(_non_negative, 60.0)
    overloaded_s: float = check(_non_negative, 10.0)
    overloaded_max_s: float = check(_non_negative, 300.0)
    unreachable_s: float = check(_non_negative, 10.0)
    auth_error_s: float = check(_non_negative, 1800.0)
    model_unavailable_s: float = check(_non_negative, 1800.0)


DEFAULT_LEDGER = "default"
LEDGER_FILE = "usage.sqlite3"


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where state shared between replicas lives: `memory` (one process) or `redis`."""

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None  # redis://[:password@]host:port/db, rediss://..., unix://...
    key_prefix: str = "llmproxy"  # several proxy clusters may share one Redis
    # The usage ledger's SQLite file. `default` (with backend memory): under
    # $XDG_STATE_HOME/llm-proxy/ if that is set, else llm-proxy-state/ next to the config
    # file (a config parsed from text, with no file, keeps usage in memory); the directory
    # is created. null: usage is kept in memory only (said at start-up).
    sqlite_path: str | None = DEFAULT_LEDGER
    # Set by the loader, not a YAML key: sqlite_path is the default location (whose
    # directory the ledger may create).
    sqlite_path_is_default: bool = field(default=False, metadata={"derived": True})


@dataclass(frozen=True, slots=True)
class TracingSpec:
    """OpenTelemetry traces as written in YAML. A key left out falls back to the standard
    OTEL_* environment variable (`proxy.config.tracing` says which), then to a default."""

    enabled: bool = False
    # The collector's OTLP base URL (`/v1/traces` is appended for http/protobuf).
    endpoint: str | None = None
    protocol: TracingProtocol | None = None
    sample_ratio: float | None = check(_fraction, None)  # parent-based: a sampled caller wins
    headers: dict[str, str] | None = None  # sent with every export (a backend's API key)
    service_name: str | None = None
    # Prompt and completion text on the spans: off unless asked for, redacted and capped.
    record_content: bool = False
    content_max_chars: int = check(_at_least_one, 2000)


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """The resolved `tracing:` section: what the exporter is built from."""

    enabled: bool = False
    endpoint: str = "http://localhost:4318/v1/traces"  # the full URL (grpc: host and port)
    protocol: TracingProtocol = "http/protobuf"
    sample_ratio: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict)
    service_name: str = "llm-proxy"
    record_content: bool = False
    content_max_chars: int = 2000


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """A client key's limits; a limit left out is not enforced. Zero or less is a config error."""

    rpm: int | None = check(_limit, None)
    tpm: int | None = check(_limit, None)
    max_concurrent: int | None = check(_limit, None)
    tokens_per_day: int | None = check(_limit, None)
    budget_usd_per_day: float | None = check(_limit, None)
    loop_max_repeats: int | None = check(_limit, None)
    loop_window_s: float = check(_limit, 60.0)


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """A client key as written in YAML: the key itself only as an env reference."""

    name: str
    key_sha256: str | None = None
    key: str | None = None
    models: list[str] | None = None
    limits: ClientLimits = field(default_factory=ClientLimits)


@dataclass(frozen=True, slots=True)
class ConfigSpec:
    """The top level of the YAML file."""

    vendors: dict[str, VendorSpec]
    models: dict[str, ModelGroupSpec]
    server: ServerConfig = field(default_factory=ServerConfig)
    state: StateConfig = field(default_factory=StateConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    cooldowns: CooldownConfig = field(default_factory=CooldownConfig)
    clients: list[ClientSpec] | None = None
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    tracing: TracingSpec = field(default_factory=TracingSpec)


# The resolved config: what the rest of the proxy reads.


@dataclass(frozen=True, slots=True)
class VendorConfig:
    name: str
    type: str
    base_url: str
    api_key: str | None
    api_version: str | None
    headers: Mapping[str, str]
    max_connections: int | None  # None: proxy.http1.default_limit()
    region: str | None = None
    project: str | None = None
    max_response_bytes: int = MAX_BODY
    max_decompressed_bytes: int = MAX_DECODED
    egress: Egress = DIRECT  # resolved from `proxy:` or the environment at load time
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """One model at one vendor: the unit with health, a breaker, a cooldown and latency stats."""

    id: str
    vendor: str
    model: str
    timeouts: Timeouts
    price: Price | None = None
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    max_concurrent: int | None = None  # caps routing respects (skip at cap, not earn a 429)
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A client key: who it is (`name`, the label in metrics and logs), what it may use."""

    name: str
    key_sha256: str  # lower-case hex; the key itself is never kept
    models: frozenset[str] | None  # None: every model group
    limits: ClientLimits


@dataclass(frozen=True, slots=True)
class GroupMember:
    deployment: str
    weight: float


@dataclass(frozen=True, slots=True)
class ModelGroupConfig:
    name: str
    strategy: Strategy
    members: tuple[GroupMember, ...]
    context_window_fallback: str | None
    hedge_after_ms: float | None = None
    affinity_hold_s: float = (
        60.0  # cache-affinity: a returning deployment's sessions wait this long
    )
    failover_on_content_filter: bool = False
    strict_params: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    timeouts: Timeouts
    vendors: Mapping[str, VendorConfig]
    deployments: Mapping[str, DeploymentConfig]
    models: Mapping[str, ModelGroupConfig]
    failover: FailoverConfig
    breaker: BreakerConfig
    cooldowns: CooldownConfig
    state: StateConfig
    source: str
    version: str
    # None: no `clients:` section, the proxy is open to anyone who can reach it.
    clients: tuple[ClientConfig, ...] | None = None
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
