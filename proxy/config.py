"""Routing configuration: the YAML contract of DESIGN.md, loaded into typed, frozen objects.

The loader walks the YAML node tree (not the plain parsed dict) so that every error can
name the file, the line and the dotted key. All problems in a file are collected and
reported together: an operator fixing a broken config should not have to run the check
five times to find five typos.

The schema is the dataclasses below: their fields, types and defaults *are* the accepted
keys. Unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import ssl
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from proxy.core.vendor_types import VENDOR_TYPES
from proxy.http1 import (
    DIRECT,
    MAX_BODY,
    MAX_DECODED,
    POOL_WAIT_S,
    Egress,
    header_problem,
    parse_proxy_url,
    tls_context,
)

__all__ = [
    "PROBE_KINDS",
    "STRATEGY_NAMES",
    "BreakerConfig",
    "ClientConfig",
    "ClientLimits",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "CooldownConfig",
    "DeploymentConfig",
    "FailoverConfig",
    "HealthCheckConfig",
    "ModelGroupConfig",
    "Price",
    "ServerConfig",
    "StateConfig",
    "Timeouts",
    "VendorConfig",
    "load_config",
    "parse_config",
]

Strategy = Literal["priority", "weighted", "least-latency", "least-busy", "cache-affinity"]
STRATEGY_NAMES: tuple[str, ...] = get_args(Strategy)
ProbeKind = Literal["models", "completion"]
PROBE_KINDS: tuple[str, ...] = get_args(ProbeKind)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, located well enough for an operator to fix it."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config could not be loaded. `issues` lists every problem found, each with its line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


# --------------------------------------------------------------------------- schema


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


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where state shared between replicas lives: `memory` (one process) or `redis`."""

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None  # redis://[:password@]host:port/db, rediss://..., unix://...
    key_prefix: str = "llmproxy"  # several proxy clusters may share one Redis
    # The usage ledger's SQLite file (embedded mode). Unset: usage is kept in memory only.
    sqlite_path: str | None = None


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


# --------------------------------------------------------------------------- resolved config


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


# --------------------------------------------------------------------------- loading


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_REF_PREFIX = "__llmproxy_env_"
_REF_RE = re.compile(re.escape(_REF_PREFIX) + r"(\d+)__")
_MISSING = object()


