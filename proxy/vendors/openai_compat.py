"""The fast path: OpenAI-compatible upstreams (OpenAI, Azure, Groq, Mistral, Together, vLLM, Ollama...).

The client's request bytes go upstream untouched except for the top-level `model` value,
so parameters this proxy has never heard of survive. Azure OpenAI is the same wire format
with deployment URLs, an `api-version` query and an `api-key` header. Responses are relayed as bytes; the
only parsing is what accounting and error detection need (usage, in-stream errors).

The Responses API (`/responses`) passes through the same way where the vendor type serves
it (`_Profile.responses`). Azure serves it outside the deployment URLs, with the model in
the body: `/openai/v1/responses` (the v1 surface), or `/openai/responses?api-version=...`
for a resource configured with a dated preview `api_version`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from proxy.config import DeploymentConfig, VendorConfig
from proxy.core.usage import Usage
from proxy.http1 import Headers, ProtocolError
from proxy.vendors.base import AttemptFailed, StoredResponseRequest, UpstreamCall
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


class _LineScan(StreamScan):
    """A scan that reads whole lines: the unfinished last line of a read is kept and
    searched again once the next read completes it, so nothing is missed at a read edge."""

    __slots__ = ("partial",)

    partial: bytes

    def _whole_lines(self, chunk: bytes) -> bytes:
        data = self.partial + chunk if self.partial else chunk
        if chunk.endswith(b"\n"):
            self.partial = b""
            return data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return data[:cut]


class _SSEScan(_LineScan):
    """Watches a relayed OpenAI SSE stream for what the proxy must act on.

    It runs on every relayed event, so an ordinary content event costs three substring
    searches; only lines that may hold an error or a non-null usage are parsed. A line
    split across reads is searched (and parsed) again once whole, so nothing it holds is
    missed at a read edge.
    """

    __slots__ = ("done", "error", "usage")

    def __init__(self) -> None:
        self.partial = b""
        self.done = False
        self.usage: Usage | None = None
        self.error: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        data = self._whole_lines(chunk)
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


# Responses API events.
_PREAMBLE = frozenset({b"response.created", b"response.in_progress", b"response.queued"})
_TERMINAL = frozenset({b"response.completed", b"response.incomplete"})
_FAILED = frozenset({b"response.failed", b"error"})
# After the commit point only the end of a stream matters: a read holding none of these is
# passed over (`error` is in every lifecycle event's response and names the error event;
# text that merely mentions them is parsed, then ignored).
_ENDS = (b"error", b"response.completed", b"response.incomplete")
_TYPE_RE = re.compile(rb'"type"\s*:\s*"([^"\\]+)"')
_USAGE_OBJECT = b'"usage"'
_DECODER = json.JSONDecoder()


def responses_usage(data: bytes) -> Usage | None:
    """The usage of a terminal Responses event (or of a response object).

    The event echoes the whole response (tools, instructions, output): tens of kilobytes for
    an agent's request, too much to parse per stream. The response's own `usage` comes
    after its tools, so the last `"usage":{...}` carrying `input_tokens` is it: only that
    object is decoded (the stdlib decoder stops where it ends); anything unexpected falls
    back to parsing the event whole."""
    end = len(data)
    while (i := data.rfind(_USAGE_OBJECT, 0, end)) >= 0:
        end = i
        brace = data.find(b"{", i + 7, i + 12)
        if brace < 0:
            continue
        try:
            usage, _ = _DECODER.raw_decode(data[brace:].decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(usage, dict) and "input_tokens" in usage:
            return Usage.from_responses(usage)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("response"), dict):
        doc = doc["response"]
    return Usage.from_responses(doc.get("usage")) if isinstance(doc, dict) else None


class _ResponsesScan(_LineScan):
    """Watches a relayed Responses API stream: `response.completed`/`response.incomplete`
    end it (with its usage), `response.failed` and `error` are in-stream errors, and it
    commits at the first event after the preamble (`response.created`, `in_progress`,
    `queued`), so a failure reported right after the preamble still fails over.

    It runs on every relayed read: after the commit point only the end of the stream
    matters, so a read is searched for the end events' markers (`_ENDS`) and only the
    events from the first marker on are parsed (one or two, at the end of a stream).
    Lines are taken whole (an unfinished last line waits for the next read), so nothing is
    missed at a read edge.
    """

    __slots__ = ("_committed", "_name", "done", "error", "usage")

    def __init__(self) -> None:
        self.partial = b""
        self._name = b""  # the `event:` name of the event whose data line comes next
        self._committed = False
        self.done = False
        self.error: bytes | None = None
        self.usage: Usage | None = None

    @property
    def committed(self) -> bool:
        return self._committed

    def feed(self, chunk: bytes) -> None:
        if (  # the common case: whole events in the middle of the stream
            self._committed
            and not self.partial
            and not self._name
            and chunk.endswith(b"\n")
            and chunk.find(_ENDS[0]) < 0
            and chunk.find(_ENDS[1]) < 0
            and chunk.find(_ENDS[2]) < 0
        ):
            return
        data = self._whole_lines(chunk)
        pos = 0
        end = len(data)
        while pos < end and not self._committed:  # the preamble, line by line
            eol = data.find(b"\n", pos)
            self._line(data[pos:eol])
            pos = eol + 1
        if pos < end:
            start = self._ends_from(data, pos)
            if start >= 0:
                for line in data[start:].split(b"\n"):
                    self._line(line)

    def _ends_from(self, data: bytes, pos: int) -> int:
        """Where the events worth parsing start in `data[pos:]` (the event of the first end
        marker), or -1 when it holds none."""
        if self._name:
            return pos  # an event whose data line is in this read
        first = -1
        for marker in _ENDS:
            at = data.find(marker, pos)
            if at >= 0 and (first < 0 or at < first):
                first = at
        if first < 0:
            return -1
        cut = data.rfind(b"\n\n", pos, first)
        return cut + 2 if cut >= 0 else pos

    def _line(self, line: bytes) -> None:
        if line.startswith(b"event:"):
            self._name = line[6:].strip()
        elif line.startswith(b"data:"):
            self._event(line[5:].strip())

    def _event(self, payload: bytes) -> None:
        kind = self._name
        self._name = b""
        if not kind:
            found = _TYPE_RE.search(payload, 0, 256)
            kind = found.group(1) if found is not None else b""
        if kind in _PREAMBLE:
            return
        self._committed = True
        if kind in _FAILED:
            self.error = payload
        elif kind in _TERMINAL:
            self.done = True
            self.usage = responses_usage(payload)


@dataclass(frozen=True, slots=True)
class _Profile:
    """What an OpenAI-compatible vendor type does differently from OpenAI itself."""

    azure_urls: bool = False  # /openai/deployments/{model}/{endpoint}?api-version=...
    key_header: str = "Authorization"  # Azure: api-key
    drop_fields: frozenset[str] = frozenset()  # body fields the vendor rejects
    responses: bool = True  # serves the Responses API (else: translated to chat)


_PROFILES: Mapping[str, _Profile] = {
    "openai": _Profile(),
    "azure": _Profile(azure_urls=True, key_header="api-key"),
    # Mistral has rejected `stream_options` (VENDOR_WIRE_FORMATS.md 1); it reports usage anyway.
    # Its stateful API is /v1/conversations, not the Responses API.
    "mistral": _Profile(drop_fields=frozenset({"stream_options"}), responses=False),
}
# Endpoints whose streams carry usage only when asked (`stream_options.include_usage`).
_USAGE_ON_REQUEST = frozenset({"chat/completions", "completions"})
_RESPONSES = "responses"
# A response id ends up in a URL path: OpenAI's ids are letters, digits, '_' and '-'.
_RESPONSE_PATH_RE = re.compile(r"^[A-Za-z0-9_\-]{1,256}(/[a-z_]{1,32})?$")
# A dated preview api-version (2025-03-01-preview) serves /openai/responses; others use /openai/v1.
_AZURE_PREVIEW_RE = re.compile(r"^\d{4}-\d{2}-\d{2}-preview$")


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
        if self.profile.responses:
            self.passthrough_apis = frozenset({_RESPONSES})

    def url(self, deployment: DeploymentConfig, endpoint: str) -> str:
        key = (deployment.id, endpoint)
        url = self._urls.get(key)
        if url is None:
            base = self.config.base_url
            if self.profile.azure_urls and endpoint.startswith(_RESPONSES):
                url = self._azure_responses_url(endpoint)
            elif self.profile.azure_urls:
                query = urlencode({"api-version": self.config.api_version or ""})
                url = f"{base}/openai/deployments/{quote(deployment.model, safe='')}/{endpoint}?{query}"
            else:
                url = f"{base}/{endpoint}"
            self._urls[key] = url
        return url

    def _azure_responses_url(self, path: str, query: str = "") -> str:
        """Azure's Responses API: the v1 surface, or the dated preview one the resource's
        `api_version` names (e.g. 2025-03-01-preview)."""
        version = self.config.api_version or ""
        base = self.config.base_url
        if _AZURE_PREVIEW_RE.match(version):
            both = "&".join(q for q in (urlencode({"api-version": version}), query) if q)
            return f"{base}/openai/{path}?{both}"
        return f"{base}/openai/v1/{path}" + (f"?{query}" if query else "")

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
            and call.endpoint in _USAGE_ON_REQUEST
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

    def new_scan(self, call: UpstreamCall) -> StreamScan:
        return _ResponsesScan() if call.endpoint == _RESPONSES else _SSEScan()

    def json_usage(self, data: bytes) -> Usage | None:
        return _json_usage(data, self.config.type)

    async def count_input_tokens(
        self, deployment: DeploymentConfig, body: dict[str, Any]
    ) -> int | None:
        """`POST /responses/input_tokens`; None when the vendor does not answer with a count."""
        if not self.profile.responses:
            return None
        payload = {**body, "model": deployment.model}
        try:
            status, data = await self.post(
                deployment,
                self.url(deployment, "responses/input_tokens"),
                orjson.dumps(payload),
                self._headers,
                deployment.timeouts.first_byte_s,
            )
            doc = orjson.loads(data) if status == 200 else None
        except (ProtocolError, OSError, TimeoutError, orjson.JSONDecodeError):
            return None
        count = doc.get("input_tokens") if isinstance(doc, dict) else None
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    async def stored_response(
        self, deployment: DeploymentConfig, request: StoredResponseRequest
    ) -> tuple[int, bytes]:
        if not self.profile.responses:
            return await super().stored_response(deployment, request)
        if not _RESPONSE_PATH_RE.match(request.path):
            return (
                404,
                b'{"error": {"message": "No such response.", "type": "invalid_request_error"}}',
            )
        path = f"{_RESPONSES}/{request.path}"
        if self.profile.azure_urls:
            url = self._azure_responses_url(path, request.query)
        else:
            url = f"{self.config.base_url}/{path}" + (f"?{request.query}" if request.query else "")
        return await self.post(
            deployment,
            url,
            b"",
            self._headers,
            request.timeout_s,
            method=request.method,
            limit=None,
        )


def _json_usage(data: bytes, vendor_type: str) -> Usage | None:
    """Usage of a non-streamed answer; a 200 whose body is not a JSON object is a failure,
    and so is a Responses API response that failed."""
    doc = json_object(data)
    if doc.get("object") == "response":
        if doc.get("status") == "failed":
            raise AttemptFailed(classify_response(vendor_type, 200, {}, data))
        return Usage.from_responses(doc.get("usage"))
    if "error" in doc and "choices" not in doc and "data" not in doc:
        raise AttemptFailed(classify_response(vendor_type, 200, {}, data))
    return Usage.from_openai(doc.get("usage"))
