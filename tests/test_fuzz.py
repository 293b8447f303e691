"""Hostile input, generated: every inbound API must answer it with a clean 4xx, never a 5xx,
a crash or a connection left hanging.

Hypothesis drives raw HTTP (``http.client``, so the bytes are exactly what we generate:
invalid UTF-8, truncated or hostile JSON, huge numbers, deep nesting, wrong field types,
giant and numerous headers) at the real app served from a background loop with a healthy
fake vendor behind it. Bounded, derandomized and deadline-free, so it is reproducible and
never flaky on a slow CI machine; the whole module takes seconds.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from proxy.api.admin import ADMIN_ROUTES
from tests.test_openapi_schemathesis import ADMIN_KEY, _Background

LLM_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
)
FIELDS = ("model", "messages", "prompt", "input", "stream", "max_tokens", "temperature",
          "n", "stop", "tools", "system", "stream_options", "base_url", "api_base")  # fmt: skip

SETTINGS = hypothesis.settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = _Background()
    server.start()
    yield server.port
    server.stop()


def _send(port: int, method: str, path: str, body: bytes | None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()  # a stuck connection fails here with a timeout
        return resp.status, resp.read()
    finally:
        conn.close()


def _check(port: int, status: int, data: bytes) -> None:
    assert status < 500, (status, data[:300])
    # And the proxy is still serving.
    assert _send(port, "GET", "/health/live", None)[0] == 200


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
# Objects with the real field names but arbitrary (mostly wrong) values.
hostile_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(
    lambda d: {"model": "smart", **d} if "model" not in d and len(d) % 2 else d
)


def _deep(depth: int, opener: str) -> bytes:
    closer = "]" if opener == "[" else "}"
    if opener == "{":
        return (('{"a":' * depth) + "1" + ("}" * depth)).encode()
    return (opener * depth + closer * depth).encode()


raw_bodies = st.one_of(
    hostile_objects.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),  # invalid UTF-8, garbage
    hostile_objects.map(lambda d: json.dumps(d).encode()[: max(1, len(json.dumps(d)) // 2)]),
    st.tuples(st.integers(1, 200_000), st.sampled_from("[{")).map(lambda t: _deep(*t)),
    st.integers(300, 400).map(lambda n: b'{"model": "smart", "max_tokens": 1' + b"0" * n + b"}"),
    st.just(b'{"model": "smart", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
    st.just(b'{"model": NaN, "temperature": Infinity}'),
    st.just(b'{"model": "smart", "model": "other", "messages": []}'),
)


@SETTINGS
@hypothesis.given(path=st.sampled_from(LLM_PATHS), body=raw_bodies,
                  ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"]))  # fmt: skip
def test_llm_endpoints_survive_hostile_bodies(
    port: int, path: str, body: bytes, ctype: str
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    status, data = _send(port, "POST", path, body, headers)
    _check(port, status, data)


def _admin_paths() -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in ADMIN_ROUTES]


@SETTINGS
@hypothesis.given(
    route=st.sampled_from(_admin_paths()),
    param=st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=40
    ),
    query=st.dictionaries(
        st.sampled_from(["days", "client", "day", "from", "to"]), st.text(max_size=20), max_size=3
    ),
    body=raw_bodies,
)
def test_admin_endpoints_survive_hostile_input(
    port: int, route: tuple[str, str], param: str, query: dict[str, str], body: bytes
) -> None:
    from urllib.parse import quote, urlencode

    method, path = route
    path = path.replace("{name}", quote(param, safe="")).replace("{id:.+}", quote(param, safe=""))
    if query:
        path += "?" + urlencode(query)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_KEY}"}
    status, data = _send(port, method, path, body if method != "GET" else None, headers)
    if path.startswith("/admin/reload"):
        assert status in (200, 400, 405, 415), (status, data[:300])
    _check(port, status, data)


@SETTINGS
@hypothesis.given(
    size=st.integers(1, 200_000),
    count=st.integers(1, 300),
    name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
    path=st.sampled_from([*LLM_PATHS, "/admin/status", "/v1/models", "/health/ready"]),
)
def test_giant_and_numerous_headers_get_a_clean_4xx(
    port: int, size: int, count: int, name: str, path: str
) -> None:
    headers = {f"x-{name}-{i}": "v" * (size // count) for i in range(count)}
    headers["Content-Type"] = "application/json"
    try:
        status, data = _send(port, "POST" if path.startswith("/v1/") and path != "/v1/models" else "GET",
                             path, b'{"model": "smart", "messages": [{"role": "user", "content": "x"}]}',
                             headers)  # fmt: skip
    except (ConnectionResetError, BrokenPipeError):
        status, data = 0, b""  # the server may close while we are still sending: not a 5xx
    assert status < 500, (status, data[:300])
    if size // count > 8190 or count > 128:  # aiohttp's line and header-count limits
        assert status in (0, 400), (status, data[:300])
    assert _send(port, "GET", "/health/live", None)[0] == 200


def test_an_oversized_body_gets_413_without_reading_it_all(port: int) -> None:
    body: Any = (
        b'{"model": "smart", "messages": [{"role": "user", "content": "'
        + b"x" * (64 << 20)
        + b'"}]}'
    )
    try:
        status, data = _send(
            port, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
        )
    except (ConnectionResetError, BrokenPipeError):
        return  # refused before we finished sending: also a clean refusal
    assert status == 413, (status, data[:300])
