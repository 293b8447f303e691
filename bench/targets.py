"""What the benchmark drives: the upstream directly, our proxy, and the peers.

Each target knows how to install itself (peers go to bench/.peers/, git-ignored), start
as a subprocess with its logs in a file, tell when it is ready, and build the request
of each scenario in its own dialect (model group names, auth and routing headers). All
of them point at the same lean upstream (bench/upstream.py); its first path segment
selects the behaviour and counts hits, so "hits on the primary" is measured at the
upstream, the same way for every target.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from bench.loadgen import Request

__all__ = [
    "FAILOVER_ROUTES",
    "Direct",
    "Env",
    "LiteLLM",
    "Ours",
    "OursWorkers",
    "Portkey",
    "Scenario",
    "Target",
    "free_port",
]

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / ".peers"

ANTHROPIC_MODEL = "claude-sonnet-4-5"
PROMPT = [{"role": "user", "content": "Say hello in one short sentence."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Scenario:
    key: str  # "a".."f", "s", "t"
    title: str
    concurrency: int
    requests: int
    max_seconds: float
    stream: bool = False
    # "bench" (healthy; a stream comes in one burst), "paced" (healthy; a stream's events come
    # `--stream-gap-ms` apart), "quota" (primary 429 insufficient_quota), "flaky" (primary
    # 50% 500), "budget" (primary with a rate limit it reports and enforces, and a sibling),
    # "anthropic" (the translated path), "responses" (healthy, the Responses API)
    route: str = "bench"
    # Requests per second (fixed schedule, `concurrency` = most in flight); None: closed loop.
    rate: float | None = None
    # Long streams ("long-<gap ms>-<events>" routes): how many streams the peers hold at
    # once (ours and direct hold `concurrency`).
    peer_concurrency: int | None = None
    # Run against direct and our own targets only (the --workers comparison).
    ours_only: bool = False

    @property
    def long(self) -> bool:
        """N streams held open at once, each one request (scenarios (h) and (i))."""
        return self.route.startswith("long-")

    @property
    def stream_seconds(self) -> float:
        """How long one stream of a long route lasts (its events are `gap` apart)."""
        _, gap_ms, events = self.route.split("-")
        return int(gap_ms) * (int(events) - 1) / 1000

    def streams_for(self, target: str) -> int:
        if self.peer_concurrency is not None and target not in ("direct", "ours"):
            return self.peer_concurrency
        return self.concurrency

    @property
    def fresh_state(self) -> bool:
        """Failover runs need a deployment the target has never seen (no cooldown yet, a
        whole budget)."""
        return self.route in FAILOVER_ROUTES


# Routes whose primary deployment misbehaves: route -> (model group prefix, the upstream
# prefix of the secondary that takes over).
FAILOVER_ROUTES: dict[str, tuple[str, str]] = {
    "quota": ("fq", "ok"),
    "flaky": ("f5", "ok"),
    "budget": ("bj", "sibling"),
}


@dataclass
class Env:
    """Shared facts: where the upstream listens, how many runs, where logs go."""

    upstream_port: int
    runs: int
    logs: Path
    long_routes: tuple[str, ...] = ()  # the long-stream scenarios' upstream routes
    redis_url: str | None = None  # a redis-server for the --workers targets
    redis_pid: int | None = None

    def upstream(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/{prefix}"


def primary_prefix(target: str, scenario: Scenario, run: int) -> str | None:
    if scenario.fresh_state and target != "direct":
        return f"{scenario.route}-{target}-{run}"
    return None


def _chat_body(model: str, stream: bool) -> bytes:
    body: dict[str, object] = {"model": model, "messages": PROMPT, "max_tokens": 32}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def _responses_body(model: str, stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "input": PROMPT[0]["content"],
        "max_output_tokens": 32,
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def _group(scenario: Scenario, run: int) -> str:
    if scenario.long:
        return scenario.route
    if scenario.route in FAILOVER_ROUTES:
        return f"{FAILOVER_ROUTES[scenario.route][0]}-{run}"
    return {"anthropic": "anth", "paced": "paced"}.get(scenario.route, "bench")


def _healthy_prefix(scenario: Scenario) -> str:
    """The upstream prefix a healthy OpenAI-format call goes to: paced, long or burst
    streams, or a failover scenario's secondary."""
    if scenario.long:
        return scenario.route
    if scenario.route in FAILOVER_ROUTES:
        return FAILOVER_ROUTES[scenario.route][1]
    return "paced" if scenario.route == "paced" else "ok"


