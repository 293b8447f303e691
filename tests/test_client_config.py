"""The `clients:` section, prices, the admin key and the ledger path: every mistake is a
start-up error naming its line, never a client locked out (or let in) at run time."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, parse_config
from tests.limits_helpers import sha

BASE = """\
vendors:
  a: {type: openai, base_url: 'http://127.0.0.1:9/v1'}
models:
  smart:
    deployments:
      - {vendor: a, model: m, price_per_mtok: {prompt: 1, completion: 4}}
    context_window_fallback: long
  long:
    deployments:
      - {vendor: a, model: big}
"""


def errors(clients: str, env: dict[str, str] | None = None, extra: str = "") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + extra + clients, env=env or {"KEY": "k"})
    return [str(i) for i in caught.value.issues]


LIMITS = [
    "rpm",
    "tpm",
    "max_concurrent",
    "tokens_per_day",
    "budget_usd_per_day",
    "loop_max_repeats",
    "loop_window_s",
]


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_zero_or_negative_limits_are_config_errors(limit: str, value: str) -> None:
    got = errors(f"clients:\n  - {{name: t, key: ${{KEY}}, limits: {{{limit}: {value}}}}}\n")
    assert len(got) == 1
    assert got[0].startswith(
        f"<config>:12: clients[0].limits.{limit}: must be greater than 0 (to have no such "
        "limit, leave the key out), got "
    )


@pytest.mark.parametrize("limit", ["rpm", "tpm", "max_concurrent", "tokens_per_day"])
def test_counted_limits_must_be_whole_numbers(limit: str) -> None:
    got = errors(f"clients:\n  - {{name: t, key: ${{KEY}}, limits: {{{limit}: 2.5}}}}\n")
    assert got == [f"<config>:12: clients[0].limits.{limit}: must be an integer, got 2.5"]


@pytest.mark.parametrize(
    ("clients", "message"),
    [
        ("clients: []\n", "clients: lists no client"),
        (
            "clients:\n  - {name: t, key: sk-plaintext}\n",
            "clients[0].key: must not be written in the file",
        ),
        ("clients:\n  - {name: t}\n", "clients[0].key: is required"),
        (
            "clients:\n  - {name: t, key_sha256: abc}\n",
            "clients[0].key_sha256: must be 64 hex digits",
        ),
        (
            f"clients:\n  - {{name: t, key: ${{KEY}}, key_sha256: {sha('k')}}}\n",
            "clients[0].key: give either `key` or `key_sha256`, not both",
        ),
        (
            f"clients:\n  - {{name: t, key: ${{KEY}}}}\n  - {{name: u, key_sha256: {sha('k')}}}\n",
            "clients[1].key: is the same key as client 't'",
        ),
        (
            "clients:\n  - {name: t, key: ${KEY}}\n  - {name: t, key_sha256: " + sha("x") + "}\n",
            "clients[1].name: client 't' is defined twice",
        ),
        ("clients:\n  - {name: 'a b', key: ${KEY}}\n", "clients[0].name: 'a b' must be 1-64"),
        (
            "clients:\n  - {name: t, key: ${KEY}, models: [nope]}\n",
            "names unknown model group(s) 'nope'",
        ),
        ("clients:\n  - {name: t, key: ${KEY}, models: []}\n", "clients[0].models: is empty"),
        (
            "clients:\n  - {name: t, key: ${KEY}, models: [smart], limits: {budget_usd_per_day: 5}}\n",
            "give `price_per_mtok` to: a/big",  # reachable through the context-window fallback
        ),
        (
            "clients:\n  - {name: t, key: ${KEY}, limits: {rpn: 5}}\n",
            "clients[0].limits.rpn: unknown key",
        ),
    ],
)
def test_client_mistakes_are_reported_with_their_line(clients: str, message: str) -> None:
    got = errors(clients)
    assert any(message in e for e in got), got
    assert all(e.startswith("<config>:") for e in got)


def test_an_empty_key_variable_is_an_error() -> None:
    got = errors("clients:\n  - {name: t, key: ${KEY}}\n", env={"KEY": ""})
    assert any("is empty" in e for e in got)


def test_admin_key_rules() -> None:
    assert any(
        "server.admin_key: must not be written in the file" in e
        for e in errors("", extra="server: {admin_key: hunter2}\n")
    )
    assert any(
        "server.admin_key_sha256: must be 64 hex digits" in e
        for e in errors("", extra="server: {admin_key_sha256: nothex}\n")
    )


def test_a_valid_clients_section_resolves_to_digests_only() -> None:
    config = parse_config(
        BASE
        + "state: {sqlite_path: /tmp/usage.db}\n"
        + "clients:\n  - {name: team-a, key: ${KEY}, models: [smart, long], "
        "limits: {rpm: 60, tpm: 1000, max_concurrent: 2, tokens_per_day: 10000, "
        "loop_max_repeats: 4}}\n",
        env={"KEY": "secret-key"},
    )
    assert config.clients is not None
    (client,) = config.clients
    assert client.key_sha256 == sha("secret-key")
    assert client.models == frozenset({"smart", "long"})
    assert client.limits.loop_window_s == 60.0
    assert config.state.sqlite_path == "/tmp/usage.db"
    assert "secret-key" not in repr(config)
    price = config.deployments["a/m"].price
    assert price is not None and price.cost_usd(1000, 500, 0) == pytest.approx(0.003)


def test_no_clients_section_means_open() -> None:
    assert parse_config(BASE, env={}).clients is None
