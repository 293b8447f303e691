"""Keep the alert rules' two shipped forms in step, with one runbook base.

    python deploy/prometheus/render_rules.py [--runbook-base URL]

alerts.yml is the source (a Prometheus rule file, for `rule_files:`). This script

- sets every rule's `runbook_url` to `<base>#<alert name in lower case>` (the anchor of
  its section in docs/runbook.md); without --runbook-base it keeps the base alerts.yml
  already uses, so the only place to change it is this command line;
- writes deploy/k8s/prometheusrule.yaml: the same groups as a Prometheus Operator
  PrometheusRule.

tests/test_alert_rules.py fails when either file is not what this script would write.
Only PyYAML is needed (the proxy's own dependency).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
PROMETHEUS_RULE = HERE.parent / "k8s" / "prometheusrule.yaml"

_RUNBOOK_LINE = re.compile(r'^(\s*runbook_url: )"([^"#]*)#([a-z0-9]+)"$', re.MULTILINE)

_HEADER = """\
# Generated from deploy/prometheus/alerts.yml by deploy/prometheus/render_rules.py: edit
# alerts.yml and run the script (a test fails while the two differ). For the Prometheus
# Operator; the `prometheus`/`release` label your Prometheus's ruleSelector matches may differ.
"""


def runbook_base(text: str) -> str:
    """The one base every runbook_url of `text` uses (ValueError if they differ)."""
    bases = {m.group(2) for m in _RUNBOOK_LINE.finditer(text)}
    if len(bases) != 1:
        raise ValueError(f"alerts.yml must use one runbook base, found: {sorted(bases)}")
    return bases.pop()


def with_runbook_base(text: str, base: str) -> str:
    """`text` with every runbook_url set to `<base>#<alert>`, nothing else touched."""
    if not re.match(r"^https?://\S+$", base) or "#" in base:
        raise ValueError(f"the runbook base must be an absolute http(s) URL without '#': {base!r}")
    alerts = iter(re.findall(r"^\s*- alert: (\S+)$", text, re.MULTILINE))

    def replace(m: re.Match[str]) -> str:
        return f'{m.group(1)}"{base}#{next(alerts).lower()}"'

    return _RUNBOOK_LINE.sub(replace, text)


def prometheus_rule(text: str) -> str:
    """alerts.yml's groups as a PrometheusRule manifest."""
    groups = yaml.safe_load(text)["groups"]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "llm-proxy",
            "labels": {"app.kubernetes.io/name": "llm-proxy", "prometheus": "k8s"},
        },
        "spec": {"groups": groups},
    }
    return _HEADER + yaml.safe_dump(manifest, sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runbook-base", help="e.g. https://wiki.example.com/llm-proxy/runbook")
    args = parser.parse_args(argv)
    text = ALERTS.read_text()
    try:
        text = with_runbook_base(text, args.runbook_base or runbook_base(text))
    except ValueError as exc:
        print(f"render_rules: {exc}", file=sys.stderr)
        return 2
    ALERTS.write_text(text)
    PROMETHEUS_RULE.write_text(prometheus_rule(text))
    print(f"wrote {ALERTS} and {PROMETHEUS_RULE} (runbook base {runbook_base(text)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
