"""`llm-proxy`: serve, check-config, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

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