def _expect(scenario: Scenario) -> bytes:
    if scenario.route == "responses":
        return b"response.completed" if scenario.stream else b'"output"'
    return b"[DONE]" if scenario.stream else b'"choices"'


class Target:
    name = ""
    label = ""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> str | None:
        """Install or configure; return why the target must be skipped, or None."""
        return None

    def supports(self, scenario: Scenario) -> str | None:
        """Why this target cannot run `scenario`, or None."""
        return None

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        raise NotImplementedError

    ready_path = "/"

    def start(self, timeout_s: float = 120.0) -> float:
        """Start the process; return seconds from spawn to its readiness answering 200."""
        argv, extra_env, cwd = self.command()
        log = open(self.env.logs / f"{self.name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **extra_env},
            cwd=cwd,
        )
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode} during start-up; "
                    f"see {self.env.logs / (self.name + '.log')}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.label} was not ready within {timeout_s:.0f} s")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- requests --------------------------------------------------------------------------

    def request(self, scenario: Scenario, run: int) -> Request:
        if scenario.route == "responses":  # streams paced, as in (c)
            group = "paced" if scenario.stream else "bench"
            path, body = "/v1/responses", _responses_body(group, scenario.stream)
        else:
            path, body = "/v1/chat/completions", _chat_body(_group(scenario, run), scenario.stream)
        return Request(
            "127.0.0.1",
            self.port,
            path,
            body,
            self.headers(scenario, run),
            _expect(scenario),
            stream=scenario.stream,
        )

    def headers(self, scenario: Scenario, run: int) -> tuple[tuple[str, str], ...]:
        return ()


class Direct(Target):
    """The upstream itself: the floor every proxy is measured against."""

    name = label = "direct"

    def start(self, timeout_s: float = 120.0) -> float:
        return 0.0

    def stop(self) -> None:
        return None

    def request(self, scenario: Scenario, run: int) -> Request:
        port = self.env.upstream_port
        if scenario.route == "anthropic":
            body = orjson.dumps({"model": ANTHROPIC_MODEL, "max_tokens": 32, "messages": PROMPT})
            return Request("127.0.0.1", port, "/ok-anth/v1/messages", body, (), b'"content"')
        if scenario.route == "responses":
            return Request(
                "127.0.0.1",
                port,
                f"/{'paced' if scenario.stream else 'ok'}/v1/responses",
                _responses_body("gpt-4o-mini", scenario.stream),
                (),
                _expect(scenario),
                stream=scenario.stream,
            )
        # In the failover scenarios "direct" is the healthy secondary, called directly.
        return Request(
            "127.0.0.1",
            port,
            f"/{_healthy_prefix(scenario)}/v1/chat/completions",
            _chat_body("gpt-4o-mini", scenario.stream),
            (),
            _expect(scenario),
            stream=scenario.stream,
        )


