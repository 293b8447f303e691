"""The alert rules load and their promtool unit tests pass (promtool is Debian's `prometheus` package)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


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


def test_every_alert_has_summary_description_and_runbook_section() -> None:
    import yaml

    runbook = (RULES.parent.parent / "docs" / "runbook.md").read_text()
    rules = [
        r for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for r in g["rules"]
    ]
    assert len(rules) >= 9
    for rule in rules:
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], rule["alert"]
        anchor = ann["runbook_url"].split("#", 1)[1]
        assert f"## {rule['alert']}" in runbook and anchor == rule["alert"].lower(), rule["alert"]
