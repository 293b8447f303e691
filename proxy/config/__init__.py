"""Routing configuration: the YAML contract of DESIGN.md, loaded into typed, frozen objects.

- `schema`: the dataclasses whose fields are the accepted keys, and the resolved `Config`;
- `loader`: YAML to those dataclasses, with `${VAR}` references and located errors;
- `checks`: the cross-field checks and defaults that depend on other keys;
- `issues`: the errors, each naming the file, the line and the key.

Unknown keys are errors, never silently ignored.
"""

from proxy.config.checks import sha256_hex
from proxy.config.issues import ConfigError, ConfigIssue
from proxy.config.loader import load_config, parse_config
from proxy.config.schema import (
    DEFAULT_LEDGER,
    PROBE_KINDS,
    STRATEGY_NAMES,
    BreakerConfig,
    ClientConfig,
    ClientLimits,
    Config,
    CooldownConfig,
    DeploymentConfig,
    FailoverConfig,
    HealthCheckConfig,
    ModelGroupConfig,
    Price,
    ServerConfig,
    StateConfig,
    Timeouts,
    TracingConfig,
    VendorConfig,
)

__all__ = [
    "DEFAULT_LEDGER",
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
    "TracingConfig",
    "VendorConfig",
    "load_config",
    "parse_config",
    "sha256_hex",
]
