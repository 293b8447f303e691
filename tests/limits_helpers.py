"""Helpers shared by the client-limits, ledger and admin tests."""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp
import orjson

from proxy.fakes import FakeOpenAI
from tests.conftest import RunningProxy, build_config

KEY_A = "sk-team-a-0123456789"
KEY_B = "sk-team-b-0123456789"
ADMIN_KEY = "admin-secret-0123456789"

# Prices in USD per million tokens (deployment a/model-a).
PRICE = {"prompt": 2.0, "completion": 8.0, "cached_prompt": 0.5}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def models_yaml() -> str:
    return (
        "  smart:\n"
        "    deployments:\n"
        "      - {vendor: a, model: model-a, price_per_mtok: "
        f"{{prompt: {PRICE['prompt']}, completion: {PRICE['completion']}, "
        f"cached_prompt: {PRICE['cached_prompt']}}}}}\n"
        "  other:\n"
        "    deployments:\n"
        "      - {vendor: a, model: model-o}\n"
    )


def keyed_config(
    fake: FakeOpenAI,
    limits: str = "{}",
    *,
    models: str = "[smart]",
    extra: str = "",
    admin: bool = True,
) -> str:
    """A config with clients team-a (the given limits) and team-b (no limits, every group)."""
    text = build_config({"a": fake}, models_yaml(), extra)
    if admin:
        text = text.replace("server: {", f"server: {{admin_key_sha256: {sha(ADMIN_KEY)}, ", 1)
    return text + (
        "clients:\n"
        f"  - {{name: team-a, key_sha256: {sha(KEY_A)}, models: {models}, limits: {limits}}}\n"
        f"  - {{name: team-b, key_sha256: {sha(KEY_B)}}}\n"
    )


def chat_body(content: str = "hello", **kw: Any) -> dict[str, Any]:
    return {"model": "smart", "messages": [{"role": "user", "content": content}], **kw}


async def post(
    session: aiohttp.ClientSession,
    proxy: RunningProxy,
    body: dict[str, Any] | bytes,
    key: str | None = KEY_A,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST and read the whole answer: (status, lower-cased headers, parsed JSON or raw text)."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(f"{proxy.url}{path}", data=data, headers=h) as r:
        raw = await r.read()
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw.decode()
        return r.status, {k.lower(): v for k, v in r.headers.items()}, parsed


async def admin(
    session: aiohttp.ClientSession,
    url: str,
    method: str,
    path: str,
    key: str | None = ADMIN_KEY,
    **kw: Any,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with session.request(method, f"{url}{path}", headers=headers, **kw) as r:
        return r.status, await r.json()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.startswith(name):
            got = series[len(name) :]
            inner = got[1:-1] if got.startswith("{") else got
            if ",".join(sorted(inner.split(","))) == want or (not want and not inner):
                return float(value)
    return 0.0
