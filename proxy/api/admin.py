"""Admin API: `GET /admin/status`, the one view of the proxy's state.

The dashboard and the CLI read this same endpoint, so ops see one truth: every
deployment's breaker, cooldown, health, latency and load, and every model group's
routing. It is read-only and built from the in-process snapshot (no awaits, no I/O).

Who may call admin endpoints (`admin_only`): with `server.admin_key` (or
`admin_key_sha256`) configured, a client presenting it as `Authorization: Bearer <key>`;
with neither configured, loopback clients only.
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

import orjson
from aiohttp import web

from proxy.api.errors import ApiError
from proxy.api.openai import GATEWAY
from proxy.config import ServerConfig
from proxy.gateway import Gateway

__all__ = ["admin_only", "authorize", "log_access_mode", "routes", "status_snapshot"]

log = logging.getLogger("llmproxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _key_matches(server: ServerConfig, presented: str) -> bool:
    ok = False
    if server.admin_key:
        ok |= hmac.compare_digest(presented.encode(), server.admin_key.encode())
    if server.admin_key_sha256:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        ok |= hmac.compare_digest(digest, server.admin_key_sha256.strip().lower())
    return ok


def authorize(request: web.Request) -> None:
    """Raise an ApiError unless this request may use the admin API."""
    server = request.app[GATEWAY].config.server
    if not (server.admin_key or server.admin_key_sha256):
        if _is_loopback(request.remote):
            return
        raise ApiError(
            403,
            "Admin endpoints are served on loopback only while no admin key is configured. "
            "Call them from the proxy's host, or set server.admin_key (or admin_key_sha256).",
            type="permission_error",
            code="admin_loopback_only",
        )
    auth = request.headers.get("Authorization", "")
    scheme, _, presented = auth.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(
            401,
            "Admin endpoints need the admin key: send `Authorization: Bearer <admin key>`.",
            type="authentication_error",
            code="admin_key_required",
        )
    if not _key_matches(server, presented.strip()):
        raise ApiError(
            401,
            "The admin key is not valid.",
            type="authentication_error",
            code="invalid_admin_key",
        )


def log_access_mode(server: ServerConfig) -> None:
    """Say at start-up who can reach the admin API."""
    if not (server.admin_key or server.admin_key_sha256):
        log.warning(
            "no admin key configured: admin endpoints (/admin/*) answer loopback clients only",
            extra={"event": "admin_access", "mode": "loopback_only"},
        )


def admin_only(handler: Handler) -> Handler:
    """Guard an admin handler with `authorize`."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        authorize(request)
        return await handler(request)

    return guarded


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def status_snapshot(gw: Gateway) -> dict[str, Any]:
    """The JSON of /admin/status."""
    now = time.monotonic()
    deployments: dict[str, Any] = {}
    for dep_id, dep in gw.deployments.items():
        breaker = dep.breaker
        cooldown_left = dep.cooldown_left(now)
        open_until = breaker.open_until()
        deployments[dep_id] = {
            "vendor": dep.config.vendor,
            "model": dep.config.model,
            "usable": dep.usable(now),
            "healthy": dep.healthy,
            "breaker": {
                "state": breaker.state.label,
                "failures": breaker.fail_counter,
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
    groups = {
        name: {
            "strategy": g.config.strategy,
            "deployments": [dep.id for dep, _ in g.members],
            "usable": sum(1 for dep, _ in g.members if dep.usable(now)),
            "context_window_fallback": g.fallback,
            "hedge_after_ms": g.config.hedge_after_ms,
        }
        for name, g in gw.groups.items()
    }
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "config_version": gw.config.version,
        "deployments": deployments,
        "groups": groups,
    }


@admin_only
async def status(request: web.Request) -> web.Response:
    body = orjson.dumps(status_snapshot(request.app[GATEWAY]), option=orjson.OPT_INDENT_2)
    return web.Response(
        body=body, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


def routes() -> list[web.RouteDef]:
    return [web.get("/admin/status", status)]