class Ours(Target):
    """`llm-proxy serve` with metrics and the JSON access log on (to a file)."""

    name = "ours"
    label = "ours (llm-proxy)"
    ready_path = "/health/ready"
    translated_label = "ours, Anthropic vendor (native translation)"
    tracing_label = "ours, tracing on (every request sampled, OTLP/HTTP)"

    def __init__(self, env: Env, *, translated: bool = False, tracing: bool = False) -> None:
        super().__init__(env)
        self.translated = translated
        self.tracing = tracing
        if translated:
            self.name = "ours-anthropic"
            self.label = self.translated_label
        elif tracing:
            self.name = "ours-tracing"
            self.label = self.tracing_label
        self.config_path = env.logs / f"{self.name}.yaml"
        self.anthropic_error: str | None = None

    def _config(self, anthropic: bool) -> dict[str, object]:
        """The default config (no tuning: the long-stream scenarios hold it to that), one
        vendor and model group per upstream route."""
        env = self.env
        vendors: dict[str, object] = {
            "ok": {"type": "openai", "base_url": env.upstream("ok/v1"), "api_key": "sk-bench"},
            "paced": {
                "type": "openai",
                "base_url": env.upstream("paced/v1"),
                "api_key": "sk-bench",
            },
        }
        models: dict[str, object] = {
            "bench": {"deployments": [{"vendor": "ok", "model": "gpt-4o-mini"}]},
            "paced": {"deployments": [{"vendor": "paced", "model": "gpt-4o-mini"}]},
        }
        vendors["sibling"] = {
            "type": "openai",
            "base_url": env.upstream("sibling/v1"),
            "api_key": "sk-bench",
        }
        for route in env.long_routes:
            vendors[route] = {
                "type": "openai",
                "base_url": env.upstream(f"{route}/v1"),
                "api_key": "sk-bench",
            }
            models[route] = {"deployments": [{"vendor": route, "model": "gpt-4o-mini"}]}
        for run in range(env.runs):
            for route, (group, secondary) in FAILOVER_ROUTES.items():
                primary = f"{route}-{self.name}-{run}"
                vendors[primary] = {
                    "type": "openai",
                    "base_url": env.upstream(f"{primary}/v1"),
                    "api_key": "sk-bench",
                }
                models[f"{group}-{run}"] = {
                    "strategy": "priority",
                    "deployments": [
                        {"vendor": primary, "model": "gpt-4o-mini"},
                        {"vendor": secondary, "model": "gpt-4o-mini"},
                    ],
                }
        if anthropic:
            vendors["anth"] = {
                "type": "anthropic",
                "base_url": env.upstream("ok-anth"),
                "api_key": "sk-ant-bench",
            }
            models["anth"] = {"deployments": [{"vendor": "anth", "model": ANTHROPIC_MODEL}]}
        config: dict[str, object] = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "vendors": vendors,
            "models": models,
        }
        if self.tracing:  # the upstream takes the spans too (a collector that keeps nothing)
            config["tracing"] = {"enabled": True, "endpoint": env.upstream("traces")}
        return config

    def prepare(self) -> str | None:
        if self.tracing and importlib.util.find_spec("opentelemetry.sdk") is None:
            return "the OpenTelemetry SDK is not installed (pip install '.[tracing]')"
        # Does this build have an `anthropic` vendor type? Ask check-config, not the code.
        probe = self.env.logs / f"{self.name}-probe.yaml"
        probe.write_bytes(orjson.dumps(self._config(anthropic=True)))
        check = subprocess.run(
            [_llm_proxy(), "check-config", str(probe)], capture_output=True, text=True
        )
        if check.returncode != 0:
            # "<file>:<line>: vendors.anth.type: ..." -> drop the (machine-specific) file name
            lines = [ln.split(": ", 1)[-1] for ln in check.stderr.splitlines() if "anth" in ln]
            self.anthropic_error = (lines or check.stderr.strip().splitlines() or ["?"])[0]
            if self.translated:
                return f"this build has no `anthropic` vendor type ({self.anthropic_error})"
        self.config_path.write_bytes(orjson.dumps(self._config(anthropic=self.translated)))
        return None

    def supports(self, scenario: Scenario) -> str | None:
        if scenario.ours_only:
            return "the keyed targets run (w); this one's open-proxy figure is (b)"
        if self.tracing and scenario.long:
            return "the long-stream scenarios run without tracing"
        if scenario.route == "anthropic" and not self.translated:
            return "runs as the pass-through comparison of (f) only via scenario (b)"
        if self.translated and scenario.route != "anthropic":
            return "the litellm-vendor instance runs scenario (f) only"
        return None

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        return (
            [_llm_proxy(), "serve", "--config", str(self.config_path), "--port", str(self.port)],
            {},
            None,
        )


