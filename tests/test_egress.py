"""Vendors reached through a corporate egress proxy: HTTPS_PROXY / HTTP_PROXY / NO_PROXY,
a vendor's own `proxy:` and `ca_file:`, CONNECT tunnels, and clear errors when the proxy
wants credentials or refuses.

The proxy, the TLS vendor (a test CA's certificate in front of a fake vendor) and, at the
end, `llm-proxy serve` itself are real processes or servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy.config import ConfigError, parse_config
from proxy.core.outcomes import OutcomeClass
from proxy.http1 import (
    DIRECT,
    Egress,
    EgressProxyError,
    NoProxy,
    Pool,
    parse_proxy_url,
    tls_context,
)
from proxy.vendors.classify import classify_transport
from tests.conftest import FakeFactory, free_port
from tests.egress_helpers import EgressProxy, TLSFront
from tests.processes import spawn_serve, wait_ready
from tests.raw_http import RawServer, answering, fetch, read_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- proxy URLs and NO_PROXY -------------------------------------------------------------


def test_a_proxy_url_carries_basic_credentials_that_never_show() -> None:
    proxy = parse_proxy_url("http://alice:s%40cret@Corp.Example:3128")
    assert (proxy.host, proxy.port, proxy.address) == ("corp.example", 3128, "corp.example:3128")
    assert proxy.authorization == "Basic " + base64.b64encode(b"alice:s@cret").decode()
    assert "cret" not in repr(proxy) and "alice" not in repr(proxy)
    assert parse_proxy_url("corp:8080") == parse_proxy_url("http://corp:8080")
    assert parse_proxy_url("http://corp").port == 80


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://u:hunter2@corp:443", "must be an http:// proxy URL"),
        ("socks5://u:hunter2@corp:1080", "must be an http:// proxy URL"),
        ("http://u:hunter2@:3128", "has no host"),
        ("http://u:hunter2@corp:99999", "invalid port"),
        ("http://u:hunter2@corp:3128/path", "no path"),
    ],
)
def test_a_malformed_proxy_url_says_why_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_proxy_url(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "exempt"),
    [
        ("*", "api.openai.com", 443, True),
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        (".example.com", "api.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("example.com", "notexample.com", 443, False),
        ("EXAMPLE.com", "Api.Example.COM", 443, True),
        ("localhost,127.0.0.1", "localhost", 8000, True),
        (" localhost , internal ", "internal", 80, True),
        ("vllm:8000", "vllm", 8000, True),
        ("vllm:8000", "vllm", 9000, False),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("10.1.2.3", "10.1.2.3", 80, True),
        ("::1", "::1", 80, True),
        ("[::1]:8000", "::1", 8000, True),
        ("[::1]:8000", "::1", 9000, False),
        ("", "example.com", 443, False),
    ],
)
def test_no_proxy_follows_curl_and_httpx(no_proxy: str, host: str, port: int, exempt: bool) -> None:
    assert NoProxy.parse(no_proxy).exempts(host, port) is exempt


def test_the_environment_picks_a_proxy_per_scheme_lower_case_first() -> None:
    egress = Egress.from_environment(
        {
            "HTTPS_PROXY": "http://upper:1",
            "https_proxy": "http://lower:2",
            "ALL_PROXY": "http://all:3",
            "NO_PROXY": "internal",
        }
    )
    assert egress.proxy_for("api.openai.com", 443, True) == parse_proxy_url("http://lower:2")
    assert egress.proxy_for("vllm", 80, False) == parse_proxy_url("http://all:3")
    assert egress.proxy_for("internal", 443, True) is None
    assert egress.describe("api.openai.com", 443, True) == (
        "a CONNECT tunnel through the proxy at lower:2 (from https_proxy and ALL_PROXY)"
    )
    assert egress.describe("internal", 443, True) == "direct (NO_PROXY exempts internal)"
    assert Egress.from_environment({"HTTP_PROXY": ""}) is DIRECT
    assert Egress.from_environment({}).describe("api.openai.com", 443, True) == "direct"


def test_a_malformed_proxy_variable_is_named() -> None:
    with pytest.raises(ValueError, match="the environment variable HTTPS_PROXY must be an http"):
        Egress.from_environment({"HTTPS_PROXY": "https://corp:443"})


# -- config ------------------------------------------------------------------------------

CONFIG = """
vendors:
  v: {type: openai, base_url: 'https://api.example.com/v1'%s}
models:
  m: {deployments: [{vendor: v, model: x}]}
