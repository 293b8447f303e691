"""The fast path: OpenAI-compatible upstreams (OpenAI, Azure, Groq, Mistral, Together, vLLM, Ollama...).

The client's request bytes go upstream untouched except for the top-level `model` value,
so parameters this proxy has never heard of survive. Azure OpenAI is the same wire format
with deployment URLs, an `api-version` query and an `api-key` header. Responses are relayed as bytes; the
only parsing is what accounting and error detection need (usage, in-stream errors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from proxy.config import DeploymentConfig, VendorConfig
from proxy.core.usage import Usage
from proxy.http1 import Headers
from proxy.vendors.base import AttemptFailed, UpstreamCall
from proxy.vendors.classify import classify_response
from proxy.vendors.http import HTTPAdapter, StreamFilter, StreamScan, json_object

__all__ = ["OpenAICompatAdapter", "rewrite_model"]

_MODEL_RE = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def rewrite_model(raw: bytes, parsed: dict[str, Any], model: str) -> bytes:
    """Return `raw` with only the top-level `model` value replaced by `model`.

    A `"model": "..."` pair can only appear where a key does (quotes inside JSON strings
    are escaped), so when the body holds exactly one such pair it is the top-level one
    and is spliced in place: the rest of the client's bytes go upstream as they came.
    Bodies with nested `model` keys fall back to re-serialising the parsed object, which
    still keeps every field.
    """
    first = _MODEL_RE.search(raw)
    if first is not None and _MODEL_RE.search(raw, first.end()) is None:
        return b"".join(
            (raw[: first.start()], b'"model":', orjson.dumps(model), raw[first.end() :])
        )
    body = dict(parsed)
    body["model"] = model
    return orjson.dumps(body)


_ASK_USAGE = b'"stream_options":{"include_usage":true},'


def with_stream_usage(raw: bytes, parsed: dict[str, Any]) -> bytes:
    """Return the body with `stream_options.include_usage` set, changing as little as possible.

    Without a `stream_options` key the option is spliced in after the opening brace (the
    rest of the bytes stay as they came); otherwise the body is re-serialised with the
    client's options kept.
    """
    if "stream_options" not in parsed:
        i = raw.find(b"{")
        return b"".join((raw[: i + 1], _ASK_USAGE, raw[i + 1 :]))
    doc = orjson.loads(raw)
    options = doc.get("stream_options")
    doc["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return orjson.dumps(doc)


def client_wants_usage(parsed: dict[str, Any]) -> bool:
    options = parsed.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


_USAGE_KEY = b'"usage"'
_DONE = re.compile(rb"^data: ?\[DONE\]", re.MULTILINE)  # the terminator, not the text "[DONE]"
_SKIP = frozenset(b" \t\r\n:")


def _has_usage(data: bytes) -> bool:
    """Whether `data` may hold a non-null `"usage"` (streams with include_usage carry
    `"usage":null` in every chunk; only the last one's is worth parsing)."""
    i = data.find(_USAGE_KEY)
    n = len(data)
    while i != -1:
        j = i + 7
        while j < n and data[j] in _SKIP:
            j += 1
        if not data.startswith(b"null", j):
            return True
        i = data.find(_USAGE_KEY, j)
    return False


class _UsageStripper:
    """Keeps the usage-only event that the proxy (not the client) asked for out of a relayed
    stream. Relays whole lines only, so an event split across reads is still recognised."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk if self.held else chunk
        end = data.rfind(b"\n")
        if end == -1:
            self.held = data
            return b""
        self.held = data[end + 1 :]
        data = data[: end + 1]
        return _drop_usage_events(data) if _has_usage(data) else data

    def tail(self) -> bytes:
        held, self.held = self.held, b""
        return held


def _drop_usage_events(data: bytes) -> bytes:
    out: list[bytes] = []
    skip_blank = False
    for line in data.split(b"\n"):
        if skip_blank and not line.strip():
            skip_blank = False
            continue
        skip_blank = False
        if line.startswith(b"data:") and _USAGE_KEY in line:
            try:
                event = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict) and event.get("usage") and not event.get("choices"):
                skip_blank = True
                continue
        out.append(line)
    return b"\n".join(out)


class _SSEScan(StreamScan):
    """Watches a relayed OpenAI SSE stream for what the proxy must act on.

    It runs on every relayed event, so an ordinary content event costs three substring
    searches; only lines that may hold an error or a non-null usage are parsed. A line
    split across reads is searched (and parsed) again once whole, so nothing it holds is
    missed at a read edge.
    """

    __slots__ = ("done", "error", "partial", "usage")

    def __init__(self) -> None:
        self.partial = b""  # the unfinished last line of the bytes seen so far
        self.done = False
        self.usage: Usage | None = None
        self.error: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        data = self.partial + chunk if self.partial else chunk
        if chunk.endswith(b"\n"):
            self.partial = b""
        else:
            cut = data.rfind(b"\n") + 1
            self.partial = data[cut:]
            data = data[:cut]
            if not data:
                return
        if not self.done and data.find(b"[DONE]") >= 0 and _DONE.search(data):
            self.done = True
        if data.find(b'"error"') < 0 and (data.find(_USAGE_KEY) < 0 or not _has_usage(data)):
            return
        for line in data.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload.startswith(b"{"):
                continue
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if "error" in event:
                self.error = payload
            elif event.get("usage"):
                self.usage = Usage.from_openai(event["usage"])


@dataclass(frozen=True, slots=True)
class _Profile:
    """What an OpenAI-compatible vendor type does differently from OpenAI itself."""

    azure_urls: bool = False  # /openai/deployments/{model}/{endpoint}?api-version=...
    key_header: str = "Authorization"  # Azure: api-key
    drop_fields: frozenset[str] = frozenset()  # body fields the vendor rejects


_PROFILES: Mapping[str, _Profile] = {
    "openai": _Profile(),
    "azure": _Profile(azure_urls=True, key_header="api-key"),
    # Mistral has rejected `stream_options` (VENDOR_WIRE_FORMATS.md 1); it reports usage anyway.
    "mistral": _Profile(drop_fields=frozenset({"stream_options"})),
}


class OpenAICompatAdapter(HTTPAdapter):
    """OpenAI-compatible pass-through: OpenAI, Azure OpenAI, Mistral, Groq, vLLM, Ollama..."""

    def __init__(self, config: VendorConfig) -> None:
        super().__init__(config)
        self.profile = _PROFILES.get(config.type, _PROFILES["openai"])
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if config.api_key:
            if self.profile.key_header == "Authorization":
                headers["Authorization"] = f"Bearer {config.api_key}"
            else:
                headers[self.profile.key_header] = config.api_key
        headers.update(config.headers)
        self._headers = Headers(headers)
        self._stream_headers = Headers({**headers, "Accept": "text/event-stream"})
        self._urls: dict[tuple[str, str], str] = {}

    def url(self, deployment: DeploymentConfig, endpoint: str) -> str:
        key = (deployment.id, endpoint)
        url = self._urls.get(key)
        if url is None:
            base = self.config.base_url
            if self.profile.azure_urls:
                query = urlencode({"api-version": self.config.api_version or ""})
                url = f"{base}/openai/deployments/{quote(deployment.model, safe='')}/{endpoint}?{query}"
            else:
                url = f"{base}/{endpoint}"
            self._urls[key] = url
        return url

    def prepare(
        self, deployment: DeploymentConfig, call: UpstreamCall
    ) -> tuple[str, bytes, Mapping[str, str]]:
        drop = self.profile.drop_fields
        if drop and not drop.isdisjoint(call.parsed):
            parsed = {k: v for k, v in call.parsed.items() if k not in drop}
            parsed["model"] = deployment.model
            body = orjson.dumps(parsed)
        else:
            body = rewrite_model(call.raw, call.parsed, deployment.model)
        if self._asks_usage(call):
            body = with_stream_usage(body, call.parsed)
        headers = self._stream_headers if call.stream else self._headers
        return self.url(deployment, call.endpoint), body, headers

    def _asks_usage(self, call: UpstreamCall) -> bool:
        """The proxy needs this stream's usage but the client did not ask for it."""
        return (
            call.proxy_usage
            and call.stream
            and "stream_options" not in self.profile.drop_fields
            and not client_wants_usage(call.parsed)
        )

    def stream_filter(self, call: UpstreamCall) -> StreamFilter | None:
        return _UsageStripper() if self._asks_usage(call) else None

    def probe_headers(self) -> Mapping[str, str]:
        return self._headers

    def models_url(self) -> str | None:
        base = self.config.base_url
        if self.profile.azure_urls:
            return (
                f"{base}/openai/models?{urlencode({'api-version': self.config.api_version or ''})}"
            )
        return f"{base}/models"

    def new_scan(self) -> StreamScan:
        return _SSEScan()

    def json_usage(self, data: bytes) -> Usage | None:
        return _json_usage(data, self.config.type)


def _json_usage(data: bytes, vendor_type: str) -> Usage | None:
    """Usage of a non-streamed answer; a 200 whose body is not a JSON object is a failure."""
    doc = json_object(data)
    if "error" in doc and "choices" not in doc and "data" not in doc:
        raise AttemptFailed(classify_response(vendor_type, 200, {}, data))
    return Usage.from_openai(doc.get("usage"))