class _Loader:
    """Converts a YAML node tree into the schema dataclasses, collecting issues."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.issues: list[ConfigIssue] = []
        self.refs: list[tuple[str, str | None]] = []

    def protect_refs(self, text: str) -> str:
        """Swap each ${VAR} for a YAML-neutral token before parsing.

        `${VAR}` is not valid inside YAML flow mappings (`{api_key: ${KEY}}`, the style of
        DESIGN.md's examples), and substituting the raw text would let a secret containing
        `: ` or `#` change the document's structure. Tokens keep both problems away.
        """

        def token(m: re.Match[str]) -> str:
            self.refs.append((m.group(1), m.group(2)))
            return f"{_REF_PREFIX}{len(self.refs) - 1}__"

        return _ENV_RE.sub(token, text)

    def issue(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.issues.append(ConfigIssue(self.file, line, key, message))

    # Scalars -----------------------------------------------------------------

    def scalar(self, node: yaml.Node, key: str) -> tuple[bool, Any]:
        """Resolve a scalar node to a Python value, substituting ${VAR} in strings."""
        if not isinstance(node, yaml.ScalarNode):
            return False, None
        value = yaml.SafeLoader("").construct_object(node)
        if isinstance(value, str) and _REF_PREFIX in value:
            missing: list[str] = []

            def sub(m: re.Match[str]) -> str:
                name, default = self.refs[int(m.group(1))]
                if name in self.env:
                    return self.env[name]
                if default is not None:
                    return default
                missing.append(name)
                return ""

            value = _REF_RE.sub(sub, value)
            if missing:
                names = ", ".join(missing)
                self.issue(
                    node,
                    key,
                    f"environment variable {names} is not set (export it, or write ${{{names}:-default}})",
                )
                return True, _MISSING
            # A value that came from the environment is typed by the field it lands in.
            return True, _EnvString(value)
        return True, value

    def convert(self, node: yaml.Node, tp: Any, key: str) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                return None
            return self.convert(node, args[0], key)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(node, tp, key)
        if origin is dict:
            return self.mapping(node, get_args(tp)[1], key)
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                self.issue(node, key, f"must be a list, got {_kind(node)}")
                return []
            return [
                self.convert(n, get_args(tp)[0], f"{key}[{i}]") for i, n in enumerate(node.value)
            ]
        ok, value = self.scalar(node, key)
        if not ok:
            self.issue(node, key, f"must be {_type_name(tp)}, got {_kind(node)}")
            return None
        if value is _MISSING:
            return None  # already reported
        return self.coerce(node, value, tp, key)

    def coerce(self, node: yaml.Node, value: Any, tp: Any, key: str) -> Any:
        from_env = isinstance(value, _EnvString)
        if get_origin(tp) is Literal:
            allowed = get_args(tp)
            if value in allowed:
                return str(value)
            choices = ", ".join(repr(a) for a in allowed)
            self.issue(node, key, f"must be one of {choices}, got {value!r}")
            return None
        if tp is bool:
            if isinstance(value, bool):
                return value
            if from_env and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if from_env and re.fullmatch(r"-?\d+", value.strip()):
                return int(value)
        elif tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if from_env:
                try:
                    return float(value)
                except ValueError:
                    pass
        elif tp is str:
            if isinstance(value, str):
                return str(value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)  # e.g. api_version: 2024-10-21 written unquoted as a number
        self.issue(node, key, f"must be {_type_name(tp)}, got {value!r}")
        return None

    # Collections -------------------------------------------------------------

    def pairs(self, node: yaml.Node, key: str) -> list[tuple[yaml.Node, str, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.issue(node, key, f"must be a mapping, got {_kind(node)}")
            return []
        out: list[tuple[yaml.Node, str, yaml.Node]] = []
        seen: set[str] = set()
        for k, v in node.value:
            name = str(k.value)
            sub = f"{key}.{name}" if key else name
            if name in seen:
                self.issue(k, sub, "is given twice")
                continue
            seen.add(name)
            out.append((k, name, v))
        return out

    def mapping(self, node: yaml.Node, value_tp: Any, key: str) -> dict[str, Any]:
        return {
            name: self.convert(v, value_tp, f"{key}.{name}" if key else name)
            for _, name, v in self.pairs(node, key)
        }

    def dataclass(self, node: yaml.Node, cls: Any, key: str) -> Any:
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for knode, name, vnode in self.pairs(node, key):
            sub = f"{key}.{name}" if key else name
            if name not in fields:
                known = ", ".join(sorted(fields))
                self.issue(knode, sub, f"unknown key (expected one of: {known})")
                continue
            value = self.convert(vnode, hints[name], sub)
            check_fn = fields[name].metadata.get("check")
            if value is not None and check_fn is not None and (msg := check_fn(value)):
                self.issue(vnode, sub, f"{msg}, got {value!r}")
                continue
            if value is not None or _optional(hints[name]):
                values[name] = value
        for name, f in fields.items():
            if name in values:
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if isinstance(node, yaml.MappingNode):
                    self.issue(node, f"{key}.{name}" if key else name, "is required")
                return None
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - defensive, reported rather than raised
            self.issue(node, key, str(exc))
            return None


class _EnvString(str):
    """A string that came from ${VAR}: it may be converted to the field's type."""

    __slots__ = ()


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value) if node.value != "" else "nothing"


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    if dataclasses.is_dataclass(tp) or get_origin(tp) is dict:
        return "a mapping"
    return str(tp)


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _find(root: yaml.Node, *path: str | int) -> yaml.Node | None:
    """The node at a path (for locating semantic errors found after conversion)."""
    node: yaml.Node | None = root
    for part in path:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            return None
    return node


