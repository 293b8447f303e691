"""The shipped alert rules fire on a real Prometheus scraping real proxies, and only then.

Debian's `prometheus` scrapes three `llm-proxy serve` processes every second with
deploy/prometheus/alerts.yml loaded (a copy whose `for:` durations are divided by
`FOR_SCALE`; the expressions and their windows are the shipped ones). One proxy is broken
on purpose with the fake vendors (one model group per fault, so every alert can be told
apart by its labels), one is healthy, and one is killed. Each alert must fire for its
fault, including the ones whose fault is a single event (a quota exhausted, a failed
reload): the proxy's series exist from start-up at 0, as on a real deployment. None may
fire for the healthy proxy. Then every Grafana panel's query must return data.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.fakes import FAKES, Budget, FakeVendor, Fault
from tests.conftest import free_port
from tests.processes import Serve, run_cli, spawn_serve, wait_ready

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
PROMETHEUS = shutil.which("prometheus")

FOR_SCALE = 15  # a rule's `for: 3m` waits 12 s here
DEADLINE_S = 150.0  # for every expected alert to fire (the longest `for:` is 40 s)
ADMIN_KEY = "admin-key-for-the-test"
AGENT_KEY = "agent-key-for-the-test"
TEAM_KEY = "team-key-for-the-test"

# Dashboard panels that have no data without a feature the test does not use (none now).
PANELS_EMPTY_WITHOUT_FEATURE: dict[int, str] = {}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def prometheus() -> str:
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is missing in CI: .ci/run must install Debian's `prometheus`")
        pytest.skip("prometheus not installed (apt-get install prometheus); this test runs in CI")
    return PROMETHEUS


def shortened_rules(text: str) -> str:
    """The rules with every `for:` divided by FOR_SCALE (at least 2 s), nothing else changed."""
    units = {"s": 1, "m": 60, "h": 3600}

    def shorten(m: re.Match[str]) -> str:
        seconds = int(m.group(2)) * units[m.group(3)]
        return f"{m.group(1)}{max(2, seconds // FOR_SCALE)}s"

    out, n = re.subn(r"(\bfor: )(\d+)([smh])\b", shorten, text)
    assert n >= 5, "no `for:` found to shorten"
    return out


# ------------------------------------------------------------------ the three proxies


def _vendors(
    fakes: dict[str, FakeVendor], keys: dict[str, str], extra: dict[str, str] | None = None
) -> str:
    more = extra or {}
    return "vendors:\n" + "".join(
        f"  {name}: {{type: openai, base_url: '{fake.base_url}', api_key: {keys.get(name, 'k')}"
        f"{more.get(name, '')}}}\n"
        for name, fake in fakes.items()
    )


def _groups(groups: dict[str, list[str]]) -> str:
    return "models:\n" + "".join(
        f"  {name}: {{deployments: [{', '.join(f'{{vendor: {v}, model: m}}' for v in vendors)}]}}\n"
        for name, vendors in groups.items()
    )


COMMON = """\
timeouts: {connect_s: 1, first_byte_s: 1, attempt_s: 3, stream_idle_s: 2}
failover: {max_attempts: 2}
breaker: {fail_max: 3, reset_timeout_s: 2}
health_check: {interval_s: 1, timeout_s: 0.5, unhealthy_threshold: 2, healthy_threshold: 2, jitter: 0.1}
"""

# The broken proxy: model group -> its deployments' vendors. Each fault has a group of its own.
FAULT_GROUPS = {
    "quota": ["quota", "backup"],  # the primary's quota runs out: one event, then skipped
    "auth": ["auth", "backup"],  # the proxy's key for the primary is refused
    "hang": ["hang", "backup"],  # completions hang, GET /models answers
    "solo": ["hang"],  # ... and the only deployment of another group
    "down": ["down", "backup"],  # connections refused
    "streams": ["cut"],  # 30% of streams cut after their first events, nothing else wrong
    "limited": ["rl"],  # the only vendor rate limits every request
    "tight": ["tight"],  # the only vendor's headers say its budget is spent: no headroom
    "narrow": ["narrow"],  # one connection, slow answers, two clients: requests wait for it
}
HEALTHY_GROUPS = {"ok": ["good_a", "good_b"]}
DOOMED_GROUPS = {"spare": ["spare"]}


def _server(secrets: Path) -> str:
    return (
        "server: {host: 127.0.0.1, port: 0, request_timeout_s: 6, "
        f"admin_key: '${{file:{secrets / 'admin'}}}'}}\n"
    )


def _client(name: str, secrets: Path, limits: str) -> str:
    return f"clients:\n  - {{name: {name}, key: '${{file:{secrets / name}}}', limits: {limits}}}\n"


def fault_config(fakes: dict[str, FakeVendor], secrets: Path) -> str:
    vendors = {v: fakes[v] for v in dict.fromkeys(itertools.chain(*FAULT_GROUPS.values()))}
    return (
        _server(secrets)
        + COMMON
        + _vendors(vendors, {"auth": "the-wrong-key"}, {"narrow": ", max_connections: 1"})
        + _groups(FAULT_GROUPS)
        + _client("agent", secrets, "{loop_max_repeats: 2, loop_window_s: 60}")
    )


def healthy_config(fakes: dict[str, FakeVendor], secrets: Path) -> str:
    limits = "{rpm: 100000, tokens_per_day: 1000000000, loop_max_repeats: 50}"
    return (
        _server(secrets)
        + COMMON
        + _vendors({"good_a": fakes["good"], "good_b": fakes["good"]}, {})
        + _groups(HEALTHY_GROUPS)
        + _client("team", secrets, limits)
    )


def doomed_config(fakes: dict[str, FakeVendor], secrets: Path) -> str:
    return (
        _server(secrets) + COMMON + _vendors({"spare": fakes["good"]}, {}) + _groups(DOOMED_GROUPS)
    )


# ------------------------------------------------------------------ Prometheus


@dataclass
class Prometheus:
    proc: asyncio.subprocess.Process
    url: str
    session: aiohttp.ClientSession
    log_path: Path

    async def api(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as r:
            body = await r.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def alerts(self) -> list[dict[str, Any]]:
        data = await self.api("alerts")
        alerts: list[dict[str, Any]] = data["alerts"]
        return alerts


@contextlib.asynccontextmanager
async def running_prometheus(
    binary: str, workdir: Path, targets: Iterable[str]
) -> AsyncIterator[Prometheus]:
    workdir.mkdir()
    (workdir / "rules.yml").write_text(shortened_rules(RULES.read_text()))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {"job_name": "llm-proxy", "static_configs": [{"targets": sorted(targets)}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        prom = Prometheus(proc, url, session, log_path)
        try:
            for _ in range(300):  # 30 s at most
                assert proc.returncode is None, log_path.read_text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/-/ready") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"prometheus did not start:\n{log_path.read_text()[-3000:]}")
            yield prom
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


# ------------------------------------------------------------------ traffic


class Traffic:
    """Client requests, each with a body of its own (loop detection must not see a loop)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.counter = itertools.count()
        self.stop = asyncio.Event()
        self.statuses: dict[str, list[int]] = {}

    async def send(self, url: str, key: str | None, group: str, *, stream: bool = False) -> int:
        body = {
            "model": group,
            "messages": [{"role": "user", "content": f"request {next(self.counter)}"}],
            "stream": stream,
        }
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async with self.session.post(
                f"{url}/v1/chat/completions", json=body, headers=headers
            ) as r:
                with contextlib.suppress(aiohttp.ClientPayloadError):
                    await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.statuses.setdefault(group, []).append(status)
        return status

    async def loop(
        self, url: str, key: str | None, group: str, *, gap_s: float, stream: bool = False
    ) -> None:
        """Requests one after another until stopped (bounded in count and time)."""
        ends = time.monotonic() + DEADLINE_S + 60
        for _ in range(2000):
            if self.stop.is_set() or time.monotonic() > ends:
                return
            await self.send(url, key, group, stream=stream)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), gap_s)


