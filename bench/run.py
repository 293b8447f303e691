"""`make bench` / `python -m bench`: run every scenario against every target, write RESULTS.md.

Order of work: start the lean upstream; install/prepare the peers (a peer that cannot be
installed is skipped with a line saying why); start every target (several times, for the
start-up figure); then for each scenario, warm every target up and run the scenario
round-robin over the targets (direct, ours, litellm, portkey, direct, ours, ...) so that
a burst of noise on the machine hits all of them alike. Each figure is the median of the
runs. CPU per request is read from /proc for every process: the target (with its
children), the upstream and the load generator itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import report
from bench.loadgen import LoadResult, run_load
from bench.procstat import cpu_seconds, rss_bytes, tree
from bench.targets import (
    PEERS,
    ROOT,
    Direct,
    Env,
    LiteLLM,
    Ours,
    OursWorkers,
    Portkey,
    Scenario,
    Target,
    free_port,
    primary_prefix,
)
from bench.upstream import STREAM_GAP_MS
from proxy.fdlimit import raise_open_files_limit

__all__ = ["SCENARIOS", "main"]

SCENARIOS = [
    Scenario("a", "JSON chat, concurrency 1", 1, 1000, 4.0),
    Scenario("b", "JSON chat, concurrency 32", 32, 6000, 5.0),
    # Streams paced like a (very fast) vendor's: an event every {gap}. The proxies are not
    # saturated, so time to first byte is their overhead, and the client can see whether
    # each event is relayed as it arrives (coalesced events, gaps between events).
    Scenario(
        "c",
        "streaming, 20 chunks {gap} apart, concurrency 16",
        16,
        3000,
        5.0,
        stream=True,
        route="paced",
    ),
    # The same stream one at a time: overhead and relaying with nothing else in flight.
    Scenario(
        "s",
        "streaming, 20 chunks {gap} apart, concurrency 1",
        1,
        200,
        5.0,
        stream=True,
        route="paced",
    ),
    # Saturation: the upstream writes the whole stream at once, so each proxy runs as fast
    # as its CPU allows; time to first byte here is mostly queueing in the proxy.
    Scenario(
        "t",
        "streaming burst: 20 chunks written at once, concurrency 16",
        16,
        3000,
        5.0,
        stream=True,
    ),
    # Failover cost, not saturation: a fixed 200 requests/s (well below every proxy's
    # saturation point but LiteLLM's), at most 4 in flight, the same schedule for every target.
    Scenario(
        "d",
        "failover: primary 429 insufficient_quota, 200 requests/s",
        4,
        1000,
        15.0,
        route="quota",
        rate=200.0,
    ),
    Scenario(
        "e",
        "failover: primary 500 half the time, 200 requests/s",
        4,
        1000,
        15.0,
        route="flaky",
        rate=200.0,
    ),
    # A primary whose vendor account has a rate limit (40 requests per 2 s window) that it
    # reports on every answer and enforces with 429s, beside a sibling, at twice the
    # budget's rate: how many 429s each proxy provokes, and how much of the budget it uses.
    Scenario(
        "j",
        "rate-limit headroom: budgeted primary (20 requests/s) and a sibling, 40 requests/s",
        8,
        480,
        12.0,
        route="budget",
        rate=40.0,
    ),
    # OpenAI client -> our native Anthropic adapter (OpenAI<->Anthropic translation in
    # process, no litellm) -> the upstream's /v1/messages.
    Scenario(
        "f", "translated path: Anthropic vendor, concurrency 32", 32, 3000, 5.0, route="anthropic"
    ),
    # The Responses API passed through (Codex, the agents SDK): held against (b) and (c).
    Scenario("r", "Responses API JSON, concurrency 32", 32, 6000, 5.0, route="responses"),
    Scenario(
        "u",
        "Responses API streaming, 20 text deltas {gap} apart, concurrency 16",
        16,
        3000,
        5.0,
        stream=True,
        route="responses",
    ),
    # Across cores: JSON from a keyed client (limits and the usage ledger on every request)
    # through one process on memory state, one on the Redis state backend, and `--workers 2`
    # (which needs the Redis backend).
    Scenario(
        "w",
        "JSON chat, concurrency 64: --workers 1 and 2",
        64,
        12000,
        5.0,
        ours_only=True,
    ),
    # Long streams, what LLM traffic is: N streams opened at LONG_RAMP per second and held
    # at once, one request each. (h) holds 60 s streams with an event every 2 s (a chat
    # answer, an agent waiting on a reasoning model); (i) 300 streams of 50 events/s each.
    Scenario(
        "h",
        "hold: 5,000 streams of 60 s at once, an event every 2 s",
        5000,
        5000,
        0.0,
        stream=True,
        route="long-2000-31",
        rate=1000.0,
        peer_concurrency=1000,
    ),
    Scenario(
        "i",
        "talk: 300 streams at once, 50 events/s each for 30 s",
        300,
        300,
        0.0,
        stream=True,
        route="long-20-1501",
        rate=1000.0,
    ),
]


@dataclass
class Run:
    """One scenario run against one target."""

    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    cpu_ms: float  # target CPU per request (ms)
    upstream_cpu_ms: float
    loadgen_cpu_ms: float
    primary_hits: int | None
    # Budget runs: the primary's 429s, and the share of all answers the primary gave.
    primary_429s: int | None = None
    preferred_pct: float = float("nan")
    # Streams: % of events that arrived in the same read as an earlier one of their stream,
    # and the client-side time between consecutive events (NaN for JSON scenarios).
    coalesced_pct: float = float("nan")
    gap_p50_ms: float = float("nan")
    gap_p99_ms: float = float("nan")
    error_samples: list[str] = field(default_factory=list)
    # Long streams: the most streams open at once, the target's RSS and descriptors per open
    # stream (at that moment, over its idle figures), CPU per event the client received.
    open_peak: int = 0
    rss_per_stream_kb: float = float("nan")
    fds_per_stream: float = float("nan")
    fds_peak: int = 0
    cpu_per_event_us: float = float("nan")
    upstream_cpu_per_event_us: float = float("nan")
    state_cpu_ms: float = float("nan")  # redis-server's CPU per request (Redis targets)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def _run(coro: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    """The load generator runs on uvloop where available (it halves the client's CPU)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def _stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as resp:
        data: dict[str, int] = json.loads(resp.read())
        return data


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(target: Target, scenario: Scenario, run: int, env: Env, upstream_pid: int) -> Run:
    req = target.request(scenario, run)
    prefix = primary_prefix(target.name, scenario, run)
    before = _stats(env.upstream_port) if prefix else {}
    hits_before = before.get(prefix, 0) if prefix else 0
    refused_before = before.get(f"{prefix}#429", 0) if prefix else 0
    own = target.proc.pid if target.proc is not None else None
    t_cpu0 = cpu_seconds(own) if own else 0.0
    u_cpu0 = cpu_seconds(upstream_pid)
    redis = env.redis_pid if isinstance(target, OursWorkers) else None
    r_cpu0 = cpu_seconds(redis) if redis else 0.0
    l_cpu0 = _self_cpu()
    result: LoadResult = _run(
        run_load(
            req,
            concurrency=scenario.concurrency,
            requests=scenario.requests,
            max_seconds=scenario.max_seconds,
            rate=scenario.rate,
        )
    )
    l_cpu = _self_cpu() - l_cpu0
    u_cpu = cpu_seconds(upstream_pid) - u_cpu0
    t_cpu = (cpu_seconds(own) - t_cpu0) if own else 0.0
    r_cpu = (cpu_seconds(redis) - r_cpu0) if redis else float("nan")
    n = max(result.requests, 1)
    after = _stats(env.upstream_port) if prefix else {}
    hits = after.get(prefix, 0) - hits_before if prefix else None
    refused: int | None = None
    preferred = float("nan")
    if scenario.route == "budget" and hits is not None:
        refused = after.get(f"{prefix}#429", 0) - refused_before
        preferred = 100.0 * (hits - refused) / n  # answers the budgeted primary gave
    return _run_of(
        result,
        t_cpu,
        u_cpu,
        l_cpu,
        primary_hits=hits,
        primary_429s=refused,
        preferred_pct=preferred,
        state_cpu_ms=r_cpu / n * 1000,
    )


def _run_of(result: LoadResult, t_cpu: float, u_cpu: float, l_cpu: float, **more: Any) -> Run:
    """A run's figures from its load result and the CPU seconds each process spent."""
    n = max(result.requests, 1)
    return Run(
        requests=result.requests,
        errors=result.errors,
        rps=result.rps,
        p50_ms=_pct(result.latencies_s, 0.50),
        p99_ms=_pct(result.latencies_s, 0.99),
        ttfb_p50_ms=_pct(result.ttfb_s, 0.50),
        ttfb_p99_ms=_pct(result.ttfb_s, 0.99),
        cpu_ms=t_cpu / n * 1000,
        upstream_cpu_ms=u_cpu / n * 1000,
        loadgen_cpu_ms=l_cpu / n * 1000,
        coalesced_pct=result.coalesced_pct,
        gap_p50_ms=_pct(result.event_gaps_s, 0.50),
        gap_p99_ms=_pct(result.event_gaps_s, 0.99),
        error_samples=result.error_samples,
        **more,
    )


def _fds(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


class _Sampler(threading.Thread):
    """Reads a process's RSS and descriptors every few seconds while a long run goes on,
    with how many streams the load generator has open (a thread: reading /proc never
    stalls the load generator's loop for long)."""

    def __init__(self, pid: int, result: LoadResult, every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.result, self.every_s = pid, result, every_s
        self.samples: list[tuple[int, int, int]] = []  # (open streams, RSS bytes, fds)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.samples.append((self.result.open_now, rss_bytes(self.pid), _fds(self.pid)))

    def peak(self) -> tuple[int, int, int]:
        """The sample with the most streams open (the latest of equals: RSS only grows)."""
        return max(self.samples, key=lambda s: (s[0], s[1]), default=(0, 0, 0))


def measure_long(
    target: Target, scenario: Scenario, run: int, env: Env, upstream_pid: int, warm_s: float
) -> Run:
    """N streams at once, each one request: a fresh target process (so its RSS over idle is
    what the streams cost), a short warm-up, then the streams opened at `scenario.rate` a
    second and held to their end."""
    if target.proc is not None:
        target.stop()
        target.start()
        warm_up(target, replace(scenario, route="paced", concurrency=16), warm_s)
        time.sleep(1.0)
    watched = target.proc.pid if target.proc is not None else upstream_pid
    streams = scenario.streams_for(target.name)
    rss0, fds0 = rss_bytes(watched), _fds(watched)
    result = LoadResult()
    sampler = _Sampler(watched, result)
    own = target.proc.pid if target.proc is not None else None
    t_cpu0 = cpu_seconds(own) if own else 0.0
    u_cpu0 = cpu_seconds(upstream_pid)
    l_cpu0 = _self_cpu()
    sampler.start()
    try:
        _run(
            run_load(
                target.request(scenario, run),
                concurrency=streams,
                requests=streams,
                max_seconds=streams / (scenario.rate or 1000.0) + 5,
                rate=scenario.rate,
                timeout_s=scenario.stream_seconds + 60,
                result=result,
            )
        )
    finally:
        sampler.stop.set()
        sampler.join()
    l_cpu = _self_cpu() - l_cpu0
    u_cpu = cpu_seconds(upstream_pid) - u_cpu0
    t_cpu = (cpu_seconds(own) - t_cpu0) if own else 0.0
    events = max(result.events, 1)
    opened, rss, fds = sampler.peak()
    return _run_of(
        result,
        t_cpu,
        u_cpu,
        l_cpu,
        primary_hits=None,
        open_peak=opened,
        rss_per_stream_kb=(rss - rss0) / opened / 1024 if opened else float("nan"),
        fds_per_stream=(fds - fds0) / opened if opened else float("nan"),
        fds_peak=fds,
        cpu_per_event_us=t_cpu / events * 1e6 if own and result.events else float("nan"),
        upstream_cpu_per_event_us=u_cpu / events * 1e6 if result.events else float("nan"),
    )


def warm_up(target: Target, scenario: Scenario, seconds: float) -> None:
    """Bring pools, caches and JITs up to speed, on a healthy route (never the failover state)."""
    warm = replace(scenario, route="bench") if scenario.fresh_state else scenario
    _run(
        run_load(
            target.request(warm, 0),
            concurrency=scenario.concurrency,
            requests=2000,
            max_seconds=seconds,
        )
    )


def _median(values: list[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")


def summarise(runs: list[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (
        "rps",
        "p50_ms",
        "p99_ms",
        "ttfb_p50_ms",
        "ttfb_p99_ms",
        "cpu_ms",
        "upstream_cpu_ms",
        "loadgen_cpu_ms",
        "coalesced_pct",
        "gap_p50_ms",
        "gap_p99_ms",
        "preferred_pct",
        "open_peak",
        "rss_per_stream_kb",
        "fds_per_stream",
        "fds_peak",
        "cpu_per_event_us",
        "upstream_cpu_per_event_us",
        "state_cpu_ms",
    ):
        out[key] = _median([getattr(r, key) for r in runs])
    out["errors"] = sum(r.errors for r in runs)
    refused = [r.primary_429s for r in runs if r.primary_429s is not None]
    out["primary_429s"] = sum(refused) if refused else None
    out["requests"] = sum(r.requests for r in runs)
    hits = [r.primary_hits for r in runs if r.primary_hits is not None]
    out["primary_hits"] = _median([float(h) for h in hits]) if hits else None
    out["runs"] = [r.__dict__ for r in runs]
    return out


def _versions(targets: list[Target]) -> dict[str, str]:
    import aiohttp

    out = {
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    try:
        out["uvloop"] = version("uvloop")
    except PackageNotFoundError:
        out["uvloop"] = "not installed"

    out["ours"] = version("llm-failover-proxy")
    for t in targets:
        if isinstance(t, LiteLLM):
            r = subprocess.run(
                [
                    str(t.venv / "bin" / "python"),
                    "-c",
                    "import importlib.metadata as m;print(m.version('litellm'))",
                ],
                capture_output=True,
                text=True,
            )
            out["litellm"] = r.stdout.strip() or "?"
        if isinstance(t, Portkey):
            pkg = t.entry.parent.parent / "package.json"
            out["portkey gateway"] = json.loads(pkg.read_text())["version"]
            out["node"] = subprocess.run(
                ["node", "--version"], capture_output=True, text=True
            ).stdout.strip()
    return out


def _machine() -> dict[str, str]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": str(os.cpu_count()), "cpu": model, "kernel": os.uname().release}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, one start: iterate fast")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    parser.add_argument(
        "--long-runs",
        type=int,
        default=1,
        help="runs per figure of the long-stream scenarios (h) and (i) (default 1: each run "
        "holds thousands of streams for a minute, and its figures are over all of them)",
    )
    parser.add_argument("--targets", default="direct,ours,ours-tracing,litellm,portkey")
    parser.add_argument(
        "--scenarios",
        default="abcstdefgjruwhi",
        help="scenario letters: a b (JSON), c s (paced streams), t (burst streams), "
        "d e (failover), j (rate-limit headroom), f (translated path), r u (Responses API "
        "JSON and paced streams), g (start-up and RSS, always measured), w (--workers 1 "
        "and 2 on Redis state), h i (long streams: hold and talk)",
    )
    parser.add_argument(
        "--stream-gap-ms",
        type=float,
        default=STREAM_GAP_MS,
        help="time between the events of a paced stream, scenarios (c) and (s)",
    )
    parser.add_argument(
        "--out", type=Path, help="where to write the report (default bench/RESULTS.md; quick: none)"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="only re-render the report from its .json (after editing its notes section)",
    )
    args = parser.parse_args(argv)
    raise_open_files_limit()  # the long scenarios hold 5,000 streams: 5,000 sockets here
    if args.render:
        out = args.out or ROOT / "bench" / "RESULTS.md"
        data = json.loads(out.with_suffix(".json").read_text())
        _write(out, data)
        return 0

    runs = args.runs or (1 if args.quick else 3)
    starts = 1 if args.quick else 3
    scale = 0.25 if args.quick else 1.0
    warm_s = 0.5 if args.quick else 1.5
    out = args.out or (None if args.quick else ROOT / "bench" / "RESULTS.md")
    wanted = set(args.scenarios)
    gap = f"{args.stream_gap_ms:g} ms"
    scenarios = [
        _quick_long(s)
        if s.long and args.quick
        else s
        if s.long or s.fresh_state
        else replace(
            s,
            title=s.title.format(gap=gap),
            requests=max(50, int(s.requests * scale)),
            max_seconds=s.max_seconds * max(scale, 0.4),
        )
        for s in SCENARIOS
        if s.key in wanted
    ]

    logs = PEERS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = Env(
        upstream_port=free_port(),
        runs=runs,
        logs=logs,
        long_routes=tuple(s.route for s in scenarios if s.long),
    )
    names = args.targets.split(",")
    classes: dict[str, Any] = {
        "direct": Direct,
        "ours": Ours,
        "ours-tracing": lambda env: Ours(env, tracing=True),
        "litellm": LiteLLM,
        "portkey": Portkey,
    }
    targets: list[Target] = [classes[n](env) for n in names]
    if "ours" in names and "f" in wanted:
        targets.insert(names.index("ours") + 1, Ours(env, translated=True))
    redis = _start_redis(env, logs) if "ours" in names and "w" in wanted else None
    if "ours" in names and "w" in wanted:
        at = names.index("ours") + 1
        targets[at:at] = [
            OursWorkers(env, 1, "memory"),
            OursWorkers(env, 1),
            OursWorkers(env, 2),
        ]

    print(f"bench: logs and configs in {logs}")
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.upstream",
            "--port",
            str(env.upstream_port),
            "--stream-gap-ms",
            str(args.stream_gap_ms),
        ],
        stdout=open(logs / "upstream.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    skipped: dict[str, str] = {}
    results: dict[str, dict[str, Any]] = {}
    startup: dict[str, dict[str, Any]] = {}
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    try:
        _wait_upstream(env.upstream_port)
        for t in list(targets):
            reason = t.prepare()
            if reason:
                print(f"bench: SKIP {t.label}: {reason}")
                skipped[t.label] = reason
                targets.remove(t)

        # (g) start-up time (median of `starts`) and idle RSS.
        for i in range(starts):
            for t in targets:
                if isinstance(t, Direct):
                    continue
                secs = t.start()
                startup.setdefault(t.name, {}).setdefault("ready_s_all", []).append(secs)
                print(f"bench: {t.label} ready in {secs:.2f} s")
                if i < starts - 1:
                    t.stop()
        time.sleep(1.0)
        for t in targets:
            if t.proc is not None:
                s = startup[t.name]
                s["ready_s"] = _median(s["ready_s_all"])
                s["rss_idle_mb"] = rss_bytes(t.pid) / 2**20

        for sc in scenarios:
            active = []
            for t in targets:
                reason = t.supports(sc)
                if reason is None:
                    active.append(t)
            if sc.route == "anthropic" and not any(
                isinstance(t, Ours) and t.translated for t in active
            ):
                why = skipped.get(Ours.translated_label, "not requested")
                print(f"bench: scenario ({sc.key}) for ours skipped: {why}")
            print(f"bench: ({sc.key}) {sc.title}: warm-up")
            if not sc.long:
                for t in active:
                    warm_up(t, sc, warm_s)
            per: dict[str, list[Run]] = {t.name: [] for t in active}
            for run in range(args.long_runs if sc.long else runs):
                for t in active:
                    if sc.long:
                        r = measure_long(t, sc, run, env, upstream.pid, warm_s)
                        _print_long(t.name, r)
                        per[t.name].append(r)
                        continue
                    r = measure(t, sc, run, env, upstream.pid)
                    per[t.name].append(r)
                    hits = "" if r.primary_hits is None else f", primary hits {r.primary_hits}"
                    if r.primary_429s is not None:
                        hits += (
                            f" (429s {r.primary_429s}, served {r.preferred_pct:.1f}% of answers)"
                        )
                    events = (
                        f"\n      ttfb p50 {r.ttfb_p50_ms:.2f} ms p99 {r.ttfb_p99_ms:.2f} ms, "
                        f"events coalesced {r.coalesced_pct:.1f}%, gap between events "
                        f"p50 {r.gap_p50_ms:.2f} ms p99 {r.gap_p99_ms:.2f} ms"
                        if sc.stream
                        else ""
                    )
                    print(
                        f"  run {run + 1}/{runs} {t.name:13} {r.requests:5d} req {r.rps:8.0f}/s "
                        f"p50 {r.p50_ms:7.2f} ms p99 {r.p99_ms:7.2f} ms "
                        f"cpu {r.cpu_ms:6.3f} ms/req errors {r.errors}{hits}{events}"
                    )
                    for sample in r.error_samples[:2]:
                        print(f"      error: {sample}")
            results[sc.key] = {name: summarise(rs) for name, rs in per.items()}

        for t in targets:
            if t.proc is not None:
                startup[t.name]["rss_after_mb"] = rss_bytes(t.pid) / 2**20
    finally:
        for t in targets:
            t.stop()
        upstream.terminate()
        upstream.wait(10)
        if redis is not None:
            redis.terminate()
            redis.wait(10)

    data = {
        "command": command,
        "machine": _machine(),
        "versions": _versions(targets),
        "runs": runs,
        "quick": args.quick,
        "scenarios": {s.key: s.__dict__ for s in scenarios},
        "stream_gap_ms": args.stream_gap_ms,
        "targets": {t.name: t.label for t in targets},
        "skipped": skipped,
        "results": results,
        "startup": startup,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if out is None:
        print(report.render(data))
        return 0
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    _write(out, data)
    return 0


def _start_redis(env: Env, logs: Path) -> subprocess.Popen[bytes] | None:
    """A redis-server for the --workers targets (none on PATH: they are skipped, saying why)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    work = logs / "redis"
    work.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
        stdout=open(logs / "redis.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    env.redis_url, env.redis_pid = f"redis://127.0.0.1:{port}/0", proc.pid
    time.sleep(0.3)
    return proc


def _quick_long(sc: Scenario) -> Scenario:
    """A long-stream scenario cut to a tenth of its streams and about a sixth of its time."""
    _, gap_ms, events = sc.route.split("-")
    return replace(
        sc,
        concurrency=sc.concurrency // 10,
        requests=sc.requests // 10,
        peer_concurrency=sc.peer_concurrency // 5 if sc.peer_concurrency else None,
        route=f"long-{gap_ms}-{max(2, int(events) // 6)}",
    )


def _print_long(name: str, r: Run) -> None:
    print(
        f"  {name:13} {r.requests:5d} streams, peak {r.open_peak} open, errors {r.errors}; "
        f"ttfb p99 {r.ttfb_p99_ms:.1f} ms; gap p50 {r.gap_p50_ms:.1f} p99 {r.gap_p99_ms:.1f} ms, "
        f"coalesced {r.coalesced_pct:.1f}%; RSS {r.rss_per_stream_kb:.1f} KB and "
        f"{r.fds_per_stream:.2f} fds per stream ({r.fds_peak} fds); CPU per event "
        f"{r.cpu_per_event_us:.1f} us (upstream {r.upstream_cpu_per_event_us:.1f} us)"
    )
    for sample in r.error_samples[:2]:
        print(f"      error: {sample}")


def _write(out: Path, data: dict[str, Any]) -> None:
    """Render `data` to `out`, keeping the hand-written notes below the report's marker."""
    notes = ""
    if out.exists():
        previous = out.read_text()
        if report.NOTES_MARK in previous:
            notes = previous.split(report.NOTES_MARK, 1)[1].strip("\n")
    text = report.render(data, notes)
    print(text)
    out.write_text(text)
    print(f"bench: wrote {out} and {out.with_suffix('.json')}")


def _wait_upstream(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            _stats(port)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the bench upstream did not start; see bench/.peers/logs/upstream.log")