def _resolve(spec: ConfigSpec, root: yaml.Node, loader: _Loader) -> Config | None:
    """Cross-field checks and defaults that depend on other keys."""

    def issue(path: tuple[str | int, ...], key: str, message: str) -> None:
        loader.issues.append(ConfigIssue(loader.file, _line(_find(root, *path)), key, message))

    vendors: dict[str, VendorConfig] = {}
    env_egress = _env_egress(loader.env, issue) if spec.vendors else DIRECT
    for name, v in spec.vendors.items():
        if v is None:
            continue
        vtype = VENDOR_TYPES.get(v.type)
        if vtype is None:
            issue(
                ("vendors", name, "type"),
                f"vendors.{name}.type",
                f"unsupported vendor type {v.type!r}; supported: {', '.join(VENDOR_TYPES)}",
            )
            continue
        missing = [(key, hint) for key, hint in vtype.required if not getattr(v, key)]
        for key, hint in missing:
            issue(
                ("vendors", name),
                f"vendors.{name}.{key}",
                f"is required for vendor type {v.type!r}: {hint}",
            )
        if missing:
            continue
        base_url = v.base_url or (vtype.default_base_url or "").format(region=v.region)
        if not base_url:
            issue(
                ("vendors", name),
                f"vendors.{name}.base_url",
                f"is required for vendor type {v.type!r}",
            )
            continue
        if not re.match(r"^https?://[^/\s]+", base_url):
            issue(
                ("vendors", name, "base_url"),
                f"vendors.{name}.base_url",
                f"must be an http(s) URL, got {base_url!r}",
            )
            continue
        bad_header = next(
            ((k, p) for k, val in v.headers.items() if (p := header_problem(k, val))), None
        )
        if bad_header is not None:
            issue(
                ("vendors", name, "headers"),
                f"vendors.{name}.headers",
                f"header {bad_header[0]!r} {bad_header[1]}",
            )
            continue
        if v.api_key and header_problem("Authorization", v.api_key):
            issue(
                ("vendors", name, "api_key"),
                f"vendors.{name}.api_key",
                "has a character HTTP headers cannot carry (a line break, a NUL or another "
                "control character, or one outside Latin-1)",
            )
            continue
        if vtype.adapter == "litellm":
            native_only = [k for k in _NATIVE_ONLY if _find(root, "vendors", name, k) is not None]
            if native_only:
                issue(
                    ("vendors", name, native_only[0]),
                    f"vendors.{name}.{native_only[0]}",
                    f"applies to native vendors only (openai, azure, mistral, anthropic); "
                    f"type {v.type!r} is called through litellm, whose HTTP client reads "
                    "HTTPS_PROXY and SSL_CERT_FILE itself",
                )
                continue
        egress = _vendor_egress(name, v, env_egress, issue)
        if egress is None:
            continue
        if v.ca_file is not None and (problem := _ca_file_problem(v.ca_file)):
            issue(("vendors", name, "ca_file"), f"vendors.{name}.ca_file", problem)
            continue
        vendors[name] = VendorConfig(
            name=name,
            type=v.type,
            base_url=base_url.rstrip("/"),
            api_key=v.api_key or None,
            api_version=v.api_version,
            headers=dict(v.headers),
            max_connections=v.max_connections,
            region=v.region,
            project=v.project,
            max_response_bytes=v.max_response_bytes,
            max_decompressed_bytes=v.max_decompressed_bytes,
            egress=egress,
            ca_file=v.ca_file,
        )

    deployments: dict[str, DeploymentConfig] = {}
    groups: dict[str, ModelGroupConfig] = {}
    for gname, g in spec.models.items():
        if g is None:
            continue
        if not g.deployments:
            issue(
                ("models", gname, "deployments"),
                f"models.{gname}.deployments",
                "must list at least one deployment",
            )
            continue
        members: list[GroupMember] = []
        for i, d in enumerate(g.deployments):
            key = f"models.{gname}.deployments[{i}]"
            if d is None:
                continue
            if d.vendor not in spec.vendors:
                known = ", ".join(sorted(spec.vendors)) or "none defined"
                issue(
                    ("models", gname, "deployments", i, "vendor"),
                    f"{key}.vendor",
                    f"names unknown vendor {d.vendor!r} (vendors: {known})",
                )
                continue
            if d.vendor not in vendors:
                continue  # the vendor itself is broken and already reported
            dep_id = d.id or f"{d.vendor}/{d.model}"
            vendor_timeouts = spec.vendors[d.vendor].timeouts.over(spec.timeouts)
            dep = DeploymentConfig(
                id=dep_id,
                vendor=d.vendor,
                model=d.model,
                timeouts=d.timeouts.over(vendor_timeouts),
                price=d.price_per_mtok,
                health_check=d.health_check.over(spec.health_check),
                max_concurrent=d.max_concurrent,
                rpm=d.rpm,
                tpm=d.tpm,
            )
            if any(m.deployment == dep_id for m in members):
                issue(
                    ("models", gname, "deployments", i),
                    key,
                    f"deployment {dep_id!r} is listed twice in this group",
                )
                continue
            prior = deployments.get(dep_id)
            if prior is not None and prior != dep:
                issue(
                    ("models", gname, "deployments", i),
                    key,
                    f"deployment {dep_id!r} is defined elsewhere with different settings; "
                    "give one of them its own `id:`",
                )
                continue
            deployments[dep_id] = dep
            members.append(GroupMember(dep_id, d.weight))
        if g.affinity_hold_s is not None and g.strategy != "cache-affinity":
            issue(
                ("models", gname, "affinity_hold_s"),
                f"models.{gname}.affinity_hold_s",
                f"only applies to `strategy: cache-affinity` (this group uses {g.strategy!r})",
            )
        groups[gname] = ModelGroupConfig(
            gname,
            g.strategy,
            tuple(members),
            g.context_window_fallback,
            hedge_after_ms=g.hedge_after_ms,
            affinity_hold_s=60.0 if g.affinity_hold_s is None else g.affinity_hold_s,
        )

    for gname, g2 in groups.items():
        fb = g2.context_window_fallback
        if fb is not None and fb not in spec.models:
            issue(
                ("models", gname, "context_window_fallback"),
                f"models.{gname}.context_window_fallback",
                f"names unknown model group {fb!r}",
            )
        if fb == gname:
            issue(
                ("models", gname, "context_window_fallback"),
                f"models.{gname}.context_window_fallback",
                "cannot name its own group",
            )
    if not spec.models:
        issue(("models",), "models", "must define at least one model group")
    server = _resolve_server(spec.server, root, issue)
    clients = _resolve_clients(spec, groups, deployments, root, issue)
    _check_state(spec.state, issue)
    if loader.issues:
        return None
    return Config(
        server=server,
        timeouts=spec.timeouts,
        vendors=vendors,
        deployments=deployments,
        models=groups,
        failover=spec.failover,
        breaker=spec.breaker,
        cooldowns=spec.cooldowns,
        state=spec.state,
        source=loader.file,
        version="",
        clients=clients,
        health_check=spec.health_check,
    )