"""


def vendor(extra: str = "", env: dict[str, str] | None = None) -> Egress:
    return parse_config(CONFIG % extra, env=env or {}).vendors["v"].egress


def problems(extra: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(CONFIG % extra, env=env or {})
    return str(caught.value)


def test_a_vendor_proxy_overrides_the_environment_and_direct_opts_out() -> None:
    env = {"HTTPS_PROXY": "http://envproxy:3128"}
    assert vendor(env=env).proxy_for("api.example.com", 443, True) == parse_proxy_url(
        "envproxy:3128"
    )
    own = vendor(", proxy: 'http://u:p@mine:8080'", env)
    assert own.proxy_for("api.example.com", 443, True) == parse_proxy_url("http://u:p@mine:8080")
    assert vendor(", proxy: direct", env).proxy_for("api.example.com", 443, True) is None


def test_egress_config_errors_name_the_key_and_never_the_password(tmp_path: Path) -> None:
    text = problems(", proxy: 'https://u:hunter2@corp:443'")
    assert "vendors.v.proxy: must be an http:// proxy URL" in text and "hunter2" not in text
    text = problems("", {"HTTPS_PROXY": "socks5://u:hunter2@corp"})
    assert "the environment variable HTTPS_PROXY" in text and "hunter2" not in text
    missing = tmp_path / "nope.pem"
    assert f"vendors.v.ca_file: cannot read '{missing}'" in problems(f", ca_file: '{missing}'")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert "holds no PEM CA certificate" in problems(f", ca_file: '{junk}'")


# -- through a real proxy ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


def server_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    return context


@pytest.fixture
async def tls_vendor(ca: tuple[trustme.CA, Path]) -> AsyncIterator[TLSFront]:
    """https://localhost:PORT answering "ok" to every request, certified by the test CA."""
    async with (
        RawServer(answering(*[OK] * 10)) as backend,
        TLSFront(server_context(ca[0]), backend.port) as front,
    ):
        yield front


async def test_an_https_vendor_through_a_connect_tunnel(
    ca: tuple[trustme.CA, Path], tls_vendor: TLSFront
) -> None:
    async with EgressProxy() as proxy:
        pool = Pool(
            egress=Egress.from_environment({"HTTPS_PROXY": proxy.url}),
            ssl_context=tls_context(str(ca[1])),
        )
        try:
            url = f"https://localhost:{tls_vendor.port}/v1/x"
            assert await fetch(pool, url) == b"ok"
            assert await fetch(pool, url) == b"ok"  # the same tunnel, kept alive
        finally:
            await pool.close()
    assert proxy.tunnels == [f"localhost:{tls_vendor.port}"]


async def test_the_tunnel_verifies_the_vendor_not_the_proxy(tls_vendor: TLSFront) -> None:
    async with EgressProxy() as proxy:
        pool = Pool(egress=Egress.from_environment({"HTTPS_PROXY": proxy.url}))
        try:
            with pytest.raises(ssl.SSLError):  # the system store does not know the test CA
                await fetch(pool, f"https://localhost:{tls_vendor.port}/v1/x")
        finally:
            await pool.close()


async def test_no_proxy_goes_direct(ca: tuple[trustme.CA, Path], tls_vendor: TLSFront) -> None:
    async with EgressProxy() as proxy:
        env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost"}
        pool = Pool(egress=Egress.from_environment(env), ssl_context=tls_context(str(ca[1])))
        try:
            assert await fetch(pool, f"https://localhost:{tls_vendor.port}/v1/x") == b"ok"
        finally:
            await pool.close()
    assert proxy.tunnels == []


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        (
            None,
            "the egress proxy at 127.0.0.1:{proxy} requires authentication: put user:password "
            "in the proxy URL",
        ),
        (
            "alice:wrong-pw",
            "the egress proxy at 127.0.0.1:{proxy} rejected the credentials in the proxy URL "
            "(407 Proxy Authentication Required)",
        ),
    ],
)
async def test_a_proxy_that_wants_credentials_says_so(
    ca: tuple[trustme.CA, Path], tls_vendor: TLSFront, credentials: str | None, says: str
) -> None:
    async with EgressProxy(credentials="alice:right-pw") as proxy:
        userinfo = f"{credentials}@" if credentials else ""
        url = f"http://{userinfo}127.0.0.1:{proxy.port}"
        pool = Pool(
            egress=Egress.through(parse_proxy_url(url)), ssl_context=tls_context(str(ca[1]))
        )
        right = Pool(
            egress=Egress.through(parse_proxy_url(f"http://alice:right-pw@127.0.0.1:{proxy.port}")),
            ssl_context=tls_context(str(ca[1])),
        )
        try:
            with pytest.raises(EgressProxyError) as caught:
                await fetch(pool, f"https://localhost:{tls_vendor.port}/v1/x")
            assert await fetch(right, f"https://localhost:{tls_vendor.port}/v1/x") == b"ok"
        finally:
            await pool.close()
            await right.close()
    expected = says.format(proxy=proxy.port)
    assert expected in str(caught.value)
    assert caught.value.status == 407
    outcome = classify_transport(caught.value, phase="connect")
    assert outcome.cls is OutcomeClass.UNREACHABLE
    assert expected in outcome.message and "pw" not in outcome.message


async def test_a_proxy_that_refuses_the_tunnel_says_which_and_why(tls_vendor: TLSFront) -> None:
    async with EgressProxy(refuse=(403, "Forbidden")) as proxy:
        pool = Pool(egress=Egress.from_environment({"HTTPS_PROXY": proxy.url}))
        try:
            with pytest.raises(EgressProxyError) as caught:
                await fetch(pool, f"https://localhost:{tls_vendor.port}/v1/x")
        finally:
            await pool.close()
    assert str(caught.value) == (
        f"the egress proxy at 127.0.0.1:{proxy.port} refused the tunnel to "
        f"localhost:{tls_vendor.port}: 403 Forbidden"
    )
    assert classify_transport(caught.value, phase="connect").cls is OutcomeClass.UNREACHABLE


