"""The admin API: what ops use in an incident (reset a client's quota, drain a vendor, clear
a cooldown) and what dashboards read (client usage).

Every `/admin` route goes through one gate, `require_admin`, applied by `routes()` to the
whole `ADMIN_ROUTES` table: a route added to the table cannot forget it. The admin key is
sent as `Authorization: Bearer <admin key>`; the proxy keeps only its SHA-256 and compares
digests in constant time. With no admin key configured, the admin API answers loopback
clients only. Every admin action is logged (event `admin_action`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from proxy.api import GATEWAY
from proxy.config import ConfigError
from proxy.core.errors import ApiError
from proxy.gateway import Gateway
from proxy.health.breaker import BreakerState
from proxy.health.deployment import DeploymentState
from proxy.limits import ClientState
from proxy.limits.ledger import utc_day

__all__ = ["ADMIN_ROUTES", "STATUS_SECTIONS", "require_admin", "routes"]

log = logging.getLogger("llmproxy.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_MAX_USAGE_DAYS = 366


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a unix socket peer or garbage: not provably local


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def _loopback_host(host: str | None) -> bool:
    """Whether an authority (a Host header, an Origin's host) names this machine's loopback."""
    if not host:
        return False
    if host.startswith("["):  # [::1]:4000
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.lower() in _LOOPBACK_NAMES or _is_loopback(name)


def _keyless_refusal(request: web.Request) -> str | None:
    """Why a request to the keyless admin API is refused, or None.

    Without a key, being on this machine is the credential, so a browser on this machine must
    not be usable as a proxy for another site: the peer must be loopback, the Host must be
    a loopback name (a DNS-rebound name is not), a browser's Origin must be a loopback one,
    and a write must be JSON (which a cross-site form cannot send without a preflight this
    API never grants)."""
    if not _is_loopback(request.remote):
        return "not loopback and no admin key configured"
    if not _loopback_host(request.headers.get("Host")):
        return "the Host header is not a loopback name"
    origin = request.headers.get("Origin")
    if origin is not None and not _loopback_host(urlsplit(origin).netloc):
        return "a cross-site Origin"
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return "a cross-site browser request"
    if request.method not in ("GET", "HEAD") and request.content_type != "application/json":
        return "a write without Content-Type: application/json"
    return None


def require_admin(request: web.Request) -> None:
    """Raise ApiError unless the request carries the admin key (or, with none configured, is
    a local request, as `_keyless_refusal` defines it)."""
    digest = request.app[GATEWAY].config.server.admin_key_sha256
    if digest is None:
        why = _keyless_refusal(request)
        if why is None:
            return
        _refused(request, why)
        raise ApiError(
            403,
            f"Refused ({why}). With no admin key configured, the admin API answers only "
            "requests from this machine, addressed to localhost, not from another site's page, "
            "with JSON bodies on writes. Configure server.admin_key: ${ENV_VAR} (or "
            "server.admin_key_sha256) to use it from elsewhere.",
            type="permission_error",
            code="admin_loopback_only",
        )
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        _refused(request, "no admin key")
        raise ApiError(
            401,
            "The admin API needs the admin key: send 'Authorization: Bearer <admin key>'.",
            code="missing_admin_key",
        )
    presented = hashlib.sha256(token.encode()).hexdigest()
    if not hmac.compare_digest(presented, digest):
        _refused(request, "wrong admin key")
        raise ApiError(401, "Invalid admin key.", code="invalid_admin_key")


def _refused(request: web.Request, why: str) -> None:
    log.warning(
        "admin request refused: %s %s from %s (%s)",
        request.method,
        request.path,
        request.remote,
        why,
        extra={"event": "admin_refused", "path": request.path, "remote": request.remote},
    )


def _audit(request: web.Request, action: str, target: str, **details: Any) -> None:
    log.info(
        "admin %s %s",
        action,
        target,
        extra={
            "event": "admin_action",
            "action": action,
            "target": target,
            "remote": request.remote,
            **details,
        },
    )


def _gated(handler: Handler) -> Handler:
    async def gated(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        return await handler(request)

    gated.__name__ = handler.__name__
    gated.__doc__ = handler.__doc__
    return gated


# ---------------------------------------------------------------------- lookups


def _client(gw: Gateway, name: str) -> ClientState:
    state = gw.limits.clients.get(name)
    if state is None:
        known = ", ".join(sorted(gw.limits.clients)) or "none: the config has no clients section"
        raise ApiError(
            404, f"No client named '{name}' (clients: {known}).", code="client_not_found"
        )
    return state


def _deployment(gw: Gateway, dep_id: str) -> DeploymentState:
    dep = gw.deployments.get(dep_id)
    if dep is None:
        raise ApiError(
            404,
            f"No deployment '{dep_id}' (deployments: {', '.join(sorted(gw.deployments))}). "
            "URL-encode the id: openai%2Fgpt-4o.",
            code="deployment_not_found",
        )
    return dep


# ---------------------------------------------------------------------- handlers


def clients_section(gw: Gateway) -> dict[str, Any]:
    """Each client's limits now and its usage today (from the in-memory ledger rows)."""
    today = utc_day(gw.limits.wall())
    usage: dict[str, dict[str, Any]] = {}
    for (day, client, _group), row in gw.ledger.rows.items():
        if day != today:
            continue
        u = usage.setdefault(
            client,
            {
                "requests": 0,
                "errors": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cached_tokens": 0,
                "cost_usd": 0.0,
            },
        )
        u["requests"] += row.requests
        u["errors"] += row.errors
        u["prompt_tokens"] += row.prompt_tokens
        u["completion_tokens"] += row.completion_tokens
        u["cached_tokens"] += row.cached_tokens
        u["cost_usd"] = round(u["cost_usd"] + row.cost_usd, 6)
    return {
        name: {**gw.limits.status(state), "today": usage.get(name, {"requests": 0})}
        for name, state in gw.limits.clients.items()
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def deployments_section(gw: Gateway) -> dict[str, Any]:
    """Every deployment's breaker, cooldown, health, latency and load, as routing sees them now."""
    now = time.monotonic()
    out: dict[str, Any] = {}
    for dep_id, dep in gw.deployments.items():
        breaker = dep.breaker
        cooldown_left = dep.cooldown_left(now)
        open_until = breaker.open_until()
        out[dep_id] = {
            "vendor": dep.config.vendor,
            "model": dep.config.model,
            "usable": dep.usable(now),
            "healthy": dep.healthy,
            "breaker": {
                "state": breaker.state.label,
                "failures": breaker.fail_counter,
                "drained": breaker.drained,
                "trial_in_s": round(max(0.0, open_until - now), 3) if open_until else None,
            },
            "cooldown": (
                {"left_s": round(cooldown_left, 3), "reason": dep.cooldown_reason}
                if cooldown_left > 0
                else None
            ),
            "health_check": gw.health.status(dep_id),
            "latency_ewma_ms": _ms(dep.ewma_latency_s),
            "in_flight": dep.in_flight,
            "caps": None if dep.caps is None else dep.caps.status(now, dep.in_flight),
        }
    return out


def groups_section(gw: Gateway) -> dict[str, Any]:
    now = time.monotonic()
    return {
        name: {
            "strategy": g.config.strategy,
            "deployments": [dep.id for dep, _ in g.members],
            "usable": sum(1 for dep, _ in g.members if dep.usable(now)),
            "context_window_fallback": g.fallback,
            "hedge_after_ms": g.config.hedge_after_ms,
        }
        for name, g in gw.groups.items()
    }


# Sections of GET /admin/status: name -> builder. Other parts of the proxy add theirs.
STATUS_SECTIONS: dict[str, Callable[[Gateway], Any]] = {
    "groups": groups_section,
    "deployments": deployments_section,
    "clients": clients_section,
}


async def status(request: web.Request) -> web.StreamResponse:
    """The proxy's state as JSON (what the dashboard and the CLI show)."""
    gw = request.app[GATEWAY]
    body: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "config_version": gw.config.version,
        "open": gw.limits.open,
    }
    for name, build in STATUS_SECTIONS.items():
        body[name] = build(gw)
    return _json(body)


async def usage(request: web.Request) -> web.StreamResponse:
    """The usage ledger: `?client=NAME` (default: every client), `&days=N` (default 1: today)."""
    gw = request.app[GATEWAY]
    name = request.query.get("client")
    state = _client(gw, name) if name is not None else None
    raw_days = request.query.get("days", "1")
    if not raw_days.isdigit() or not 1 <= int(raw_days) <= _MAX_USAGE_DAYS:
        raise ApiError(
            400,
            f"'days' must be a whole number from 1 to {_MAX_USAGE_DAYS}, got {raw_days!r}.",
            param="days",
            code="invalid_value",
        )
    days = int(raw_days)
    since = utc_day(gw.limits.wall() - (days - 1) * 86400)
    until = utc_day(gw.limits.wall())
    rows = await gw.ledger.query_cluster(name, since, until)
    scope = "cluster"
    if rows is None:  # embedded mode, or the shared backend is down: this replica's ledger
        rows = await gw.ledger.query(name, since)
        scope = "replica"
    totals: dict[str, Any] = {}
    for row in rows:
        for k, v in row.items():
            if k not in ("day", "client", "model_group"):
                totals[k] = totals.get(k, 0) + v
    if "cost_usd" in totals:
        totals["cost_usd"] = round(totals["cost_usd"], 6)
    body: dict[str, Any] = {
        "since": since,
        "until": until,
        "persistent": gw.ledger.persistent,
        "scope": scope,
        "rows": rows,
        "totals": totals,
    }
    if state is not None:
        body["client"] = state.name
        body["limits"] = gw.limits.status(state)["limits"]
    return _json(body)


async def reset_usage(request: web.Request) -> web.StreamResponse:
    """The emergency quota reset: the client's limits count from zero again, now."""
    gw = request.app[GATEWAY]
    state = _client(gw, request.match_info["name"])
    gw.limits.reset(state.name)
    await gw.ledger.flush()  # answered once durable: a crash now does not undo the reset
    _audit(request, "reset-usage", state.name)
    return _json({"client": state.name, "reset": True, **gw.limits.status(state)})


_BREAKER_STATES = {"open": BreakerState.OPEN, "closed": BreakerState.CLOSED}


async def force_breaker(request: web.Request) -> web.StreamResponse:
    """Drain a deployment (`{"state": "open"}`: no traffic until closed) or bring it back."""
    gw = request.app[GATEWAY]
    dep = _deployment(gw, request.match_info["id"])
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    wanted = body.get("state") if isinstance(body, dict) else None
    if wanted not in _BREAKER_STATES:
        raise ApiError(
            400,
            'Send a JSON body {"state": "open"} (drain the deployment) or {"state": "closed"}.',
            param="state",
            code="invalid_value",
        )
    before = dep.breaker.state.label
    dep.breaker.force(_BREAKER_STATES[wanted])
    _audit(request, "force-breaker", dep.id, state=wanted, before=before)
    return _json(
        {
            "deployment": dep.id,
            "breaker": dep.breaker.state.label,
            "drained": dep.breaker.drained,
        }
    )


async def clear_cooldown(request: web.Request) -> web.StreamResponse:
    """End a deployment's cooldown now (e.g. the vendor confirmed the quota is back)."""
    gw = request.app[GATEWAY]
    dep = _deployment(gw, request.match_info["id"])
    left = dep.cooldown_left(time.monotonic())
    reason = dep.cooldown_reason
    dep.clear_cooldown()
    _audit(request, "clear-cooldown", dep.id, cooldown_left_s=round(left, 3), reason=reason)
    return _json(
        {
            "deployment": dep.id,
            "cooldown_cleared": True,
            "was_left_s": round(left, 3),
            "reason": reason,
        }
    )


async def reload_config(request: web.Request) -> web.StreamResponse:
    """Re-read the routing YAML: validated first; on any error the current config stays."""
    gw = request.app[GATEWAY]
    before = gw.config.version
    try:
        config = await gw.reload_from_file()
    except ConfigError as exc:
        _audit(request, "reload", gw.config.source, result="failure")
        return _json(
            {
                "reloaded": False,
                "config_version": before,
                "error": {
                    "message": f"The new config was rejected; still serving version {before}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_config",
                },
                "problems": [str(issue) for issue in exc.issues],
            },
            status=400,
        )
    _audit(request, "reload", config.source, result="success", before=before, after=config.version)
    return _json({"reloaded": True, "config_version": config.version, "previous_version": before})


# Every admin route: (method, path, handler). `routes()` gates each one.
ADMIN_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/admin/status", status),
    ("GET", "/admin/usage", usage),
    ("POST", "/admin/clients/{name}/reset-usage", reset_usage),
    ("POST", "/admin/deployments/{id:.+}/breaker", force_breaker),
    ("DELETE", "/admin/deployments/{id:.+}/cooldown", clear_cooldown),
    ("POST", "/admin/reload", reload_config),
]


def routes() -> list[web.RouteDef]:
    return [web.route(method, path, _gated(handler)) for method, path, handler in ADMIN_ROUTES]