IssueFn = Callable[[tuple[str | int, ...], str, str], None]
# Vendor keys only the native HTTP client (proxy.http1) honours.
_NATIVE_ONLY = ("proxy", "ca_file", "max_response_bytes", "max_decompressed_bytes")


def _env_egress(env: Mapping[str, str], issue: IssueFn) -> Egress | None:
    """The egress the environment asks for (HTTPS_PROXY, HTTP_PROXY, NO_PROXY...), read
    once per config; None (and an issue) if a variable holds a malformed URL."""
    try:
        return Egress.from_environment(env)
    except ValueError as exc:
        issue((), "", f"{exc}")
        return None


def _vendor_egress(
    name: str, vendor: VendorSpec, env_egress: Egress | None, issue: IssueFn
) -> Egress | None:
    """A vendor's `proxy:` (a URL, or `direct`), else the environment's choice."""
    if vendor.proxy is None:
        return env_egress
    if vendor.proxy.strip().lower() == "direct":
        return Egress(source="config")
    try:
        return Egress.through(parse_proxy_url(vendor.proxy))
    except ValueError as exc:
        issue(
            ("vendors", name, "proxy"),
            f"vendors.{name}.proxy",
            f"{exc} (expected http://[user:password@]host:port, or `direct` to bypass "
            "HTTPS_PROXY/HTTP_PROXY for this vendor)",
        )
        return None