class OursWorkers(Ours):
    """`llm-proxy serve --workers N` with the Redis state backend, which --workers requires
    (breakers, cooldowns, limits and the ledger shared by the workers), and a client key with
    a cluster-wide `rpm` and a daily token budget, so each request takes the shared-limits
    and ledger path."""

    client_key = "sk-bench-client"

    def __init__(self, env: Env, workers: int, state: str = "redis") -> None:
        super().__init__(env)
        self.workers = workers
        self.state = state
        self.name = f"ours-{state}-w{workers}"
        self.label = f"ours, keyed client, {state} state, --workers {workers}"
        self.config_path = env.logs / f"{self.name}.yaml"

    def prepare(self) -> str | None:
        if self.state == "redis" and self.env.redis_url is None:
            return "no redis-server on PATH (apt-get install redis-server)"
        self.config_path.write_bytes(orjson.dumps(self._config(anthropic=False)))
        return None

    def _config(self, anthropic: bool) -> dict[str, object]:
        config = super()._config(anthropic)
        if self.state == "redis":
            config["state"] = {
                "backend": "redis",
                "url": self.env.redis_url,
                "key_prefix": self.name,
            }
        digest = hashlib.sha256(self.client_key.encode()).hexdigest()
        limits = {"rpm": 10_000_000, "tokens_per_day": 1_000_000_000_000}
        config["clients"] = [{"name": "bench", "key_sha256": digest, "limits": limits}]
        return config

    def headers(self, scenario: Scenario, run: int) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Bearer {self.client_key}"),)

    def supports(self, scenario: Scenario) -> str | None:
        return None if scenario.ours_only else "runs the --workers scenario (w) only"

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        argv, extra, cwd = super().command()
        return [*argv, "--workers", str(self.workers)], extra, cwd


# Scenarios that hold our Responses API pass-through against our chat pass-through (and the
# upstream), not against the peers.
_ONLY_OURS = {"responses": "the Responses API scenarios compare ours with direct and chat"}


def _llm_proxy() -> str:
    exe = Path(sys.executable).parent / "llm-proxy"
    return str(exe) if exe.exists() else (shutil.which("llm-proxy") or "llm-proxy")


class _Peer(Target):
    def supports(self, scenario: Scenario) -> str | None:
        if scenario.ours_only:
            return "runs only against direct and ours"
        return _ONLY_OURS.get(scenario.route)


