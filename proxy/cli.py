"""`llm-proxy`: serve, check-config, demo, and the admin verbs on-call engineers type."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from proxy.accesslog import AccessLog
from proxy.config import Config, ConfigError, load_config

__all__ = ["main"]

log = logging.getLogger("llmproxy")

# Attributes every LogRecord has; anything else was passed as `extra=` and is emitted as a field.
_STD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Access-log records are already JSON and pass through."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "llmproxy.access":
            return record.getMessage()
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "info", access_log: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("llmproxy.access").setLevel(logging.INFO if access_log else logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The handler above writes exactly what the access log would: let it skip the logging module.
    AccessLog.direct_to(sys.stderr.buffer)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"llm-proxy: the config is invalid ({len(exc.issues)} problem(s)):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        raise SystemExit(2) from None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available: it roughly halves the proxy's per-request CPU."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    groups = ", ".join(
        f"{g.name} ({len(g.members)} deployments, {g.strategy})" for g in config.models.values()
    )
    print(
        f"{args.config}: OK (version {config.version}); vendors: {', '.join(config.vendors)}; "
        f"model groups: {groups}"
    )
    return 0


def _workers_problem(config: Config, workers: int, port: int) -> str | None:
    """Why `--workers` cannot be used with this config, if it cannot."""
    if workers < 1:
        return "--workers must be at least 1"
    if workers == 1:
        return None
    if config.state.backend != "redis":
        return (
            f"--workers {workers} needs the shared state backend: with `state: {{backend: "
            f"{config.state.backend}}}` every worker would keep its own breakers and cooldowns, "
            "so a vendor one worker gave up on would still get traffic from the others. Set "
            "`state: {backend: redis, url: redis://HOST:6379/0}` in the config, or run one "
            "process per container and scale the containers."
        )
    if port == 0:
        return "--workers needs a fixed port (server.port or --port), not 0"
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.limits import LedgerError
    from proxy.server import serve

    setup_logging(args.log_level, access_log=not args.no_access_log)
    config = _load(args.config)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    problem = _workers_problem(config, args.workers, port)
    if problem:
        print(f"llm-proxy: {problem}", file=sys.stderr)
        return 2
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        if args.workers > 1:
            from proxy.workers import run_workers

            child = [
                "--config", args.config, "--host", host, "--port", str(port),
                "--log-level", args.log_level, "--shutdown-grace-s", str(args.shutdown_grace_s),
                "--drain-delay-s", str(args.drain_delay_s), "--reuse-port",
            ]  # fmt: skip
            if args.no_access_log:
                child.append("--no-access-log")
            stop_timeout = args.shutdown_grace_s + args.drain_delay_s + 10
            return loop.run_until_complete(run_workers(child, args.workers, stop_timeout))
        loop.run_until_complete(
            serve(
                config,
                host,
                port,
                grace_s=args.shutdown_grace_s,
                drain_delay_s=args.drain_delay_s,
                reuse_port=args.reuse_port,
            )
        )
    except LedgerError as exc:
        print(f"llm-proxy: {exc}", file=sys.stderr)
        return 2
    finally:
        loop.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    setup_logging("warning", access_log=False)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(
            run_demo(port=args.port, requests=args.requests, serve=not args.no_serve)
        )
    except KeyboardInterrupt:
        return 0
    finally:
        loop.close()


def _admin_key(args: argparse.Namespace) -> str | None:
    """--admin-key, else $LLM_PROXY_ADMIN_KEY, else the file $LLM_PROXY_ADMIN_KEY_FILE names
    (a mounted secret: what `docker compose exec` / `kubectl exec` sessions have)."""
    if args.admin_key:
        return str(args.admin_key)
    path = os.environ.get("LLM_PROXY_ADMIN_KEY_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as exc:
        raise SystemExit(
            f"llm-proxy: cannot read the admin key file {path} ($LLM_PROXY_ADMIN_KEY_FILE): "
            f"{exc.strerror}"
        ) from None


def admin_call(
    args: argparse.Namespace, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One admin API call from the CLI (plain blocking HTTP: no event loop here)."""
    import urllib.error
    import urllib.request

    url = args.url.rstrip("/") + path
    data = orjson.dumps(body) if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, method=method, data=data)
    if method != "GET":  # the keyless admin API takes JSON writes only
        req.add_header("Content-Type", "application/json")
    key = _admin_key(args)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, orjson.loads(body)
        except orjson.JSONDecodeError:
            return exc.code, {"error": {"message": body.decode(errors="replace")[:300]}}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(f"llm-proxy: cannot reach the proxy at {args.url}: {reason}") from None


