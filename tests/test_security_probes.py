"""The proxy probed as an attacker would, with raw sockets: no client and no vendor can hurt
another tenant.

Each probe asserts the safe outcome: every route that reaches a vendor needs a client key
(walked from the route table); a client's bad header is its own 400 and never touches a
vendor's breaker; llhttp's verdict holds on both lanes; a client that does not read cannot
make the proxy buffer pipelined answers; slow heads and bodies are cut at the configured
time; the connection cap refuses clearly; the keyless admin API cannot be reached through a
browser or a rebound DNS name.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from proxy.api import admin
from proxy.app import CLIENT_ENDPOINTS, create_app, public_routes
from proxy.fakes import FakeOpenAI
from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config
from tests.hostile_vendor import HostileVendor, Script
from tests.limits_helpers import KEY_A, keyed_config

BODY = orjson.dumps({"model": "smart", "messages": [{"role": "user", "content": "hi"}]})
HANDED_OVER = b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"


def request(
    path: str = "/v1/chat/completions",
    body: bytes = BODY,
    headers: str = "",
    host: str = "Host: localhost\r\n",
    method: bytes = b"POST",
) -> bytes:
    head = (
        f"{host}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    ).encode("latin-1")
    return method + b" " + path.encode() + b" HTTP/1.1\r\n" + head + body


async def exchange(port: int, data: bytes, *, lane: str = "fast") -> tuple[int, bytes]:
    """Send `data` (after a request that hands the connection to aiohttp, for that lane) and
    read one answer: (status, body); (0, b"") when the proxy closed without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if lane == "aiohttp":
            writer.write(HANDED_OVER)
            status, _ = await read_answer(reader)
            assert status == 200
        writer.write(data)
        return await read_answer(reader)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return 0, b""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    parts = []
    while True:
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
        data = await reader.readexactly(size + 2)
        if not size:
            return status, b"".join(parts)
        parts.append(data[:-2])


LIMITED_SERVER = (
    "server: {host: 127.0.0.1, port: 0, request_timeout_s: 20, header_timeout_s: 1, "
    "body_timeout_s: 1, max_connections: 20}\nhealth_check: {enabled: false}\n"
)


@pytest.fixture
async def proxy(fakes: FakeFactory, proxies: ProxyFactory) -> tuple[FakeOpenAI, RunningProxy]:
    a = await fakes("a")
    config = build_config({"a": a}, "  smart:\n    deployments:\n      - {vendor: a, model: m}\n")
    server_line = config.splitlines()[0] + "\n"
    return a, await proxies(config.replace(server_line, LIMITED_SERVER))


# -- every route that reaches a vendor authenticates ------------------------------------


def test_every_route_is_client_admin_or_public() -> None:
    """A route outside the three tables would have no access rule: the app has none."""
    app = create_app(parse_example())
    declared: set[tuple[str, str]] = {(ep.method, ep.path) for ep in CLIENT_ENDPOINTS}
    declared |= {(method, path) for method, path, _ in admin.ADMIN_ROUTES}
    declared |= {(r.method, r.path) for r in public_routes() if isinstance(r, web.RouteDef)}
    declared = {(method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)) for method, path in declared}
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served == declared


def parse_example() -> object:
    from proxy.config import parse_config

    return parse_config(
        "vendors:\n  a: {type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: none}\n"
        "models:\n  smart:\n    deployments:\n      - {vendor: a, model: m}\n",
        env={},
    )