class LiteLLM(_Peer):
    """LiteLLM Proxy in its own venv, no database, master key auth, fallbacks for failover."""

    name = "litellm"
    label = "LiteLLM Proxy"
    ready_path = "/health/liveliness"
    master_key = "sk-bench-master"

    @property
    def venv(self) -> Path:
        return PEERS / "litellm-venv"

    def prepare(self) -> str | None:
        exe = self.venv / "bin" / "litellm"
        if not exe.exists():
            print("  installing LiteLLM Proxy into bench/.peers/litellm-venv (first run only)...")
            try:
                subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
                subprocess.run(
                    [str(self.venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
                    check=True,
                )
            except (subprocess.CalledProcessError, OSError) as exc:
                return f"`pip install 'litellm[proxy]'` failed ({exc})"
        self._write_config()
        return None

    def _write_config(self) -> None:
        env = self.env

        def entry(name: str, prefix: str, model: str = "openai/gpt-4o-mini") -> dict[str, object]:
            return {
                "model_name": name,
                "litellm_params": {
                    "model": model,
                    "api_base": env.upstream(prefix),
                    "api_key": "sk-bench",
                },
            }

        model_list = [
            entry("bench", "ok/v1"),
            entry("paced", "paced/v1"),
            entry("anth", "ok-anth", f"anthropic/{ANTHROPIC_MODEL}"),
            *(entry(route, f"{route}/v1") for route in env.long_routes),
        ]
        fallbacks = []
        for run in range(env.runs):
            for route, (prefix, secondary) in FAILOVER_ROUTES.items():
                group = f"{prefix}-{run}"
                model_list.append(entry(group, f"{route}-{self.name}-{run}/v1"))
                model_list.append(entry(f"{group}-secondary", f"{secondary}/v1"))
                fallbacks.append({group: [f"{group}-secondary"]})
        config = {
            "model_list": model_list,
            # Retries off: failover goes to the fallback group at once, like the others do.
            "router_settings": {"num_retries": 0, "fallbacks": fallbacks},
            "litellm_settings": {"num_retries": 0, "set_verbose": False},
            "general_settings": {"master_key": self.master_key},
        }
        (env.logs / "litellm.yaml").write_bytes(orjson.dumps(config))

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        return (
            [
                str(self.venv / "bin" / "litellm"),
                "--config",
                str(self.env.logs / "litellm.yaml"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num_workers",
                "1",
            ],
            {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
            },
            self.env.logs,
        )

    def headers(self, scenario: Scenario, run: int) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Bearer {self.master_key}"),)


class Portkey(_Peer):
    """Portkey's open-source gateway (Node), routed per request by its headers."""

    name = "portkey"
    label = "Portkey gateway"
    ready_path = "/"

    @property
    def entry(self) -> Path:
        return (
            PEERS
            / "portkey"
            / "node_modules"
            / "@portkey-ai"
            / "gateway"
            / "build"
            / "start-server.js"
        )

    def prepare(self) -> str | None:
        if shutil.which("node") is None:
            return "no `node` on PATH (install Node.js 18+)"
        if not self.entry.exists():
            print("  installing @portkey-ai/gateway into bench/.peers/portkey (first run only)...")
            where = PEERS / "portkey"
            where.mkdir(parents=True, exist_ok=True)
            try:
                subprocess.run(
                    ["npm", "install", "--no-audit", "--no-fund", "@portkey-ai/gateway"],
                    cwd=where,
                    check=True,
                )
            except (subprocess.CalledProcessError, OSError) as exc:
                return f"`npm install @portkey-ai/gateway` failed ({exc})"
        return None

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        return (
            ["node", str(self.entry), f"--port={self.port}", "--headless"],
            {"NODE_ENV": "production"},
            PEERS / "portkey",
        )

    def headers(self, scenario: Scenario, run: int) -> tuple[tuple[str, str], ...]:
        env = self.env
        if scenario.route == "anthropic":
            return (
                ("x-portkey-provider", "anthropic"),
                ("x-portkey-custom-host", env.upstream("ok-anth/v1")),
                ("Authorization", "Bearer sk-ant-bench"),
            )
        if scenario.fresh_state:
            primary = primary_prefix(self.name, scenario, run)
            config = {
                "strategy": {"mode": "fallback"},
                "targets": [
                    {"provider": "openai", "custom_host": env.upstream(f"{p}/v1"), "api_key": "sk"}
                    for p in (primary, _healthy_prefix(scenario))
                ],
            }
            return (("x-portkey-config", orjson.dumps(config).decode()),)
        return (
            ("x-portkey-provider", "openai"),
            ("x-portkey-custom-host", env.upstream(f"{_healthy_prefix(scenario)}/v1")),
            ("Authorization", "Bearer sk-bench"),
        )

    def request(self, scenario: Scenario, run: int) -> Request:
        req = super().request(scenario, run)
        if scenario.route == "anthropic":
            body = orjson.loads(req.body)
            body["model"] = ANTHROPIC_MODEL
            return replace(req, body=orjson.dumps(body))
        return req
