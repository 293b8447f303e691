"""The aiohttp application: routes, the error middleware and the lifecycle.

Lifecycle: `on_startup` opens one pooled client session per vendor; readiness turns on
once that is done; `on_shutdown` turns readiness off first (so load balancers stop
sending) and `on_cleanup` closes the pools after in-flight requests have drained.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.api import admin, anthropic, dashboard, openai, openapi
from proxy.api.errors import internal_error, json_error
from proxy.api.openai import GATEWAY
from proxy.config import Config
from proxy.core.errors import ApiError
from proxy.gateway import Gateway
from proxy.listener import FastHandler, Listener

__all__ = ["FAST_ROUTES", "GATEWAY", "create_app", "listen"]

log = logging.getLogger("llmproxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a client sees is JSON in OpenAI's shape; a bug is a logged 500, never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = (
                f"No route for {request.method} {request.path}. The proxy serves /v1/chat/completions, "
                "/v1/completions, /v1/embeddings, /v1/models and /v1/messages."
            )
        elif exc.status == 405:
            message = f"Method {request.method} is not allowed on {request.path}."
        else:
            message = exc.reason
        return json_error(
            ApiError(exc.status, message, code=exc.reason.lower().replace(" ", "_")),
            {k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except ApiError as err:
        return json_error(err)
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return internal_error()


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.ready:
        return web.json_response({"status": "ready", "config_version": gw.config.version})
    return web.json_response({"status": "not ready"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[GATEWAY].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs a malformed request (an oversized header, a bad request line) at ERROR
    with a traceback whose message quotes the start of the offending line: an oversized
    `Authorization` header puts the client's key in our logs. The client already got its
    400; keep one line, without the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed HTTP request answered with %s (%s)"
            record.args = (exc.code, type(exc).__name__)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _quiet_malformed_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(_MalformedRequestFilter())


# The proxied endpoints, served on the listener's fast lane (`proxy.listener`); aiohttp
# serves them too (and everything else) on connections handed over to it.
FAST_ROUTES: dict[str, FastHandler] = {
    "/v1/chat/completions": openai.chat_completions,
    "/v1/completions": openai.completions,
    "/v1/embeddings": openai.embeddings,
    "/v1/messages": anthropic.messages,
}


async def listen(
    app: web.Application, host: str, port: int, *, grace_s: float, reuse_port: bool = False
) -> Listener:
    """Set the app up and start listening; `Listener.close` shuts both down."""
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=grace_s
    )
    await runner.setup()
    listener = Listener(
        runner,
        FAST_ROUTES,
        max_body=app[GATEWAY].config.server.max_body_bytes,
        internal_error=internal_error,
    )
    try:
        await listener.start(host, port, reuse_port=reuse_port)
    except OSError:
        await runner.cleanup()
        raise
    return listener


def create_app(config: Config, gateway: Gateway | None = None) -> web.Application:
    """Build the application for `config` (the gateway is started with the app)."""
    _quiet_malformed_requests()
    gw = gateway or Gateway(config)
    # The body limit is enforced (with a JSON error) by the handlers; aiohttp's own limit
    # is set one byte above so that it never answers first with a plain-text 413.
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=config.server.max_body_bytes + 1
    )
    app[GATEWAY] = gw
    app.add_routes(openai.routes())
    app.add_routes(openapi.routes())
    app.add_routes(dashboard.routes())
    app.add_routes(admin.routes())
    app.add_routes(anthropic.routes())
    app.add_routes(
        [
            web.get("/health/live", live),
            web.get("/health/ready", ready),
            web.get("/metrics", metrics),
        ]
    )

    async def on_startup(app: web.Application) -> None:
        await gw.start()

    async def on_shutdown(app: web.Application) -> None:
        gw.ready = False

    async def on_cleanup(app: web.Application) -> None:
        await gw.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
