"""The application: which routes exist and who may call them, the error middleware, and the
lifecycle.

Every route is in exactly one of three tables, and that table decides how it is reached:
- `CLIENT_ENDPOINTS`: routes that reach a vendor. They are served by the request pipeline
  (`proxy.api.pipeline`), which authenticates the client key, checks its model allow-list
  and counts the request against its limits: a route added here cannot skip them. They are
  served on both lanes (the listener's fast lane and aiohttp) by the same pipeline.
- `admin.ADMIN_ROUTES`: the admin API, behind the admin gate (`admin.require_admin`).
- `public_routes()`: what needs no key and reaches no vendor (health, metrics, the model
  list, the OpenAPI document, the dashboard page).
`create_app` adds routes from these tables only; tests/test_route_access.py walks the
route table and checks each route is reached as its table says.

Lifecycle: `on_startup` starts the gateway (pools, state backend, probes); readiness turns
on once that is done; `on_shutdown` turns readiness off first (so load balancers stop
sending) and `on_cleanup` closes the pools after in-flight requests have drained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.accesslog import AccessLog
from proxy.api import GATEWAY, admin, anthropic, dashboard, openai, openapi, responses
from proxy.api.errors import error_answer, internal_error
from proxy.api.pipeline import Endpoint, request_id, serve
from proxy.config import Config
from proxy.core.errors import ApiError
from proxy.gateway import Gateway
from proxy.listener import Answer, BodyTooLarge, FastHandler, FastRequest, Listener, ListenerLimits
from proxy.metrics import NO_ROUTE

__all__ = ["CLIENT_ENDPOINTS", "GATEWAY", "create_app", "listen", "public_routes"]

log = logging.getLogger("llmproxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Routes that reach a vendor: through the pipeline, with the client's key and limits.
CLIENT_ENDPOINTS: tuple[Endpoint, ...] = (
    *openai.ENDPOINTS,
    *anthropic.ENDPOINTS,
    *responses.ENDPOINTS,
)

# What a queued stream may hold on aiohttp's lane before the relay pauses the vendor.
_OUT_HIGH_WATER = 256 * 1024


def _response(answer: Answer) -> web.Response:
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type=answer.content_type,
        headers=answer.headers,
    )


def _routes_served(app: web.Application) -> str:
    """Every route, as `METHOD /path`, in path order (HEAD twins of GETs left out)."""
    routes = {
        (r.resource.canonical, r.method)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    return ", ".join(f"{method} {path}" for path, method in sorted(routes))


# Longest path an access-log line quotes for a request the proxy has no route for.
_LOGGED_PATH = 256


def _unrouted(request: web.Request, status: int, started: float) -> str:
    """Count and log a request for a path (or method) the proxy does not serve, so ops see
    clients calling an endpoint the proxy lacks; the error message it gets."""
    gw = request.app[GATEWAY]
    gw.metrics.unrouted(status)
    rid = request_id(request.headers)
    if AccessLog.enabled():
        record: dict[str, object] = {
            "event": "request",
            "request_id": rid,
            "method": request.method,
            "path": request.path[:_LOGGED_PATH],
            "client": None,
            "model_group": NO_ROUTE,
            "config_version": gw.config.version,
            "status": status,
            "stream": False,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            "attempts": [],
        }
        AccessLog.write(record)
    if status == 405:
        return f"Method {request.method} is not allowed on {request.path}."
    return (
        f"No route for {request.method} {request.path}. This proxy serves: "
        f"{_routes_served(request.app)} (/admin/* with the admin key)."
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a client sees is JSON in OpenAI's shape; a bug is a logged 500, never a
    traceback. A request no route matches is counted and logged like any other."""
    started = time.monotonic()
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if request.match_info.http_exception is not None:  # no route: aiohttp's own 404/405
            message = _unrouted(request, exc.status, started)
        else:
            message = exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        err = ApiError(exc.status, message, code=exc.reason.lower().replace(" ", "_"))
        return _response(error_answer(err, headers))
    except ApiError as err:
        return _response(error_answer(err))
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return _response(internal_error())


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


def public_routes() -> list[web.RouteDef]:
    """Routes that need no key and reach no vendor."""
    return [
        web.get("/health/live", live),
        web.get("/health/ready", ready),
        web.get("/metrics", metrics),
        *openai.public_routes(),
        *openapi.routes(),
        *dashboard.routes(),
    ]