async def test_an_unreachable_proxy_is_named() -> None:
    port = free_port()
    pool = Pool(egress=Egress.from_environment({"HTTPS_PROXY": f"http://127.0.0.1:{port}"}))
    try:
        with pytest.raises(
            EgressProxyError, match=f"could not connect to the egress proxy at 127.0.0.1:{port}"
        ):
            await fetch(pool, "https://api.example.com/v1/x")
    finally:
        await pool.close()


async def test_plain_http_through_the_proxy_uses_absolute_form_and_its_credentials() -> None:
    seen: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(2):
            seen.append((await read_request(r))[0])
            w.write(OK)
            await w.drain()
        await r.read()

    async with RawServer(handler) as vendor_srv, EgressProxy(credentials="u:pw") as proxy:
        pool = Pool(egress=Egress.through(parse_proxy_url(f"http://u:pw@127.0.0.1:{proxy.port}")))
        try:
            assert await fetch(pool, vendor_srv.url + "?a=1") == b"ok"
            assert await fetch(pool, vendor_srv.url + "?a=1") == b"ok"
        finally:
            await pool.close()
    auth = b"Proxy-Authorization: Basic " + base64.b64encode(b"u:pw")
    for head in seen:
        assert head.startswith(b"POST %s?a=1 HTTP/1.1\r\n" % vendor_srv.url.encode())
        assert auth in head
    assert vendor_srv.connections == 1  # one connection to the proxy, kept alive


async def test_plain_http_through_a_proxy_that_wants_credentials_says_so() -> None:
    async with RawServer(answering(OK)) as vendor_srv, EgressProxy(credentials="u:pw") as proxy:
        pool = Pool(egress=Egress.from_environment({"HTTP_PROXY": proxy.url}))
        try:
            with pytest.raises(EgressProxyError, match="requires authentication"):
                await fetch(pool, vendor_srv.url)
        finally:
            await pool.close()


# -- llm-proxy serve with HTTPS_PROXY -----------------------------------------------------


@pytest.mark.parametrize("no_proxy", [False, True])
async def test_serve_reaches_a_tls_vendor_through_https_proxy_and_no_proxy_bypasses_it(
    fakes: FakeFactory, ca: tuple[trustme.CA, Path], tmp_path: Path, no_proxy: bool
) -> None:
    fake = await fakes("a")
    config = tmp_path / "proxy.yaml"
    async with (
        TLSFront(server_context(ca[0]), int(fake.origin.rsplit(":", 1)[1])) as front,
        EgressProxy() as egress,
    ):
        config.write_text(
            "server: {host: 127.0.0.1, request_timeout_s: 20}\n"
            "health_check: {enabled: false}\n"
            "vendors:\n"
            f"  a: {{type: openai, base_url: 'https://localhost:{front.port}/v1', "
            f"api_key: k, ca_file: '{ca[1]}'}}\n"
            "models:\n  smart: {deployments: [{vendor: a, model: m}]}\n"
        )
        env = {"HTTPS_PROXY": egress.url, "NO_PROXY": "localhost" if no_proxy else ""}
        server = await spawn_serve(
            config, free_port(), "--log-level", "debug", log_path=tmp_path / "serve.log", env=env
        )
        try:
            await wait_ready(server)
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{server.url}/v1/chat/completions",
                    json={"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
                ) as r,
            ):
                assert r.status == 200, await r.text()
                assert (await r.json())["choices"][0]["message"]["content"]
        finally:
            server.proc.terminate()
            await asyncio.wait_for(server.proc.wait(), 15)
    records = server.records()
    (startup,) = [rec for rec in records if rec.get("event") == "vendor_egress"]
    tunnels = [rec for rec in records if rec.get("event") == "egress_tunnel"]
    if no_proxy:
        assert egress.tunnels == []
        assert tunnels == []
        assert "go direct (NO_PROXY exempts localhost)" in startup["message"]
    else:
        assert egress.tunnels == [f"localhost:{front.port}"]
        assert len(tunnels) == 1
        assert f"through the egress proxy at 127.0.0.1:{egress.port}" in tunnels[0]["message"]
        assert (
            f"a CONNECT tunnel through the proxy at 127.0.0.1:{egress.port}" in (startup["message"])
        )
    assert front.connections == 1


def test_egress_keys_on_a_vendor_called_through_litellm_are_an_error_not_ignored() -> None:
    text = """
vendors:
  g: {type: gemini, api_key: x, ca_file: /etc/ssl/corp.pem}
models:
  m: {deployments: [{vendor: g, model: gemini-2.5-pro}]}
"""
    with pytest.raises(ConfigError, match=r"vendors\.g\.ca_file: applies to native vendors only"):
        parse_config(text, env={})
