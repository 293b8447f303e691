"""The Codex CLI (`@openai/codex`, which speaks only the Responses API) completes `codex exec`
through the proxy, in a loopback-only network namespace with the proxy and the fake
vendors (tests/codex_launcher.py): once served natively by an OpenAI deployment, once
failed over from a rate-limited OpenAI deployment to an Anthropic one (translated, with
Codex's namespace tool flattened and its web search tool mapped).

`.ci/install-codex` installs the pinned Codex into .cache/npm (CI runs it). Outside CI the
test installs it itself when npm is there, and skips only when npm is not (or cannot
reach its registry); in CI (CI=true) a missing Codex fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODEX = ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "codex"
LAUNCHER = ROOT / "tests" / "codex_launcher.py"


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; in CI, .ci/run installs it (.ci/install-codex)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def codex() -> Path:
    if shutil.which("unshare") is None:
        _unavailable("unshare (util-linux) is missing: Codex runs in its own network namespace")
    if not CODEX.exists() or os.environ.get("CI") != "true":
        if shutil.which("npm") is None:
            _unavailable("npm is not installed: the Codex CLI test needs @openai/codex")
        installed = subprocess.run(
            [str(ROOT / ".ci" / "install-codex")], capture_output=True, text=True, timeout=600
        )
        if installed.returncode != 0:
            _unavailable(f"npm could not install @openai/codex: {installed.stderr[-500:]}")
    if not CODEX.exists():
        _unavailable(f"{CODEX} is missing")
    return CODEX


def _run(tmp_path: Path, codex: Path, **spec: Any) -> dict[str, Any]:
    spec = {"codex": str(codex), "work": str(tmp_path), "prompt": "Say hi.", **spec}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--net", "--map-root-user"]
    done = subprocess.run(
        [*unshare, sys.executable, str(LAUNCHER), str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    if (
        done.returncode != 0
        and "unshare" in done.stderr
        and "Operation not permitted" in done.stderr
    ):
        _unavailable(f"cannot create a network namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codex_rc"] == 0, report["stderr"] + report["proxy_log"][-3000:]
    return report


def test_codex_exec_through_the_proxy_to_openai(tmp_path: Path, codex: Path) -> None:
    report = _run(tmp_path, codex, vendors={"oa": "openai"}, group=[["oa", "gpt-5"]])
    assert report["stdout"].strip().endswith(report["pieces"]["oa"])
    sent = report["vendors"]["oa"]
    assert [r["path"] for r in sent] == ["/v1/responses", "/v1/responses"]
    first = sent[0]["body"]
    assert first["model"] == "gpt-5" and first["stream"] is True and first["store"] is False
    kinds = {tool["type"] for tool in first["tools"]}
    assert {"function", "namespace", "web_search"} <= kinds  # Codex's defaults, passed through
    # The second turn carries the tool outputs of the first (the fake called every tool).
    assert any(item.get("type") == "function_call_output" for item in sent[1]["body"]["input"])


def test_codex_exec_fails_over_to_anthropic(tmp_path: Path, codex: Path) -> None:
    report = _run(
        tmp_path,
        codex,
        vendors={"oa": "openai", "an": "anthropic"},
        group=[["oa", "gpt-5"], ["an", "claude-sonnet-4-5"]],
        faults={"oa": "rate_limited"},
        codex_args=["-c", 'model_reasoning_effort="medium"'],
    )
    assert report["stdout"].strip().endswith(report["pieces"]["an"])
    assert [r["path"] for r in report["vendors"]["oa"]] == ["/v1/responses"]  # the 429
    sent = report["vendors"]["an"]
    assert [r["path"] for r in sent] == ["/v1/messages", "/v1/messages"]
    tools = sent[0]["body"]["tools"]
    names = {tool["name"] for tool in tools}
    assert any(name.startswith("multi_agent_v1__") for name in names)  # namespace, flattened
    assert {"type": "web_search_20250305", "name": "web_search"} in tools
    results = [
        block
        for message in sent[1]["body"]["messages"]
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert results  # Codex's tool outputs went back as tool results
    # Its reasoning ran as Anthropic thinking, and the thinking (with its signature) came
    # back in the next turn through the reasoning item Codex kept.
    assert sent[0]["body"]["thinking"]["type"] == "enabled"
    turn = next(m for m in sent[1]["body"]["messages"] if m["role"] == "assistant")
    assert turn["content"][0]["type"] == "thinking" and turn["content"][0]["signature"]