# ------------------------------------------------------------------ the test


@dataclass(frozen=True)
class Expected:
    alert: str
    labels: dict[str, str]
    why: str

    def matches(self, alert: dict[str, Any]) -> bool:
        labels = alert["labels"]
        return labels["alertname"] == self.alert and all(
            labels.get(k) == v for k, v in self.labels.items()
        )


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0
) -> None:
    ends = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.25) + 1):
        if await check():
            return
        if time.monotonic() > ends:
            break
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _panel_queries() -> list[tuple[int, str, str]]:
    """(panel id, title, PromQL) of every dashboard query, with Grafana's variables filled in."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$model_group", ".*").replace("$__rate_interval", "1m")
            out.append((panel["id"], panel["title"], expr))
    return out


async def test_every_alert_fires_for_its_fault_on_a_real_prometheus_and_none_when_healthy(
    prometheus: str, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in (("admin", ADMIN_KEY), ("agent", AGENT_KEY), ("team", TEAM_KEY)):
        (secrets / name).write_text(value + "\n")

    make = FAKES["openai"]
    fakes: dict[str, FakeVendor] = {
        "good": make("good"),
        "backup": make("backup"),
        "quota": make("quota", fault=Fault.preset("insufficient_quota")),
        "auth": make("auth", api_key="the-right-key"),
        "hang": make("hang", fault=Fault.preset("stall_first_byte")),
        "down": make("down"),
        "cut": make("cut", chunk_delay_s=0.05, fault=Fault(drop_after_chunks=2, rate=0.3)),
        "rl": make("rl", fault=Fault.preset("rate_limited", retry_after_s=1.0)),
        "tight": make("tight", budget=Budget(requests=1, window_s=30)),
        "narrow": make("narrow", fault=Fault(latency_s=0.3)),
    }
    for fake in fakes.values():
        await fake.start("127.0.0.1", 0)

    configs = {
        "faults": fault_config(fakes, secrets),
        "healthy": healthy_config(fakes, secrets),
        "doomed": doomed_config(fakes, secrets),
    }
    proxies: dict[str, Serve] = {}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    traffic = Traffic(session)
    tasks: list[asyncio.Task[None]] = []
    try:
        for name, text in configs.items():
            path = tmp_path / f"{name}.yaml"
            path.write_text(text)
            proxies[name] = await spawn_serve(
                path, free_port(), "--no-access-log", log_path=tmp_path / f"{name}.log"
            )
        await asyncio.gather(*(wait_ready(p) for p in proxies.values()))
        instance = {name: p.url.removeprefix("http://") for name, p in proxies.items()}

        async with running_prometheus(
            prometheus, tmp_path / "prometheus", instance.values()
        ) as prom:
            # Every target scraped at least once, so each series' 0 is on record before its
            # first event (as on any proxy that has been up for a scrape interval).
            async def scraped() -> bool:
                up = await prom.query('up{job="llm-proxy"} == 1')
                reloads = await prom.query('llmproxy_config_reloads_total{result="failure"}')
                return len(up) == 3 and len(reloads) == 3

            await _eventually(scraped, "the first scrape of every proxy")

            faults, healthy = proxies["faults"], proxies["healthy"]
            await fakes["down"].apply_fault(Fault(refuse=True))
            for group in [*FAULT_GROUPS, "narrow"]:  # two clients of the one-connection vendor
                gap = 0.5 if group in ("hang", "solo") else 0.25
                tasks.append(
                    asyncio.create_task(
                        traffic.loop(
                            faults.url, AGENT_KEY, group, gap_s=gap, stream=group == "streams"
                        )
                    )
                )
            for stream in (False, True):
                tasks.append(
                    asyncio.create_task(
                        traffic.loop(healthy.url, TEAM_KEY, "ok", gap_s=0.2, stream=stream)
                    )
                )

            # One burst of an agent stuck in a loop: 5 identical requests, 3 refused.
            loop_body = {"model": "quota", "messages": [{"role": "user", "content": "again"}]}
            statuses = []
            for _ in range(5):
                async with session.post(
                    f"{faults.url}/v1/chat/completions",
                    json=loop_body,
                    headers={"Authorization": f"Bearer {AGENT_KEY}"},
                ) as r:
                    statuses.append(r.status)
            assert statuses.count(429) == 3, statuses

            # A real failed reload (a broken file), then the file restored.
            faults_file = tmp_path / "faults.yaml"
            faults_file.write_text(configs["faults"] + "retries: 3\n")
            code, _, err = await run_cli(
                "reload", "--url", faults.url, "--admin-key", ADMIN_KEY, timeout=30
            )
            assert code == 1 and "retries: unknown key" in err, err
            faults_file.write_text(configs["faults"])
            # A successful one on the healthy proxy: not an alert.
            code, _, err = await run_cli(
                "reload", "--url", healthy.url, "--admin-key", ADMIN_KEY, timeout=30
            )
            assert code == 0, err

            # A proxy that dies.
            proxies["doomed"].proc.kill()
            await proxies["doomed"].proc.wait()

            expected = [
                Expected(
                    "LLMProxyVendorQuotaExhausted", {"deployment": "quota/m"}, "its only event"
                ),
                Expected("LLMProxyVendorAuthFailing", {"deployment": "auth/m"}, "401s"),
                Expected("LLMProxyLoopDetected", {"client": "agent"}, "3 refusals in a burst"),
                Expected(
                    "LLMProxyConfigReloadFailed", {"instance": instance["faults"]}, "one failure"
                ),
                Expected("LLMProxyDeploymentDown", {"deployment": "down/m"}, "refused"),
                Expected("LLMProxyDeploymentDown", {"deployment": "hang/m"}, "hangs, probes pass"),
                Expected("LLMProxyModelGroupDown", {"model_group": "solo"}, "its only one hangs"),
                Expected("LLMProxyClientErrors", {"model_group": "streams"}, "streams cut"),
                Expected("LLMProxyAllVendorsRateLimited", {"model_group": "limited"}, "all 429"),
                Expected("LLMProxyModelGroupLowHeadroom", {"model_group": "tight"}, "budget spent"),
                Expected("LLMProxyHighFailoverRate", {"model_group": "quota"}, "skipped"),
                Expected("LLMProxyDown", {"instance": instance["doomed"]}, "killed"),
                Expected(
                    "LLMProxyUpstreamPoolSaturated", {"vendor": "narrow"}, "one connection, two"
                ),
            ]
            fired: dict[int, float] = {}  # index in `expected` -> seconds until it fired
            started = time.monotonic()
            healthy_labels = {
                "instance": {instance["healthy"]},
                "model_group": set(HEALTHY_GROUPS),
                "deployment": {f"{v}/m" for v in HEALTHY_GROUPS["ok"]},
                "client": {"team"},
            }
            wrongly: list[dict[str, Any]] = []
            for _ in range(int(DEADLINE_S)):
                alerts = await prom.alerts()
                wrongly += [
                    a
                    for a in alerts
                    if any(a["labels"].get(k) in v for k, v in healthy_labels.items())
                ]
                for i, exp in enumerate(expected):
                    if i not in fired and any(
                        exp.matches(a) and a["state"] == "firing" for a in alerts
                    ):
                        fired[i] = round(time.monotonic() - started, 1)
                if len(fired) == len(expected) or time.monotonic() - started > DEADLINE_S:
                    break
                await asyncio.sleep(1)
            missing = [e for i, e in enumerate(expected) if i not in fired]
            assert not missing, (
                f"did not fire within {DEADLINE_S:.0f} s: {missing}\n"
                f"fired after (s): {[(expected[i].alert, t) for i, t in fired.items()]}\n"
                f"alerts now: {json.dumps(await prom.alerts(), indent=1)}"
            )
            assert not wrongly, f"alerts for the healthy proxy: {wrongly}"
            print(
                "seconds from the faults to firing:",
                [(expected[i].alert, expected[i].labels, t) for i, t in fired.items()],
            )

            # The hanging deployment passed its probes all along, and the stream cuts came
            # with no error answer: the alerts read what clients experienced.
            healthy_hang = await prom.query(
                'min_over_time(llmproxy_deployment_healthy{deployment="hang/m"}[5m])'
            )
            assert [float(r["value"][1]) for r in healthy_hang] == [1.0]
            unserved = await prom.query(
                'sum(llmproxy_unserved_requests_total{model_group="streams"})'
            )
            assert [float(r["value"][1]) for r in unserved] == [0.0]
            assert 0 < traffic.statuses["streams"].count(200) == len(traffic.statuses["streams"])

            # Every dashboard query has data.
            empty = []
            for panel_id, title, expr in _panel_queries():
                if panel_id in PANELS_EMPTY_WITHOUT_FEATURE:
                    continue
                if not await prom.query(expr):
                    empty.append((panel_id, title, expr))
            assert not empty, f"dashboard panels with no data: {empty}"
    finally:
        traffic.stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await task
        await session.close()
        for serve in proxies.values():
            if serve.proc.returncode is None:
                serve.proc.terminate()
                try:
                    await asyncio.wait_for(serve.proc.wait(), 10)
                except TimeoutError:
                    serve.proc.kill()
                    await serve.proc.wait()
        for fake in fakes.values():
            await fake.stop()
