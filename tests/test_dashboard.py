"""The dashboard (in headless Chromium) and `llm-proxy status` show the same state: one document."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from proxy.fakes import Fault
from tests.conftest import FakeFactory, ProxyFactory, build_config, two_deployments
from tests.processes import run_cli

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "chromium is missing in CI: .ci/run must install Debian's `chromium` package"
            )
        pytest.skip(
            "chromium not installed (apt-get install chromium); the dashboard test runs in CI"
        )
    return CHROMIUM


async def test_dashboard_and_cli_show_the_same_breaker_states(
    fakes: FakeFactory, proxies: ProxyFactory, chromium: str
) -> None:
    from playwright.async_api import async_playwright

    a, b = await fakes("a"), await fakes("b")
    proxy = await proxies(
        build_config(
            {"a": a, "b": b},
            two_deployments(),
            "breaker: {fail_max: 2, reset_timeout_s: 600}\nhealth_check: {enabled: false}\n",
        )
    )
    client = proxy.client()
    a.set_fault(Fault.preset("server_error"))
    for _ in range(2):  # two 500s open a's breaker; b serves both
        await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "x"}]
        )
    b.set_fault(Fault.preset("rate_limited", retry_after_s=300))
    with pytest.raises(Exception, match="rate"):
        await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "x"}]
        )

    code, out, err = await run_cli("status", "--url", proxy.url, "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert doc["deployments"]["a/model-a"]["breaker"]["state"] == "open"
    assert doc["deployments"]["b/model-b"]["cooldown"]["reason"] == "rate_limited"

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{proxy.url}/dashboard")
            await page.wait_for_selector("#deployments td[data-deployment]", timeout=10_000)
            rows = await page.eval_on_selector_all(
                "#deployments tbody tr",
                "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))",
            )
            version = await page.text_content("#version")
            await page.screenshot(path=str(ROOT / "tests" / ".dashboard.png"))
        finally:
            await browser.close()

    shown = {row[0]: row for row in rows}
    assert version == doc["config_version"]
    assert set(shown) == set(doc["deployments"])
    for dep_id, dep in doc["deployments"].items():
        row = shown[dep_id]
        assert row[1] == dep["breaker"]["state"]  # the same document, rendered twice
        assert row[2] == str(dep["breaker"]["failures"])
        assert row[5] == ("yes" if dep["usable"] else "no")
    assert shown["a/model-a"][1] == "open"
    assert shown["b/model-b"][3].endswith("(rate_limited)")
    # b's 429 said 0 of its 3 requests are left: its headroom, as the status document says.
    assert doc["deployments"]["b/model-b"]["headroom"]["summary"].startswith("requests 0/3 left")
    assert shown["b/model-b"][6].startswith("requests 0/3 left, reset in")
    assert (
        shown["a/model-a"][6] == "unknown" and doc["deployments"]["a/model-a"]["headroom"] is None
    )

    code, table, _ = await run_cli("status", "--url", proxy.url)
    assert code == 0
    lines = {
        line.split()[0]: line.split()
        for line in table.splitlines()
        if line.startswith(("a/", "b/"))
    }
    assert lines["a/model-a"][1] == "open" and lines["b/model-b"][1] == "closed"
    assert "rate_limited" in " ".join(lines["b/model-b"])
    assert "requests 0/3 left, reset in" in " ".join(lines["b/model-b"])
