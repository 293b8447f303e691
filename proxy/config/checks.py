"""Cross-field checks and the defaults that depend on other keys: from the parsed spec to a
resolved `Config`, with every problem reported at its line."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import yaml

from proxy.config.egress import env_egress, native_only_problem, vendor_egress
from proxy.config.issues import ConfigIssue, find, from_env, line_of
from proxy.config.schema import (
    DEFAULT_LEDGER,
    LEDGER_FILE,
    ClientConfig,
    Config,
    ConfigSpec,
    DeploymentConfig,
    GroupMember,
    ModelGroupConfig,
    ServerConfig,
    StateConfig,
    VendorConfig,
)
from proxy.config.tracing import resolve_tracing
from proxy.core.vendor_types import VENDOR_TYPES
from proxy.http1 import header_problem

KEYLESS = "none"  # `api_key: none`: a server that needs no key (vLLM, Ollama)


class Source(Protocol):
    """What the checks need of the loader: where the file is, its environment, the issues
    found so far, and how a value was written."""

    file: str
    env: Mapping[str, str]
    issues: list[ConfigIssue]

    def references(self, node: yaml.Node | None) -> str: ...


def resolve(spec: ConfigSpec, root: yaml.Node, source: Source) -> Config | None:
    """Cross-field checks and defaults that depend on other keys; None (with the source's
    `issues` filled) when the config is not usable."""
    file, env, issues = source.file, source.env, source.issues

    def issue(path: tuple[str | int, ...], key: str, message: str) -> None:
        issues.append(ConfigIssue(file, line_of(find(root, *path)), key, message))

    vendors: dict[str, VendorConfig] = {}
    environment_egress = env_egress(env, issue) if spec.vendors else None
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
        api_key = v.api_key
        if api_key is not None and not api_key.strip():
            refs = source.references(find(root, "vendors", name, "api_key"))
            issue(
                ("vendors", name, "api_key"),
                f"vendors.{name}.api_key",
                f"is empty{f' ({refs} is empty or only whitespace)' if refs else ''}: vendor "
                f"{name!r} would refuse every request (401). Set the key, or write "
                f"`api_key: {KEYLESS}` for a server that needs none",
            )
            continue
        if api_key == KEYLESS:
            api_key = None
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
        if api_key and header_problem("Authorization", api_key):
            issue(
                ("vendors", name, "api_key"),
                f"vendors.{name}.api_key",
                "has a character HTTP headers cannot carry (a line break, a NUL or another "
                "control character, or one outside Latin-1)",
            )
            continue
        if native_only_problem(root, name, v, issue):
            continue
        egress = vendor_egress(name, v, environment_egress, issue)
        if egress is None:
            continue
        vendors[name] = VendorConfig(
            name=name,
            type=v.type,
            base_url=base_url.rstrip("/"),
            api_key=api_key,
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
            failover_on_content_filter=g.failover_on_content_filter,
            strict_params=g.strict_params,
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
    tracing = resolve_tracing(spec.tracing, env, issue)
    if issues:
        return None
    state = _resolve_ledger(spec.state, file, env)
    return Config(
        server=server,
        timeouts=spec.timeouts,
        vendors=vendors,
        deployments=deployments,
        models=groups,
        failover=spec.failover,
        breaker=spec.breaker,
        cooldowns=spec.cooldowns,
        state=state,
        source=file,
        version="",
        clients=clients,
        health_check=spec.health_check,
        tracing=tracing,
    )


IssueFn = Callable[[tuple[str | int, ...], str, str], None]
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def sha256_hex(secret: str) -> str:
    """How keys are compared: the proxy keeps only this digest, never a key."""
    return hashlib.sha256(secret.encode()).hexdigest()


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
    if not from_env(root, *path, key):
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


def _resolve_ledger(state: StateConfig, file: str, env: Mapping[str, str]) -> StateConfig:
    """Where the usage ledger lives: a `default` path is made concrete. With Redis the
    cluster's ledger is in Redis, and a replica keeps a file of its own only if asked."""
    if state.sqlite_path != DEFAULT_LEDGER:
        return state
    if state.backend != "memory":
        return dataclasses.replace(state, sqlite_path=None)
    xdg = env.get("XDG_STATE_HOME")
    if xdg:
        directory = Path(xdg) / "llm-proxy"
    elif file.startswith("<"):
        return dataclasses.replace(state, sqlite_path=None)  # text with no file to sit beside
    else:
        directory = Path(file).parent / "llm-proxy-state"
    return dataclasses.replace(
        state, sqlite_path=str(directory / LEDGER_FILE), sqlite_path_is_default=True
    )


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
