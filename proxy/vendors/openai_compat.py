"""The fast path: OpenAI-compatible upstreams (OpenAI, Groq, Mistral, Together, vLLM, Ollama...).

The client's request bytes go upstream untouched except for the top-level `model` value,
so parameters this proxy has never heard of survive. Responses are relayed as bytes; the
only parsing is what accounting and error detection need (usage, in-stream errors).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from proxy.config import DeploymentConfig, VendorConfig
from proxy.routing.classify import (
    Outcome,
    classify_response,
    classify_stream_error,
    classify_transport,
)
from proxy.vendors.base import AttemptFailed, UpstreamCall, UpstreamResponse, Usage, VendorAdapter

__all__ = ["OpenAICompatAdapter", "rewrite_model", "with_stream_usage"]

# Error bodies are read for classification only; a gateway's multi-megabyte HTML page is not.
_MAX_ERROR_BODY = 64 * 1024

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


class _SSEScan:
    """Watches a relayed OpenAI SSE stream for what the proxy must act on.

    Only chunks that mention `"usage"` or `"error"` are split into lines and parsed, so
    ordinary content chunks cost two substring searches.
    """

    __slots__ = ("carry", "done", "error", "tail", "usage")

    def __init__(self) -> None:
        self.carry = b""
        self.tail = b""
        self.done = False
        self.usage: Usage | None = None
        self.error: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        data = self.carry + chunk if self.carry else chunk
        self.carry = b""
        if not self.done and (b"[DONE]" in chunk or b"[DONE]" in self.tail + chunk[:8]):
            self.done = True
        self.tail = chunk[-8:]
        if b'"error"' not in data and not _has_usage(data):
            return
        end = data.rfind(b"\n")
        if end != len(data) - 1:
            self.carry = data[end + 1 :]
            data = data[: end + 1]
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


class _JSONResponse(UpstreamResponse):
    __slots__ = ("_body", "content_type", "headers", "status", "usage")

    def __init__(
        self, status: int, headers: Mapping[str, str], body: bytes, usage: Usage | None
    ) -> None:
        self.status = status
        self.headers = headers
        self.content_type = "application/json"
        self._body = body
        self.usage = usage

    @property
    def body(self) -> bytes:
        return self._body

    async def rest(self) -> AsyncIterator[bytes]:  # pragma: no cover - never called for JSON
        return
        yield b""

    def close(self) -> None:
        return None


class _StreamResponse(UpstreamResponse):
    __slots__ = (
        "_finished",
        "_first",
        "_resp",
        "_scan",
        "_strip",
        "_vendor_type",
        "content_type",
        "headers",
        "status",
        "usage",
    )

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        first: bytes,
        scan: _SSEScan,
        vendor_type: str,
        strip: _UsageStripper | None,
    ) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.content_type = "text/event-stream"
        self._resp = resp
        self._strip = strip
        self._first = strip.feed(first) if strip is not None else first
        self._scan = scan
        self._vendor_type = vendor_type
        self._finished = False
        self.usage = scan.usage

    @property
    def body(self) -> bytes:
        return self._first

    async def rest(self) -> AsyncIterator[bytes]:
        scan = self._scan
        strip = self._strip
        content = self._resp.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise AttemptFailed(classify_transport(exc, phase="body")) from None
            if not chunk:
                if strip is not None and (tail := strip.tail()):
                    yield tail
                break
            scan.feed(chunk)
            if strip is None:
                yield chunk
            elif out := strip.feed(chunk):
                yield out
            if scan.error is not None:
                self.usage = scan.usage
                outcome = classify_stream_error(self._vendor_type, scan.error)
                raise AttemptFailed(outcome, error_event_sent=True)
        self.usage = scan.usage
        if not scan.done:
            raise AttemptFailed(
                classify_transport(
                    aiohttp.ClientPayloadError("stream ended without [DONE]"), phase="body"
                )
            )
        self._finished = True

    def close(self) -> None:
        if self._finished:
            self._resp.release()
        else:
            self._resp.close()  # abort: the vendor sees the disconnect and stops generating


class OpenAICompatAdapter(VendorAdapter):
    """A pooled aiohttp session per vendor, passing bodies through."""

    def __init__(self, config: VendorConfig) -> None:
        super().__init__(config)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        headers.update(config.headers)
        self._headers = headers
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            limit_per_host=0,
            ttl_dns_cache=60,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            base_url=None,
            connector=connector,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(
        self, deployment: DeploymentConfig, kind: str, timeout_s: float
    ) -> Outcome | None:
        """`models`: GET {base_url}/models, which costs no tokens on OpenAI-compatible servers."""
        if kind != "models":
            return await super().probe(deployment, kind, timeout_s)
        session = self._session
        if session is None:
            raise RuntimeError("adapter used before start()")
        phase = "connect"
        try:
            async with (
                asyncio.timeout(timeout_s),
                session.get(self.url("models"), headers=self._headers) as resp,
            ):
                phase = "body"
                body = await resp.content.read(_MAX_ERROR_BODY)
                if resp.status >= 300:
                    return classify_response(self.config.type, resp.status, resp.headers, body)
                return None
        except Exception as exc:
            return classify_transport(exc, phase=phase)

    def url(self, endpoint: str) -> str:
        return f"{self.config.base_url}/{endpoint}"

    def _timeout(self, deployment: DeploymentConfig) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(deployment.id)
        if t is None:
            tm = deployment.timeouts
            t = aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=tm.connect_s, sock_read=tm.stream_idle_s
            )
            self._timeouts[deployment.id] = t
        return t

    async def send(
        self,
        deployment: DeploymentConfig,
        call: UpstreamCall,
        *,
        first_byte_s: float,
        attempt_s: float,
    ) -> UpstreamResponse:
        session = self._session
        if session is None:
            raise RuntimeError("adapter used before start()")
        body = rewrite_model(call.raw, call.parsed, deployment.model)
        strip: _UsageStripper | None = None
        if call.proxy_usage and call.stream and not client_wants_usage(call.parsed):
            body = with_stream_usage(body, call.parsed)
            strip = _UsageStripper()
        loop = asyncio.get_running_loop()
        started = loop.time()
        phase = "connect"
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(first_byte_s) as budget:
                resp = await session.post(
                    self.url(call.endpoint),
                    data=body,
                    headers=self._stream_headers if call.stream else self._headers,
                    timeout=self._timeout(deployment),
                )
                phase = "first_byte"
                if resp.status >= 300:
                    err = await resp.content.read(_MAX_ERROR_BODY)
                    resp.release()
                    raise AttemptFailed(
                        classify_response(self.config.type, resp.status, resp.headers, err)
                    )
                if call.stream and resp.content_type == "text/event-stream":
                    first = await resp.content.readany()
                    scan = _SSEScan()
                    scan.feed(first)
                    if scan.error is not None:
                        resp.close()
                        raise AttemptFailed(classify_stream_error(self.config.type, scan.error))
                    if not first:
                        resp.close()
                        raise AttemptFailed(
                            classify_transport(
                                aiohttp.ClientPayloadError("empty stream"), phase="body"
                            )
                        )
                    return _StreamResponse(resp, first, scan, self.config.type, strip)
                # The first byte of the body is still "first byte": a vendor that sends
                # headers and then stalls is as stuck as one that sends nothing.
                first = await resp.content.readany()
                budget.reschedule(started + max(attempt_s, first_byte_s))
                phase = "body"
                rest = await resp.read()
                data = first + rest if rest else first
                return _JSONResponse(
                    resp.status, resp.headers, data, _json_usage(data, self.config.type)
                )
        except AttemptFailed:
            raise
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()
            raise
        except Exception as exc:
            if resp is not None:
                resp.close()
            raise AttemptFailed(classify_transport(exc, phase=phase)) from None


def _json_usage(data: bytes, vendor_type: str) -> Usage | None:
    """Usage of a non-streamed answer; a 200 whose body is not a JSON object is a failure."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise AttemptFailed(
            classify_transport(
                aiohttp.ClientPayloadError("invalid JSON in a 200 response"), phase="body"
            )
        )
    if "error" in doc and "choices" not in doc and "data" not in doc:
        raise AttemptFailed(classify_response(vendor_type, 200, {}, data))
    return Usage.from_openai(doc.get("usage"))