def _error_message(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message")) if isinstance(error, dict) else str(body)


def cmd_reload(args: argparse.Namespace) -> int:
    status, body = admin_call(args, "POST", "/admin/reload")
    if status == 200:
        print(f"reloaded: config version {body['previous_version']} -> {body['config_version']}")
        return 0
    print(f"llm-proxy: reload failed ({status}): {_error_message(body)}", file=sys.stderr)
    for problem in body.get("problems", []) if isinstance(body, dict) else []:
        print(f"  {problem}", file=sys.stderr)
    return 1


def _quoted(name: str) -> str:
    """A deployment id or client name as one URL path segment (`openai/gpt-4o` has a slash)."""
    from urllib.parse import quote

    return quote(name, safe="")


# Admin actions: verb -> (method, path template, body, what to print on success). `{0}` is
# the deployment id or client name, URL-encoded.
_ACTIONS: dict[str, tuple[str, str, Any, str]] = {
    "drain": ("POST", "/admin/deployments/{0}/breaker", {"state": "open"}, "drained {0}"),
    "undrain": (
        "POST",
        "/admin/deployments/{0}/breaker",
        {"state": "closed"},
        "{0} is back in service (breaker closed)",
    ),
    "clear-cooldown": ("DELETE", "/admin/deployments/{0}/cooldown", None, "cleared {0}'s cooldown"),
    "reset-usage": ("POST", "/admin/clients/{0}/reset-usage", None, "reset {0}'s usage"),
}


def cmd_action(args: argparse.Namespace) -> int:
    method, path, body, done = _ACTIONS[args.command]
    status, answer = admin_call(args, method, path.format(_quoted(args.target)), body)
    if status == 200:
        print(f"{done.format(args.target)} on {args.url}")
        return 0
    print(f"llm-proxy: {args.command} failed ({status}): {_error_message(answer)}", file=sys.stderr)
    return 1


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def render_status(doc: dict[str, Any]) -> str:
    """The status document as the terminal tables `llm-proxy status` prints (same data as /dashboard)."""
    out = [f"config version {doc.get('config_version')}, generated at {doc.get('generated_at')}"]
    groups = doc.get("groups") or {}
    if groups:
        out += [
            "",
            _table(
                ["GROUP", "STRATEGY", "USABLE", "DEPLOYMENTS"],
                [
                    [
                        name,
                        g.get("strategy"),
                        f"{g.get('usable')}/{len(g.get('deployments', []))}",
                        ", ".join(g.get("deployments", [])),
                    ]
                    for name, g in groups.items()
                ],
            ),
        ]
    deployments = doc.get("deployments") or {}
    if deployments:
        rows = []
        for dep_id, d in deployments.items():
            cooldown = d.get("cooldown")
            rows.append(
                [
                    dep_id,
                    d["breaker"]["state"] + (" (drained)" if d["breaker"].get("drained") else ""),
                    d["breaker"].get("failures"),
                    f"{cooldown['left_s']:.0f}s {cooldown['reason']}" if cooldown else "-",
                    "healthy" if d.get("healthy") else "UNHEALTHY",
                    "yes" if d.get("usable") else "NO",
                    d.get("latency_ewma_ms"),
                    d.get("in_flight"),
                ]
            )
        out += [
            "",
            _table(
                [
                    "DEPLOYMENT",
                    "BREAKER",
                    "FAILURES",
                    "COOLDOWN",
                    "HEALTH",
                    "USABLE",
                    "LATENCY_MS",
                    "IN_FLIGHT",
                ],
                rows,
            ),
        ]
    clients = doc.get("clients") or {}
    if clients:
        rows = []
        for name, c in clients.items():
            today = c.get("today") or {}
            limits = "; ".join(
                f"{k}: {v.get('summary')}" for k, v in (c.get("limits") or {}).items()
            )
            rows.append(
                [
                    name,
                    c.get("in_flight"),
                    today.get("requests", 0),
                    today.get("prompt_tokens", 0) + today.get("completion_tokens", 0),
                    limits or "none",
                ]
            )
        out += [
            "",
            _table(["CLIENT", "IN_FLIGHT", "REQUESTS_TODAY", "TOKENS_TODAY", "LIMITS"], rows),
        ]
    elif doc.get("open"):
        out += ["", "no client keys: the proxy is open"]
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    status, body = admin_call(args, "GET", "/admin/status")
    if status != 200:
        print(f"llm-proxy: status failed ({status}): {_error_message(body)}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_status(body))
    return 0


def _add_admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("LLM_PROXY_URL", "http://127.0.0.1:4000"),
        help="the proxy's address (default: $LLM_PROXY_URL or http://127.0.0.1:4000)",
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("LLM_PROXY_ADMIN_KEY"),
        help="the admin key (default: $LLM_PROXY_ADMIN_KEY, else the file "
        "$LLM_PROXY_ADMIN_KEY_FILE names)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the proxy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-proxy", description="A multi-vendor LLM failover proxy."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument(
        "--config",
        "-c",
        default=os.environ.get("LLM_PROXY_CONFIG", "config/example.yaml"),
        help="routing YAML (default: $LLM_PROXY_CONFIG or config/example.yaml)",
    )
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--no-access-log", action="store_true", help="do not log one JSON line per request"
    )
    serve.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests and streams may take to finish",
    )
    serve.add_argument(
        "--drain-delay-s",
        type=float,
        default=0.0,
        help="on SIGTERM, keep accepting this long after readiness turns 503 "
        "(lets load balancers notice before the socket closes)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serving processes sharing the port (SO_REUSEPORT); more than 1 needs "
        "state.backend redis",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT, so that several processes can listen on the same port",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file without serving")
    check.add_argument("config")
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser(
        "status", help="show a running proxy's state (the document /dashboard shows)"
    )
    _add_admin_args(status)
    status.add_argument("--json", action="store_true", help="print the raw /admin/status document")
    status.set_defaults(func=cmd_status)

    reload = sub.add_parser(
        "reload", help="make a running proxy re-read its config (validated first)"
    )
    _add_admin_args(reload)
    reload.set_defaults(func=cmd_reload)

    for verb, target, help_text in (
        ("drain", "deployment", "send a deployment no traffic until `undrain` (shared via Redis)"),
        ("undrain", "deployment", "bring a drained or open deployment back (shared via Redis)"),
        ("clear-cooldown", "deployment", "end a deployment's cooldown (shared via Redis)"),
        ("reset-usage", "client", "refill a client's limits, zero today's usage (this replica)"),
    ):
        action = sub.add_parser(verb, help=help_text)
        action.add_argument("target", metavar=target.upper(), help=f"the {target} (as in status)")
        _add_admin_args(action)
        action.set_defaults(func=cmd_action)

    demo = sub.add_parser(
        "demo", help="run the proxy against simulated vendors and show a failover"
    )
    demo.add_argument("--port", type=int, default=4000)
    demo.add_argument("--requests", type=int, default=40, help="requests to send during the show")
    demo.add_argument(
        "--no-serve", action="store_true", help="exit after the show instead of serving on"
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