@pytest.mark.parametrize("lane", ["fast", "aiohttp"])
async def test_every_client_route_needs_a_key_its_allow_list_and_its_limits(
    fakes: FakeFactory, proxies: ProxyFactory, lane: str
) -> None:
    a = await fakes("a")
    p = await proxies(keyed_config(a, "{rpm: 2}"))
    bodies = {
        "/v1/chat/completions": BODY,
        "/v1/completions": orjson.dumps({"model": "smart", "prompt": "hi"}),
        "/v1/embeddings": orjson.dumps({"model": "smart", "input": "hi"}),
        "/v1/messages": orjson.dumps({"model": "smart", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        "/v1/messages/count_tokens": orjson.dumps({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}),
        "/v1/responses": orjson.dumps({"model": "smart", "input": "hi"}),
        "/v1/responses/input_tokens": orjson.dumps({"model": "smart", "input": "hi"}),
    }  # fmt: skip
    with_body = {ep.path for ep in CLIENT_ENDPOINTS if ep.resolve is None}
    assert set(bodies) == with_body, "a new route needs a probe here"
    # Requests about a stored response have no body: their group is the one the response
    # was created in, and an id the client's key did not create is not found.
    for ep in CLIENT_ENDPOINTS:
        if ep.resolve is None:
            continue
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", "resp_probe", ep.path)
        method = ep.method.encode()
        status, answer = await exchange(p.port, request(path, b"", method=method), lane=lane)
        assert status == 401, (ep.method, path, answer)
        auth = f"Authorization: Bearer {KEY_A}\r\n"
        status, answer = await exchange(p.port, request(path, b"", auth, method=method), lane=lane)
        assert status == 404 and b"response_not_found" in answer, (ep.method, path, answer)
    for path, body in bodies.items():
        status, answer = await exchange(p.port, request(path, body), lane=lane)
        assert status == 401, (path, answer)
        other = body.replace(b'"smart"', b'"other"')
        auth = f"Authorization: Bearer {KEY_A}\r\n"
        status, answer = await exchange(p.port, request(path, other, auth), lane=lane)
        assert status == 403, (path, answer)  # team-a may use `smart` only
    assert a.stats.total_requests == 0
    # count_tokens counts against the client's rpm like any request (2 a minute here).
    body = bodies["/v1/messages/count_tokens"]
    auth = f"x-api-key: {KEY_A}\r\n"
    statuses = [
        (await exchange(p.port, request("/v1/messages/count_tokens", body, auth), lane=lane))[0]
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


# -- blame ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lane", ["fast", "aiohttp"])
async def test_a_bad_client_header_is_the_clients_400_and_never_opens_a_shared_breaker(
    fakes: FakeFactory, proxies: ProxyFactory, lane: str
) -> None:
    claude = await fakes("claude", vendor="anthropic")
    p = await proxies(
        build_config(
            {"claude": claude},
            "  smart:\n    deployments:\n      - {vendor: claude, model: c}\n",
            "breaker: {fail_max: 5}\nhealth_check: {enabled: false}\n",
        )
    )
    body = orjson.dumps(
        {"model": "smart", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    bad = b"anthropic-beta: \xe2\x82\xac\r\n".decode("latin-1")
    for _ in range(20):
        status, answer = await exchange(p.port, request("/v1/messages", body, bad), lane=lane)
        assert status == 400, answer
        assert b"anthropic-beta" in answer
    dep = p.gateway.deployments["claude/c"]
    assert dep.breaker.state.name == "CLOSED" and dep.breaker.fail_counter == 0
    assert claude.stats.total_requests == 0
    status, _ = await exchange(p.port, request("/v1/messages", body), lane=lane)
    assert status == 200  # everyone else is still served


# -- one set of parsing rules on both lanes -----------------------------------------------

_REFUSED = [
    ("control byte \\x01", request(headers="X-Probe: a\x01b\r\n")),
    ("escape \\x1b", request(headers="X-Probe: a\x1b[31m\r\n")),
    ("DEL \\x7f", request(headers="X-Probe: a\x7fb\r\n")),
    ("no Host", request(host="")),
    ("two Hosts", request(host="Host: a\r\nHost: b\r\n")),
    ("Content-Length +N", request().replace(b"Content-Length: ", b"Content-Length: +")),
    ("two Content-Lengths", request(headers="Content-Length: 5\r\n")),
    ("CL and TE", request(headers="Transfer-Encoding: chunked\r\n")),
    ("space before colon", request(headers="X-Probe : a\r\n")),
]


@pytest.mark.parametrize("lane", ["fast", "aiohttp"])
@pytest.mark.parametrize(("name", "data"), _REFUSED, ids=[n for n, _ in _REFUSED])
async def test_what_llhttp_refuses_is_a_400_on_both_lanes(
    proxy: tuple[FakeOpenAI, RunningProxy], lane: str, name: str, data: bytes
) -> None:
    a, p = proxy
    status, answer = await exchange(p.port, data, lane=lane)
    assert status == 400, (name, answer)
    assert a.stats.total_requests == 0


async def test_connection_is_a_token_list(proxy: tuple[FakeOpenAI, RunningProxy]) -> None:
    _, p = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(request(headers="Connection: keep-alive, x-close-me\r\n") + request())
    assert (await read_answer(reader))[0] == 200
    assert (await read_answer(reader))[0] == 200  # the connection was kept
    writer.close()


# -- back-pressure, slow clients, the connection cap --------------------------------------


@pytest.fixture
async def big() -> AsyncIterator[HostileVendor]:
    body = b'{"id":"x","object":"chat.completion","choices":[],"pad":"' + b"p" * 8_000_000 + b'"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    vendor = HostileVendor(Script(head % len(body), [body]))
    await vendor.start()
    yield vendor
    await vendor.stop()


async def test_a_client_that_does_not_read_gets_no_second_pipelined_answer_made(
    proxies: ProxyFactory, big: HostileVendor
) -> None:
    config = (
        "vendors:\n"
        f"  big: {{type: openai, base_url: '{big.base_url}', api_key: k}}\n"
        "models:\n  smart:\n    deployments:\n      - {vendor: big, model: m}\n"
        "health_check: {enabled: false}\n"
    )
    p = await proxies(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.transport.set_write_buffer_limits(0)  # type: ignore[attr-defined]
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(request() * 3)
    await writer.drain()
    for _ in range(50):  # the first answer is made and stuck in the socket
        if big.requests:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # time for a second upstream call, were one to be made
    assert big.requests == 1
    (conn,) = p.listener.connections
    assert conn.writing_paused
    writer.transport.abort()


async def _drip_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send a byte every 0.2 s (never enough for the 1 s limits) until the proxy closes the
    connection; what it sent before closing."""
    for _ in range(40):
        await asyncio.sleep(0.2)
        if reader.at_eof():
            break
        try:
            writer.write(b"a")
            await writer.drain()
        except ConnectionError:
            break
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        return b""


async def test_a_slow_head_or_body_is_cut_at_the_configured_time_on_both_lanes(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    _, p = proxy
    whole = request()
    slow_head = whole[: whole.index(b"\r\n\r\n")] + b"\r\nX-Slow: "  # a value that never ends
    cases = {
        "head, fast lane": (b"", slow_head),
        "body, fast lane": (b"", whole[:-10]),
        "head, aiohttp lane": (HANDED_OVER, slow_head),
        "body, aiohttp lane": (
            HANDED_OVER,
            whole.replace(b"Content-Length: ", b"Transfer-Encoding: chunked\r\nX-Len: ")[
                :-20
            ].replace(b"\r\n\r\n", b"\r\n\r\n40\r\n", 1),
        ),
    }
    for name, (first, partial) in cases.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        if first:
            writer.write(first)
            assert (await read_answer(reader))[0] == 200
        started = time.monotonic()
        timeouts = p.listener.timeouts
        writer.write(partial)
        answer = await _drip_until_closed(reader, writer)
        assert time.monotonic() - started < 8, name  # cut near the 1 s limit, not never
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), (name, answer)
        assert p.listener.timeouts == timeouts + 1, name
        writer.close()


async def test_the_connection_cap_refuses_with_a_clear_503(
    proxy: tuple[FakeOpenAI, RunningProxy],
) -> None:
    _, p = proxy
    held = [await asyncio.open_connection("127.0.0.1", p.port) for _ in range(20)]
    for _ in range(50):
        if len(p.listener.connections) == 20:
            break
        await asyncio.sleep(0.02)
    status, answer = await exchange(p.port, request())
    assert status == 503
    assert orjson.loads(answer)["error"]["code"] == "too_many_connections"
    for _, writer in held:
        writer.close()
    for _ in range(50):
        if len(p.listener.connections) < 20:
            break
        await asyncio.sleep(0.02)
    assert (await exchange(p.port, request()))[0] == 200


# -- the keyless admin API ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ("Host: localhost:4000\r\n", True),
        ("Host: attacker.example\r\n", False),
        ("Host: localhost\r\nOrigin: https://attacker.example\r\n", False),
        ("Host: localhost\r\nOrigin: http://localhost:4000\r\n", True),
    ],
)
async def test_the_keyless_admin_api_answers_local_requests_only(
    proxy: tuple[FakeOpenAI, RunningProxy], headers: str, allowed: bool
) -> None:
    _, p = proxy
    get = f"GET /admin/status HTTP/1.1\r\n{headers}\r\n".encode()
    status, _ = await exchange(p.port, get)
    assert status == (200 if allowed else 403)
    post = f"POST /admin/reload HTTP/1.1\r\n{headers}Content-Length: 0\r\n\r\n".encode()
    status, _ = await exchange(p.port, post)
    assert status == 403  # a write must be JSON