class _AiohttpRequest:
    """The pipeline's view of a request aiohttp parsed (`proxy.listener.InboundRequest`)."""

    __slots__ = ("_body_timeout_s", "_request")

    def __init__(self, request: web.Request, body_timeout_s: float) -> None:
        self._request = request
        self._body_timeout_s = body_timeout_s

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def headers(self) -> Mapping[str, str]:
        return self._request.headers

    @property
    def content_type(self) -> str:
        return self._request.content_type

    @property
    def query_string(self) -> str:
        return self._request.query_string

    async def read_body(self, limit: int) -> bytes:
        request = self._request
        length = request.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(limit)
        async with asyncio.timeout(self._body_timeout_s):
            parts: list[bytes] = []
            size = 0
            while chunk := await request.content.read(65536):
                size += len(chunk)
                if size > limit:  # a chunked upload: stop reading as soon as it is over
                    raise BodyTooLarge(limit)
                parts.append(chunk)
        return b"".join(parts)


class _ResponseOut:
    """A relayed stream's `StreamOut` on aiohttp's lane: what the relay sends (synchronously,
    from the vendor connection's callback) is queued and written by one task; the relay is
    told to pause the vendor once too much is queued."""

    __slots__ = ("_error", "_queue", "_queued", "_resp", "_writer")

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp
        self._queue: list[bytes] = []
        self._queued = 0
        self._writer: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    def send(self, data: bytes) -> bool:
        if self._error is not None:
            raise ConnectionResetError("the client closed the connection")
        if data:
            self._queue.append(data)
            self._queued += len(data)
            if self._writer is None:
                self._writer = asyncio.get_running_loop().create_task(self._write())
        return self._queued > _OUT_HIGH_WATER

    async def _write(self) -> None:
        try:
            while self._queue:
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                await self._resp.write(data)
        except Exception as exc:  # the client went away (aiohttp's reset errors vary)
            self._error = exc
        finally:
            self._writer = None

    async def drained(self) -> None:
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer})
        if self._error is not None:
            raise ConnectionResetError("the client closed the connection")

    def cancel(self) -> None:
        if self._writer is not None:
            self._writer.cancel()


def _aiohttp_handler(endpoint: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        gw = request.app[GATEWAY]
        inbound = _AiohttpRequest(request, gw.config.server.body_timeout_s)
        answer = await serve(gw, inbound, endpoint)
        if answer.stream is None:
            return _response(answer)
        resp = web.StreamResponse(
            status=answer.status, headers={**answer.headers, "Content-Type": answer.content_type}
        )
        await resp.prepare(request)
        out = _ResponseOut(resp)
        try:
            await answer.stream(out)
            await out.drained()
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away; the pipeline has accounted for it
        finally:
            out.cancel()
        return resp

    return handle


def _fast(endpoint: Endpoint) -> bool:
    """The listener's fast lane serves POSTs of a JSON body to an exact path."""
    return endpoint.method == "POST" and endpoint.resolve is None and "{" not in endpoint.path


def _fast_handler(gateway: Gateway, endpoint: Endpoint) -> FastHandler:
    async def handle(request: FastRequest) -> Answer:
        return await serve(gateway, request, endpoint)

    return handle


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


async def listen(
    app: web.Application, host: str, port: int, *, grace_s: float, reuse_port: bool = False
) -> Listener:
    """Set the app up and start listening; `Listener.close` shuts both down."""
    gw = app[GATEWAY]
    server = gw.config.server
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=grace_s,
        keepalive_timeout=server.keepalive_s,
    )
    await runner.setup()
    listener = Listener(
        runner,
        {ep.path: _fast_handler(gw, ep) for ep in CLIENT_ENDPOINTS if _fast(ep)},
        ListenerLimits(
            max_body=server.max_body_bytes,
            header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s,
            keepalive_s=server.keepalive_s,
            max_connections=server.max_connections,
        ),
        internal_error,
    )
    try:
        await listener.start(host, port, reuse_port=reuse_port)
    except OSError:
        await runner.cleanup()
        raise
    gw.metrics.add_listener_gauges(listener.stats)
    return listener


def create_app(config: Config, gateway: Gateway | None = None) -> web.Application:
    """Build the application for `config` (the gateway is started with the app)."""
    _quiet_malformed_requests()
    gw = gateway or Gateway(config)
    # The body limit is enforced (with a JSON error) by the pipeline; aiohttp's own limit is
    # set one byte above so that it never answers first with a plain-text 413.
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=config.server.max_body_bytes + 1
    )
    app[GATEWAY] = gw
    for endpoint in CLIENT_ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, _aiohttp_handler(endpoint))
    app.add_routes(public_routes())
    app.add_routes(admin.routes())

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
