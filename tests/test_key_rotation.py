"""Vendor keys and the admin key as files: read again by a reload, so a key is rotated
without a restart; a reload that changes a vendor's key ends its auth_error cooldowns.
Empty keys are config errors naming the vendor. And the admin verbs of the CLI an on-call
engineer types (drain, undrain, clear-cooldown, reset-usage) against a real proxy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_config
from proxy.core.outcomes import Outcome, OutcomeClass
from tests.conftest import FakeFactory, ProxyFactory
from tests.processes import run_cli

GROUP = (
    "models:\n  smart: {deployments: [{vendor: a, model: model-a}, {vendor: b, model: model-b}]}\n"
)


def _vendor(name: str, url: str, key: str) -> str:
    return f"  {name}: {{type: openai, base_url: '{url}', api_key: '{key}'}}\n"


@pytest.mark.parametrize(
    ("written", "env", "problem"),
    [
        ("''", {}, "vendors.a.api_key: is empty: vendor 'a' would refuse every request"),
        ("'${KEY}'", {"KEY": "  "}, "is empty (${KEY} is empty or only whitespace)"),
        ("'${KEY:-}'", {}, "is empty (${KEY} is empty or only whitespace)"),
        ("'${file:/nonexistent/key}'", {}, "cannot read ${file:/nonexistent/key}: No such file"),
    ],
)
def test_an_empty_or_unreadable_vendor_key_is_an_error_naming_the_vendor(
    written: str, env: dict[str, str], problem: str
) -> None:
    text = f"vendors:\n  a: {{type: openai, base_url: 'http://x/v1', api_key: {written}}}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text + GROUP.replace(", {vendor: b, model: model-b}", ""), env=env)
    assert problem in str(err.value)


def test_api_key_none_means_keyless_and_a_key_file_is_read_trimmed(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("  sk-from-file\n")
    text = (
        "vendors:\n"
        "  a: {type: openai, base_url: 'http://x/v1', api_key: none}\n"
        "  b: {type: openai, base_url: 'http://y/v1', api_key: '${file:key}'}\n" + GROUP
    )
    config = parse_config(text, file=str(tmp_path / "proxy.yaml"), env={})
    assert config.vendors["a"].api_key is None
    assert config.vendors["b"].api_key == "sk-from-file"  # relative to the config file


async def test_a_reload_rereads_the_key_file_and_ends_the_auth_cooldown(
    fakes: FakeFactory,
    proxies: ProxyFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = await fakes("a", api_key="the-new-key")
    b = await fakes("b")
    key_file = tmp_path / "a.key"
    key_file.write_text("the-old-key\n")
    proxy = await proxies(
        "vendors:\n"
        + _vendor("a", a.base_url, f"${{file:{key_file}}}")
        + _vendor("b", b.base_url, "kb")
        + GROUP
        + "health_check: {enabled: false}\n"
    )
    client = proxy.client()
    messages = [{"role": "user", "content": "hi"}]
    raw = await client.chat.completions.with_raw_response.create(model="smart", messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-proxy-attempts"] == "a/model-a=auth_error, b/model-b=success"
    dep = proxy.gateway.deployments["a/model-a"]
    assert dep.cooldown_reason == "auth_error"

    key_file.write_text("the-new-key\n")
    with caplog.at_level(logging.WARNING, logger="llmproxy"):
        await proxy.gateway.reload_from_file()
    assert dep.cooldown_left(0) == 0 and dep.cooldown_reason == ""
    (record,) = [
        r for r in caplog.records if getattr(r, "event", "") == "vendor_credentials_changed"
    ]
    assert record.vendor == "a" and record.cleared == ["a/model-a"]  # type: ignore[attr-defined]
    raw = await client.chat.completions.with_raw_response.create(model="smart", messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-proxy-deployment"] == "a/model-a"

    # A reload that changes nothing of a vendor's key leaves other cooldowns alone.
    dep.observe(_auth_error(), 0.0, proxy.gateway.config.cooldowns)
    await proxy.gateway.reload_from_file()
    assert dep.cooldown_reason == "auth_error"


def _auth_error() -> Outcome:
    return Outcome(OutcomeClass.AUTH_ERROR, 401, None, "bad key")


async def test_the_admin_verbs_act_on_a_running_proxy_with_the_key_from_a_file(
    fakes: FakeFactory, proxies: ProxyFactory, tmp_path: Path
) -> None:
    a, b = await fakes("a"), await fakes("b")
    admin = tmp_path / "admin.key"
    admin.write_text("the-admin-key\n")
    team = tmp_path / "team.key"
    team.write_text("team-key")
    proxy = await proxies(
        f"server: {{admin_key: '${{file:{admin}}}'}}\n"
        "vendors:\n"
        + _vendor("a", a.base_url, "ka")
        + _vendor("b", b.base_url, "kb")
        + GROUP
        + "health_check: {enabled: false}\n"
        + f"clients:\n  - {{name: team, key: '${{file:{team}}}', "
        "limits: {rpm: 60, loop_max_repeats: 8, loop_window_s: 60}}\n"
    )
    env = {"LLM_PROXY_ADMIN_KEY_FILE": str(admin)}
    url = ("--url", proxy.url)

    code, out, err = await run_cli("drain", "a/model-a", *url, env=env)
    assert code == 0, err
    assert "drained a/model-a" in out
    code, table, err = await run_cli("status", *url, env=env)
    assert code == 0, err
    row = next(line for line in table.splitlines() if line.startswith("a/model-a"))
    assert "open (drained)" in row
    assert "loop_detection: 8 repeats per 60s" in table and "rpm: 60/60 left" in table

    code, _, err = await run_cli("undrain", "a/model-a", *url, env=env)
    assert code == 0, err
    assert proxy.gateway.deployments["a/model-a"].breaker.state.label == "closed"

    dep = proxy.gateway.deployments["b/model-b"]
    dep.observe(_auth_error(), 0.0, proxy.gateway.config.cooldowns)
    code, _, err = await run_cli("clear-cooldown", "b/model-b", *url, env=env)
    assert code == 0, err
    assert dep.cooldown_reason == ""

    code, out, err = await run_cli("reset-usage", "team", *url, env=env)
    assert code == 0 and "reset team's usage" in out, err

    code, _, err = await run_cli("drain", "a/model-a", *url, env={"LLM_PROXY_ADMIN_KEY_FILE": ""})
    assert code == 1 and "drain failed (401)" in err
    code, _, err = await run_cli("drain", "nope/x", *url, env=env)
    assert code == 1 and "drain failed (404)" in err
