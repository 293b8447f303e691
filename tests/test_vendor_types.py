"""Vendor types beyond OpenAI: config validation per type, Azure's URLs and key header,
Mistral's dropped field, litellm's parameters, and that litellm stays unimported (and
quiet) unless a vendor needs it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import openai
import pytest

from proxy.config import ConfigError, DeploymentConfig, Timeouts, VendorConfig, parse_config
from proxy.core.vendor_types import VENDOR_TYPES
from proxy.fakes import Fault
from proxy.formats.sse import SSEParser
from proxy.vendors import make_adapter
from proxy.vendors.base import UpstreamCall
from tests.conftest import FakeFactory, ProxyFactory

MODELS = "models:\n  m:\n    deployments:\n      - {vendor: v, model: x}\n"


def _vendor(line: str) -> str:
    return f"vendors:\n  v: {line}\n" + MODELS


def test_every_supported_type_has_an_adapter_and_unsupported_ones_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_vendor("{type: watsonx, api_key: k}"), env={})
    message = str(info.value)
    assert "vendors.v.type: unsupported vendor type 'watsonx'; supported:" in message
    for t in ("openai", "azure", "anthropic", "gemini", "vertex", "bedrock", "mistral", "cohere"):
        assert t in message and t in VENDOR_TYPES


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (
            "{type: azure, api_key: k, api_version: '2024-10-21'}",
            "vendors.v.base_url: is required for vendor type 'azure'",
        ),
        (
            "{type: azure, base_url: 'https://r.openai.azure.com', api_key: k}",
            "vendors.v.api_version: is required for vendor type 'azure'",
        ),
        (
            "{type: vertex, region: us-east5}",
            "vendors.v.project: is required for vendor type 'vertex'",
        ),
        ("{type: vertex, project: p}", "vendors.v.region: is required for vendor type 'vertex'"),
        ("{type: bedrock}", "vendors.v.region: is required for vendor type 'bedrock'"),
    ],
)
def test_missing_type_specific_keys_are_config_errors(line: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_vendor(line), file="x.yaml", env={})
    assert f"x.yaml:2: {error}" in str(info.value)


@pytest.mark.parametrize(
    ("line", "base_url"),
    [
        ("{type: anthropic, api_key: k}", "https://api.anthropic.com"),
        ("{type: gemini, api_key: k}", "https://generativelanguage.googleapis.com"),
        ("{type: mistral, api_key: k}", "https://api.mistral.ai/v1"),
        ("{type: cohere, api_key: k}", "https://api.cohere.com"),
        ("{type: bedrock, region: eu-west-1}", "https://bedrock-runtime.eu-west-1.amazonaws.com"),
        (
            "{type: vertex, project: p, region: us-east5}",
            "https://us-east5-aiplatform.googleapis.com",
        ),
    ],
)
def test_default_base_urls(line: str, base_url: str) -> None:
    assert parse_config(_vendor(line), env={}).vendors["v"].base_url == base_url


def _call(body: dict[str, object], stream: bool = False) -> UpstreamCall:
    import orjson

    return UpstreamCall("chat/completions", orjson.dumps(body), body, stream, "rid")


def _dep() -> DeploymentConfig:
    return DeploymentConfig("v/x", "v", "x", Timeouts())


def test_mistral_drops_stream_options_and_keeps_everything_else() -> None:
    config = parse_config(_vendor("{type: mistral, api_key: k}"), env={})
    adapter = make_adapter(config.vendors["v"])
    body = {
        "model": "m",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
        "safe_prompt": True,
    }
    url, sent, headers = adapter.prepare(_dep(), _call(body, stream=True))  # type: ignore[attr-defined]
    import orjson

    assert url == "https://api.mistral.ai/v1/chat/completions"
    assert orjson.loads(sent) == {"model": "x", "messages": [], "stream": True, "safe_prompt": True}
    assert headers["Authorization"] == "Bearer k"


async def test_azure_deployment_urls_api_version_and_api_key(
    fakes: FakeFactory, proxies: ProxyFactory
) -> None:
    fake = await fakes("az", vendor="azure", api_key="azure-secret")
    text = (
        "server: {host: 127.0.0.1, port: 0, request_timeout_s: 20}\n"
        "vendors:\n"
        f"  az: {{type: azure, base_url: '{fake.base_url}', api_key: azure-secret, api_version: '2024-10-21'}}\n"
        "models:\n  smart:\n    deployments:\n      - {vendor: az, model: my-gpt4o-deployment}\n"
    )
    proxy = await proxies(text)
    client = proxy.client()
    resp = await client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.model == "my-gpt4o-deployment"
    chunks = await client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text_out = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    assert text_out == "".join(fake.pieces)
    sent = fake.stats.last_requests[-1]
    assert sent.path == "/openai/deployments/my-gpt4o-deployment/chat/completions"
    assert sent.headers["api-key"] == "azure-secret"
    assert "authorization" not in sent.headers
    fake.set_fault(Fault.preset("rate_limited", retry_after_s=3))
    with pytest.raises(openai.RateLimitError) as info:  # one deployment: the aggregated 429
        await client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.response.headers["x-proxy-attempts"] == "az/my-gpt4o-deployment=rate_limited"
    assert info.value.response.headers["retry-after"] == "3"


def test_litellm_parameters_per_vendor_type() -> None:
    text = (
        "vendors:\n"
        "  g: {type: gemini, api_key: gk, base_url: 'http://127.0.0.1:9/'}\n"
        '  vx: {type: vertex, project: proj, region: us-east5, api_key: \'{"type": "service_account"}\'}\n'
        "  b: {type: bedrock, region: us-west-2, api_key: bk, headers: {x-team: a}}\n"
        "  c: {type: cohere, api_key: ck}\n"
        "models:\n  m:\n    deployments:\n"
        "      - {vendor: g, model: gemini-2.5-pro}\n"
        "      - {vendor: vx, model: gemini-2.5-pro}\n"
        "      - {vendor: b, model: anthropic.claude-3-haiku}\n"
        "      - {vendor: c, model: command-r}\n"
    )
    config = parse_config(text, env={})
    call = _call(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
        stream=True,
    )
    params = {name: make_adapter(v).call_params(_dep(), call) for name, v in config.vendors.items()}  # type: ignore[attr-defined]
    g, vx, b, c = params["g"], params["vx"], params["b"], params["c"]
    assert (
        g["model"] == "gemini/x"
        and g["api_base"] == "http://127.0.0.1:9/v1beta"
        and g["api_key"] == "gk"
    )
    assert (
        vx["model"] == "vertex_ai/x"
        and vx["vertex_project"] == "proj"
        and vx["vertex_location"] == "us-east5"
    )
    assert vx["vertex_credentials"] == '{"type": "service_account"}'
    assert (
        b["model"] == "bedrock/x" and b["aws_region_name"] == "us-west-2" and b["api_key"] == "bk"
    )
    assert b["aws_bedrock_runtime_endpoint"] == "https://bedrock-runtime.us-west-2.amazonaws.com"
    assert b["extra_headers"] == {"x-team": "a"}
    assert c["model"] == "cohere_chat/v2/x" and c["api_base"] == "https://api.cohere.com/v2/chat"
    for p in params.values():
        assert p["num_retries"] == 0 and p["max_retries"] == 0
        assert p["temperature"] == 0.2 and p["stream"] is True
        assert p["stream_options"] == {"include_usage": True}  # usage is always counted


_LAZY = """
import sys
from proxy.config import parse_config
from proxy.gateway import Gateway
cfg = parse_config('''VENDORS
models:
  m:
    deployments:
      - {vendor: v, model: x}
''', env={})
Gateway(cfg)
print("litellm" in sys.modules)
"""


@pytest.mark.parametrize(
    ("vendor", "imported"),
    [
        ("{type: openai, base_url: 'http://127.0.0.1:9/v1'}", "False"),
        ("{type: anthropic}", "False"),
        ("{type: azure, base_url: 'http://127.0.0.1:9', api_version: v}", "False"),
        ("{type: gemini, api_key: k}", "True"),
    ],
)
def test_litellm_is_imported_only_for_vendors_that_need_it(vendor: str, imported: str) -> None:
    code = _LAZY.replace("VENDORS", f"vendors:\n  v: {vendor}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == imported


async def test_litellm_errors_print_no_banners(
    fakes: FakeFactory, proxies: ProxyFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    fake = await fakes("g", vendor="gemini")
    fake.set_fault(Fault.preset("server_error"))
    models = "  smart:\n    deployments:\n      - {vendor: g, model: gemini-2.5-flash}\n"
    from tests.conftest import build_config

    proxy = await proxies(build_config({"g": fake}, models))
    with pytest.raises(openai.InternalServerError) as info:
        await proxy.client().chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 502
    await asyncio.sleep(0.05)  # litellm logs failures from background tasks
    captured = capfd.readouterr()
    assert "Give Feedback" not in captured.out + captured.err
    assert "LiteLLM" not in captured.out


def test_sse_parser_handles_any_chunking_and_crlf() -> None:
    data = b'event: a\r\ndata: {"x":1}\r\n\r\ndata: two\r\ndata: lines\r\n\r\ndata: tail'
    for size in (1, 2, 3, 7, len(data)):
        parser = SSEParser()
        events = []
        for i in range(0, len(data), size):
            events.extend(parser.feed(data[i : i + size]))
        assert events == [(b"a", b'{"x":1}'), (b"", b"two\nlines")]
        assert parser.tail == b"data: tail"


def test_vendor_config_defaults_are_unchanged_for_openai() -> None:
    v = parse_config(_vendor("{type: openai, base_url: 'http://h/v1'}"), env={}).vendors["v"]
    # max_connections None: the pool sizes itself from the open-file limit at start-up.
    assert v == VendorConfig("v", "openai", "http://h/v1", None, None, {}, None)