def _ca_file_problem(path: str) -> str | None:
    """Why `ca_file` cannot be used, or None (it is loaded as the pool will load it)."""
    try:
        tls_context(path)
    except ssl.SSLError:  # an OSError too: first
        return f"{path!r} holds no PEM CA certificate that TLS can load"
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror or exc}"
    return None


_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def sha256_hex(secret: str) -> str:
    """How keys are compared: the proxy keeps only this digest, never a key."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _from_env(root: yaml.Node, path: tuple[str | int, ...]) -> bool:
    """Whether the value at `path` was written as a ${VAR} reference (not a literal secret)."""
    node = _find(root, *path)
    return isinstance(node, yaml.ScalarNode) and _REF_PREFIX in str(node.value)


def _secret_digest(
    root: yaml.Node,
    issue: IssueFn,
    path: tuple[str | int, ...],
    prefix: str,
    key: str,
    secret: str | None,
    digest: str | None,
) -> str | None:
    """One secret given as `<key>: ${ENV}` or `<key>_sha256: <hex>`: its lower-case digest.

    `path` locates the mapping holding the keys; `prefix` is its dotted name for messages.
    """
    if secret is not None and digest is not None:
        issue(path, f"{prefix}{key}", f"give either `{key}` or `{key}_sha256`, not both")
        return None
    if digest is not None:
        if not _SHA256_RE.match(digest):
            issue(
                (*path, f"{key}_sha256"),
                f"{prefix}{key}_sha256",
                "must be 64 hex digits (the SHA-256 of the key: printf '%s' \"$KEY\" | sha256sum)",
            )
            return None
        return digest.lower()
    if secret is None:
        return None
    if not _from_env(root, (*path, key)):
        issue(
            (*path, key),
            f"{prefix}{key}",
            "must not be written in the file: use an environment reference (${VAR}) "
            f"or `{key}_sha256`",
        )
        return None
    if not secret:
        issue(
            (*path, key), f"{prefix}{key}", "is empty (its environment variable is set to nothing)"
        )
        return None
    return sha256_hex(secret)


def _resolve_server(server: ServerConfig, root: yaml.Node, issue: IssueFn) -> ServerConfig:
    """The admin key is kept as its digest only (`admin_key_sha256`)."""
    digest = _secret_digest(
        root, issue, ("server",), "server.", "admin_key", server.admin_key, server.admin_key_sha256
    )
    return dataclasses.replace(server, admin_key=None, admin_key_sha256=digest)


def _reachable(groups: Mapping[str, ModelGroupConfig], names: frozenset[str]) -> set[str]:
    """The groups a request for `names` may be served by (context-window fallbacks included)."""
    seen: set[str] = set()
    todo = [n for n in names if n in groups]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        fb = groups[name].context_window_fallback
        if fb is not None and fb in groups:
            todo.append(fb)
    return seen


def _resolve_clients(
    spec: ConfigSpec,
    groups: Mapping[str, ModelGroupConfig],
    deployments: Mapping[str, DeploymentConfig],
    root: yaml.Node,
    issue: IssueFn,
) -> tuple[ClientConfig, ...] | None:
    if spec.clients is None:
        return None
    if not spec.clients:
        issue(
            ("clients",),
            "clients",
            "lists no client: nobody could use the proxy (leave the section out to run it open)",
        )
        return None
    out: list[ClientConfig] = []
    names: set[str] = set()
    digests: dict[str, str] = {}
    for i, c in enumerate(spec.clients):
        if c is None:
            continue
        key = f"clients[{i}]"

        def client_issue(path: tuple[str | int, ...], sub: str, message: str) -> None:
            issue(("clients", i, *path), f"{key}.{sub}", message)  # noqa: B023

        here: tuple[str | int, ...] = ("clients", i)
        if not _CLIENT_NAME_RE.match(c.name):
            client_issue(
                ("name",),
                "name",
                f"{c.name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "(it is a metric label and part of admin URLs)",
            )
            continue
        if c.name in names:
            client_issue(("name",), "name", f"client {c.name!r} is defined twice")
            continue
        names.add(c.name)
        digest = _secret_digest(root, issue, here, f"{key}.", "key", c.key, c.key_sha256)
        if digest is None:
            if c.key is None and c.key_sha256 is None:
                client_issue((), "key", "is required: give `key: ${ENV_VAR}` or `key_sha256`")
            continue
        if digest in digests:
            client_issue((), "key", f"is the same key as client {digests[digest]!r}")
            continue
        digests[digest] = c.name
        allowed: frozenset[str] | None = None
        if c.models is not None:
            unknown = [m for m in c.models if m not in groups]
            if unknown:
                client_issue(
                    ("models",),
                    "models",
                    f"names unknown model group(s) {', '.join(map(repr, unknown))} "
                    f"(groups: {', '.join(sorted(groups))})",
                )
                continue
            if not c.models:
                client_issue(
                    ("models",), "models", "is empty (leave it out to allow every model group)"
                )
                continue
            allowed = frozenset(c.models)
        if c.limits.budget_usd_per_day is not None:
            unpriced = sorted(
                m.deployment
                for g in _reachable(groups, allowed or frozenset(groups))
                for m in groups[g].members
                if deployments[m.deployment].price is None
            )
            if unpriced:
                client_issue(
                    ("limits", "budget_usd_per_day"),
                    "limits.budget_usd_per_day",
                    "needs a price for every deployment the client can reach; give "
                    f"`price_per_mtok` to: {', '.join(dict.fromkeys(unpriced))}",
                )
                continue
        out.append(ClientConfig(c.name, digest, allowed, c.limits))
    return tuple(out)


_STATE_URL_RE = re.compile(r"^(redis|rediss|unix)://\S+$")


def _check_state(state: StateConfig, issue: Callable[[tuple[str, ...], str, str], None]) -> None:
    if state.backend == "redis" and not state.url:
        issue(
            ("state",),
            "state.url",
            "is required with backend redis (e.g. url: redis://redis:6379/0)",
        )
    elif state.backend == "redis" and not _STATE_URL_RE.match(state.url or ""):
        issue(
            ("state", "url"),
            "state.url",
            f"must be a redis://, rediss:// or unix:// URL, got {state.url!r}",
        )
    elif state.backend == "memory" and state.url:
        issue(
            ("state", "url"),
            "state.url",
            "is only used by backend redis; set `backend: redis` or remove the url",
        )


def parse_config(
    text: str, *, file: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate config text. Raises ConfigError listing every problem found."""
    loader = _Loader(file, os.environ if env is None else env)
    try:
        root = yaml.compose(loader.protect_refs(text), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(file, line, "", f"invalid YAML: {problem}")]) from None
    if root is None:
        raise ConfigError([ConfigIssue(file, None, "", "the file is empty")])
    spec = loader.dataclass(root, ConfigSpec, "")
    config = _resolve(spec, root, loader) if spec is not None else None
    if config is None or loader.issues:
        if not loader.issues:  # pragma: no cover - defensive
            loader.issue(root, "", "invalid config")
        raise ConfigError(sorted(loader.issues, key=lambda i: i.line or 0))
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return dataclasses.replace(config, version=version)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file. Raises ConfigError (with file and line) on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(p), None, "", f"cannot read the file: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(p), None, "", "the file is not UTF-8 text")]) from None
    return parse_config(text, file=str(p), env=env)
