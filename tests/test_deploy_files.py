"""The deploy files agree with the code: ports, probe paths, config paths, CLI flags, metrics.

There is no Docker engine or cluster here, so each file is parsed and every value that
must match the proxy is checked against the proxy itself: configs go through the real
config loader, command lines through the real CLI parser, probe paths through the real
app's routes, metric names through a real registry.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.cli import build_parser
from proxy.config import Config, parse_config
from proxy.fakes.__main__ import _parse_args as parse_fake_args
from proxy.gateway import Gateway

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# Metric names used by alerts/dashboard for features of other issues that are not merged yet.
# Metrics that alert rules or the dashboard may name before the code exports them (none now).
PENDING_METRICS: dict[str, str] = {}


def _serve_args(argv: list[str]) -> Any:
    """Parse a `llm-proxy serve` command line exactly as the CLI does (SystemExit if wrong)."""
    return build_parser().parse_args(["serve", *argv])


def _routes() -> set[str]:
    config = parse_config(
        "vendors: {a: {type: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
        "models: {m: {deployments: [{vendor: a, model: x}]}}\n",
        env={},
    )
    app = create_app(config)
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


def _code_metric_names() -> set[str]:
    """Every sample name the proxy can expose (counters with _total, histograms with _bucket...)."""
    config = parse_config(
        "vendors: {a: {type: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
        "models: {m: {deployments: [{vendor: a, model: x}]}}\n",
        env={},
    )
    from prometheus_client import generate_latest

    text = generate_latest(Gateway(config).metrics.registry).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""],
            "info": ["_info"],
        }.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
        names.add(family.name)
    return names


# ------------------------------------------------------------------ Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"use the exec form (a JSON list): {rest}"
    return [str(v) for v in value]


def test_dockerfile_is_slim_non_root_checks_health_and_serves_the_mounted_config() -> None:
    instructions = _dockerfile()
    get = lambda word: [rest for w, rest in instructions if w == word]  # noqa: E731
    assert get("FROM") == ["python:3.11-slim"]
    (user,) = get("USER")
    assert user not in ("root", "0") and not user.startswith("0:")
    (stop,) = get("STOPSIGNAL")
    assert stop == "SIGTERM"
    (expose,) = get("EXPOSE")
    port = int(expose)
    assert port == 4000  # the config's default server.port

    (health,) = get("HEALTHCHECK")
    cmd = health.split("CMD", 1)[1].strip()
    assert "curl" not in cmd and "wget" not in cmd  # neither is in the slim image
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", cmd)
    assert url is not None and int(url.group(1)) == port
    assert url.group(2) == "/health/ready" and url.group(2) in _routes()

    (entrypoint,) = get("ENTRYPOINT")
    assert _exec_form(entrypoint) == ["llm-proxy", "serve"]
    assert 'llm-proxy = "proxy.cli:main"' in (ROOT / "pyproject.toml").read_text()
    (cmd_line,) = get("CMD")
    args = _serve_args(_exec_form(cmd_line))
    envs = dict(re.findall(r"(\w+)=(\S+)", " ".join(get("ENV"))))
    assert args.config == envs["LLM_PROXY_CONFIG"] == "/etc/llm-proxy/config.yaml"
    assert args.shutdown_grace_s > 0

    # No secrets baked in: no key-like variables, no config files copied.
    for name in envs:
        assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD", name), name
    copied = [p for rest in get("COPY") for p in shlex.split(rest)[:-1]]
    assert sorted(copied) == ["README.md", "proxy", "pyproject.toml"]
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and all(
        f"!{p.rstrip('/')}" in [i.rstrip("/") for i in ignore] for p in copied
    )


# ------------------------------------------------------------------ docker compose


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (relative to deploy/) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (DEPLOY / source).resolve()
    return out


def _with_secret_files(text: str, mount: str, names: set[str], tmp: Path) -> str:
    """`text` with its ${file:MOUNT/NAME} references pointed at test files: every NAME must
    be one the container gets (a compose secret, a key of the Kubernetes Secret)."""
    refs = set(re.findall(r"\$\{file:" + re.escape(mount) + r"/([^}]+)\}", text))
    assert refs and refs <= names, (refs, names)
    for ref in refs:
        (tmp / ref).write_text(f"test-{ref}\n")
    return text.replace("${file:" + mount + "/", "${file:" + str(tmp) + "/")


def _compose_proxies(tmp: Path) -> dict[str, tuple[dict[str, Any], Config]]:
    proxies = {}
    compose = _compose()
    for name, service in compose["services"].items():
        if "build" not in service or service.get("entrypoint"):
            continue
        args = _serve_args(service["command"])
        host_file = _mounts(service)[args.config]
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        secrets = set(service.get("secrets", []))
        assert secrets <= set(compose["secrets"])
        text = _with_secret_files(host_file.read_text(), "/run/secrets", secrets, tmp)
        proxies[name] = (service, parse_config(text, file=str(host_file), env=env))
        assert env["LLM_PROXY_ADMIN_KEY_FILE"].removeprefix("/run/secrets/") in secrets
    return proxies


def test_compose_runs_two_proxy_replicas_on_redis_in_front_of_fake_vendors(
    tmp_path: Path,
) -> None:
    compose = _compose()
    services = compose["services"]
    proxies = _compose_proxies(tmp_path)
    assert len(proxies) >= 2
    fakes = {
        name: parse_fake_args(s["command"])
        for name, s in services.items()
        if s.get("entrypoint") == ["python", "-m", "proxy.fakes"]
    }
    assert len(fakes) >= 2
    for name, (service, config) in proxies.items():
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        container_ports = {int(p.split(":")[1]) for p in service["ports"]}
        assert container_ports == {config.server.port}, name
        assert config.state.backend == "redis"
        assert config.server.admin_key_sha256  # the admin API is reachable from outside
        redis_url = urlsplit(config.state.url or "")
        assert redis_url.hostname in services and redis_url.port == 6379
        assert "redis" in services[redis_url.hostname]["image"]
        for vendor in config.vendors.values():
            url = urlsplit(vendor.base_url)
            assert url.hostname in fakes, vendor.name  # runs with no keys: only fakes
            assert url.port == fakes[url.hostname].port
            assert fakes[url.hostname].host == "0.0.0.0"
        depends = service.get("depends_on", {})
        assert "redis" in depends and all(f in depends for f in fakes)
        stop = service["stop_grace_period"]
        assert float(stop.rstrip("s")) > _serve_args(service["command"]).shutdown_grace_s


def test_compose_prometheus_scrapes_the_replicas_with_our_alerts_and_grafana_has_our_dashboard(
    tmp_path: Path,
) -> None:
    services = _compose()["services"]
    proxies = _compose_proxies(tmp_path)
    prom = services["prometheus"]
    mounts = _mounts(prom)
    config_path = next(
        a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file=")
    )
    prom_config = yaml.safe_load(mounts[config_path].read_text())
    for rule_file in prom_config["rule_files"]:
        assert mounts[rule_file] == (DEPLOY / "prometheus" / "alerts.yml").resolve()
    (job,) = prom_config["scrape_configs"]
    assert job["job_name"] == "llm-proxy"  # what the alerts' up{job="llm-proxy"} reads
    assert job["metrics_path"] == "/metrics" and "/metrics" in _routes()
    targets = set(job["static_configs"][0]["targets"])
    assert targets == {f"{name}:{cfg.server.port}" for name, (_, cfg) in proxies.items()}

    grafana = services["grafana"]
    gmounts = _mounts(grafana)
    provisioning = gmounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    ds_url = urlsplit(datasource["datasources"][0]["url"])
    assert ds_url.hostname == "prometheus" and f"{ds_url.port}:{ds_url.port}" in prom["ports"]
    provider = yaml.safe_load((provisioning / "dashboards" / "llm-proxy.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    dashboard = [host for target, host in gmounts.items() if target.startswith(path + "/")]
    assert dashboard == [(DEPLOY / "grafana" / "dashboard.json").resolve()]


def test_compose_replicas_trace_to_the_collector_service_and_the_image_has_the_sdk(
    tmp_path: Path,
) -> None:
    services = _compose()["services"]
    proxies = _compose_proxies(tmp_path)
    for name, (service, config) in proxies.items():
        tracing = config.tracing
        assert tracing.enabled and tracing.protocol == "http/protobuf", name
        url = urlsplit(tracing.endpoint)
        assert url.path == "/v1/traces" and url.port == 4318  # OTLP/HTTP
        collector = services[url.hostname or ""]
        assert "jaeger" in collector["image"] or "otel" in collector["image"]
        assert url.hostname in service["depends_on"]
        extras = service["build"]["args"]["EXTRAS"]
        assert "tracing" in extras.strip("[]").split(",")
    # The build installs the extra the argument names.
    assert 'pip install --no-cache-dir ".${EXTRAS}"' in (DEPLOY / "Dockerfile").read_text()
    assert "tracing = [" in (ROOT / "pyproject.toml").read_text()


# ------------------------------------------------------------------ Kubernetes


def _k8s() -> dict[str, dict[str, Any]]:
    """kind/name -> manifest, for every document in deploy/k8s."""
    out = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] != "Kustomization":
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_the_secret_is_not_applied_from_git() -> None:
    """`kubectl apply -k` must not overwrite the real keys with placeholders."""
    assert not [k for k in _k8s() if k.startswith("Secret/")]


def test_redis_keeps_its_data_on_a_persistent_volume() -> None:
    m = _k8s()
    spec = m["Deployment/llm-proxy-redis"]["spec"]
    (volume,) = spec["template"]["spec"]["volumes"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in m
    assert spec["strategy"]["type"] == "Recreate"  # one pod at a time on a ReadWriteOnce volume


def test_k8s_deployment_probes_ports_config_and_draining_agree_with_the_proxy(
    tmp_path: Path,
) -> None:
    m = _k8s()
    deployment = m["Deployment/llm-proxy"]
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    args = _serve_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    # The config: the ConfigMap's file at the path --config names, loaded with the env the
    # pod gets (literal values and the Secret's keys): every ${VAR} must be provided.
    mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
    mount_dir, file_name = args.config.rsplit("/", 1)
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[mount_dir])
    items = {i["path"]: i["key"] for i in volume["configMap"]["items"]}
    configmap = m[f"ConfigMap/{volume['configMap']['name']}"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert "envFrom" not in container  # keys are files (rotated without a restart)
    (keys,) = [v for v in spec["volumes"] if "secret" in v]
    keys_dir = next(
        vm["mountPath"] for vm in container["volumeMounts"] if vm["name"] == keys["name"]
    )
    kustomization = (DEPLOY / "k8s" / "kustomization.yaml").read_text()
    secret_keys = set(re.findall(r"--from-literal=(\w+)=", kustomization))
    text = _with_secret_files(configmap["data"][items[file_name]], keys_dir, secret_keys, tmp_path)
    config = parse_config(text, file="configmap", env=env)
    assert config.server.admin_key_sha256  # the admin API is reachable from outside the pod
    assert env["LLM_PROXY_ADMIN_KEY_FILE"] == f"{keys_dir}/LLM_PROXY_ADMIN_KEY"
    assert keys["secret"]["secretName"] in kustomization
    assert config.server.port == ports["http"]
    assert config.state.backend == "redis"  # several replicas: breakers must be shared

    routes = _routes()
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        http = container[probe]["httpGet"]
        assert http["path"] == path and path in routes
        assert http["port"] in ports

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + args.drain_delay_s + args.shutdown_grace_s
    assert spec["terminationGracePeriodSeconds"] > needed

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]["cpu"]  # the HPA scales on CPU utilisation

    redis_url = urlsplit(env["REDIS_URL"])
    redis_service = m[f"Service/{redis_url.hostname}"]
    assert redis_url.port in [p["port"] for p in redis_service["spec"]["ports"]]


def test_k8s_service_pdb_hpa_and_servicemonitor_select_the_proxy_pods() -> None:
    m = _k8s()
    deployment = m["Deployment/llm-proxy"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels
    container_ports = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }

    service = m["Service/llm-proxy"]
    assert _matches(service["spec"]["selector"], pod_labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports

    pdb = m["PodDisruptionBudget/llm-proxy"]
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]

    hpa = m["HorizontalPodAutoscaler/llm-proxy"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "llm-proxy")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]

    monitor = m["ServiceMonitor/llm-proxy"]
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and "/metrics" in _routes()


# ------------------------------------------------------------------ metric names


@pytest.mark.parametrize(
    "path", ["prometheus/alerts.yml", "grafana/dashboard.json"], ids=["alerts", "dashboard"]
)
def test_every_metric_name_in_alerts_and_dashboard_exists_in_the_code(path: str) -> None:
    used = set(re.findall(r"\bllmproxy_[a-z_]+", (DEPLOY / path).read_text()))
    assert used
    unknown = used - _code_metric_names() - set(PENDING_METRICS)
    assert not unknown, f"{path} uses metrics the proxy does not expose: {sorted(unknown)}"


def test_the_state_backend_alert_reads_the_gauge_the_code_exports() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    (rule,) = [
        r for g in rules["groups"] for r in g["rules"] if r["alert"] == "LLMProxyStateBackendDown"
    ]
    assert "llmproxy_state_backend_up" in rule["expr"]
    assert "llmproxy_state_backend_up" in _code_metric_names()
