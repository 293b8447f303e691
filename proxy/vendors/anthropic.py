"""Anthropic's Messages API, spoken natively on the shared HTTP path.

Requests from `/v1/messages` (the Anthropic SDK, Claude Code) pass through byte for byte
except `model`, with the client's `anthropic-beta` header, so thinking, prompt caching and
new fields survive. OpenAI-SDK requests are translated by the bridge (`proxy.formats.
anthropic`). Native beats litellm here: the translation is a few dict rewrites, the
pass-through needs no translation at all, and bench/ measures what litellm would add.

Streams commit at the first content event, not at `message_start`: Anthropic sends its
overload errors (`event: error`, `overloaded_error`) right after the preamble, and those
must still fail over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy.config import DeploymentConfig, VendorConfig
from proxy.core.errors import Unsupported
from proxy.core.usage import Usage
from proxy.formats.responses import responses_to_messages
from proxy.formats.sse import SSEParser
from proxy.formats.translation import Translation
from proxy.http1 import Headers, ProtocolError
from proxy.vendors.base import AttemptFailed, UpstreamCall
from proxy.vendors.classify import classify_response
from proxy.vendors.http import HTTPAdapter, StreamScan, json_object
from proxy.vendors.openai_compat import rewrite_model

__all__ = ["ANTHROPIC_VERSION", "AnthropicAdapter", "anthropic_usage"]

ANTHROPIC_VERSION = "2023-06-01"

# count_tokens is a convenience: never wait long for it (the caller estimates instead).
_COUNT_TIMEOUT_S = 5.0

# What a Messages token count takes of a request (the rest shapes only the answer).
_COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking")

# Events after which the stream has content worth committing to.
_COMMIT_EVENTS = frozenset({b"content_block_delta", b"message_delta", b"message_stop"})


def anthropic_usage(usage: Any) -> Usage | None:
    """Anthropic usage -> the proxy's (OpenAI) fields: cache reads and writes are prompt."""
    if not isinstance(usage, dict):
        return None

    def n(key: str) -> int:
        v = usage.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

    read = n("cache_read_input_tokens")
    return Usage(
        prompt=n("input_tokens") + n("cache_creation_input_tokens") + read,
        completion=n("output_tokens"),
        cached_prompt=read,
    )


class _MessagesScan(StreamScan):
    """Anthropic events: usage from `message_start` and `message_delta`, `event: error`,
    `message_stop` as the terminator. Only those few events are JSON-parsed."""

    __slots__ = ("_committed", "_parser", "_usage", "done", "error", "usage")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._usage: dict[str, Any] = {}
        self._committed = False
        self.done = False
        self.error: bytes | None = None
        self.usage: Usage | None = None

    @property
    def committed(self) -> bool:
        return self._committed

    def feed(self, chunk: bytes) -> None:
        for name, data in self._parser.feed(chunk):
            if name in _COMMIT_EVENTS:
                self._committed = True
            if name == b"error":
                self.error = data
            elif name == b"message_stop":
                self.done = True
            elif name in (b"message_start", b"message_delta"):
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if name == b"message_start":
                    usage = (event.get("message") or {}).get("usage")
                else:
                    usage = event.get("usage")
                if isinstance(usage, dict):
                    self._usage.update({k: v for k, v in usage.items() if v is not None})
                    self.usage = anthropic_usage(self._usage)


class AnthropicAdapter(HTTPAdapter):
    native_api = "anthropic"

    def __init__(self, config: VendorConfig) -> None:
        super().__init__(config)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if config.api_key:
            headers["x-api-key"] = config.api_key
        headers.update(config.headers)
        self._headers = Headers(headers)
        self._stream_headers = Headers({**headers, "Accept": "text/event-stream"})
        self._url = f"{config.base_url}/v1/messages"

    def prepare(
        self, deployment: DeploymentConfig, call: UpstreamCall
    ) -> tuple[str, bytes, Mapping[str, str]]:
        headers: Mapping[str, str] = self._stream_headers if call.stream else self._headers
        if call.forward_headers:
            headers = {**headers, **call.forward_headers}
        return self._url, rewrite_model(call.raw, call.parsed, deployment.model), headers

    def models_url(self) -> str | None:
        return f"{self.config.base_url}/v1/models"

    def probe_headers(self) -> Mapping[str, str]:
        return self._headers

    def new_scan(self, call: UpstreamCall) -> StreamScan:
        return _MessagesScan()

    def json_usage(self, data: bytes) -> Usage | None:
        doc = json_object(data)
        if doc.get("type") == "error":
            raise AttemptFailed(classify_response(self.config.type, 200, {}, data))
        return anthropic_usage(doc.get("usage"))

    async def count_tokens(self, deployment: DeploymentConfig, body: dict[str, Any]) -> int | None:
        """`POST /v1/messages/count_tokens`; None when the vendor does not answer with a count."""
        payload = {k: v for k, v in body.items() if k not in ("max_tokens", "stream")}
        payload["model"] = deployment.model
        try:
            status, data = await self.post(
                deployment,
                f"{self._url}/count_tokens",
                orjson.dumps(payload),
                self._headers,
                min(deployment.timeouts.first_byte_s, _COUNT_TIMEOUT_S),
            )
            if status != 200:
                return None
            doc = orjson.loads(data)
        except (ProtocolError, OSError, TimeoutError, orjson.JSONDecodeError):
            return None  # best effort: the caller estimates instead
        count = doc.get("input_tokens") if isinstance(doc, dict) else None
        return count if isinstance(count, int) else None

    async def count_input_tokens(
        self, deployment: DeploymentConfig, body: dict[str, Any]
    ) -> int | None:
        """A Responses API body's input tokens: its Messages translation, counted."""
        try:
            messages = responses_to_messages(body, Translation(self.config.name, deployment.model))
        except Unsupported:
            return None
        return await self.count_tokens(
            deployment, {k: messages[k] for k in _COUNTED if k in messages}
        )
