"""The alert rules load and their promtool unit tests pass (promtool is Debian's `prometheus` package).

The PrometheusRule and the runbook links are checked here too; tests/test_alerts_live.py
proves the rules against a real Prometheus scraping real proxies.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def _render_rules() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_rules", RULES / "render_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "promtool is missing in CI: .ci/run must install Debian's `prometheus` package"
            )
        pytest.skip(
            "promtool not installed (apt-get install prometheus); the alert rule tests run in CI"
        )
    return path


def test_rules_are_valid(promtool: str) -> None:
    out = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    out = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_summary_description_and_an_absolute_runbook_link() -> None:
    runbook = (RULES.parent.parent / "docs" / "runbook.md").read_text()
    rules = [
        r for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for r in g["rules"]
    ]
    assert len(rules) >= 15
    bases = set()
    for rule in rules:
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], rule["alert"]
        base, anchor = ann["runbook_url"].split("#", 1)
        bases.add(base)
        assert base.startswith("https://") and base.endswith("/docs/runbook.md"), base
        assert f"\n## {rule['alert']}\n" in runbook and anchor == rule["alert"].lower(), rule[
            "alert"
        ]
    assert len(bases) == 1, bases


def test_the_prometheus_rule_is_generated_from_alerts_yml() -> None:
    render = _render_rules()
    text = (RULES / "alerts.yml").read_text()
    assert render.with_runbook_base(text, render.runbook_base(text)) == text
    generated = (RULES.parent / "k8s" / "prometheusrule.yaml").read_text()
    assert generated == render.prometheus_rule(text), (
        "deploy/k8s/prometheusrule.yaml is stale: run python deploy/prometheus/render_rules.py"
    )
    other = render.with_runbook_base(text, "https://wiki.example.com/llm-proxy/runbook")
    assert other.count('runbook_url: "https://wiki.example.com/llm-proxy/runbook#llmproxy') == (
        text.count('runbook_url: "')
    )
    with pytest.raises(ValueError, match="absolute"):
        render.with_runbook_base(text, "docs/runbook.md")


def test_the_prometheus_rule_loads_in_prometheus(promtool: str, tmp_path: Path) -> None:
    manifest = yaml.safe_load((RULES.parent / "k8s" / "prometheusrule.yaml").read_text())
    assert manifest["kind"] == "PrometheusRule"
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    out = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
