"""Serving a request in one inbound API by a vendor that speaks another.

`send_bridged` translates the request (`proxy.formats`), makes the attempt with
the adapter's `send_native`, and translates the answer back: JSON at once, streams chunk
by chunk. A request field the vendor cannot honour is refused before anything is sent
(`Unsupported`: the router tries the next deployment) or, for a sampling hint, dropped
and listed in the answer's `dropped` (`x-proxy-dropped-params`). The commit point is the native stream's (its first content event): a vendor
error before that is still a failed attempt the router may fail over. After it, a failure
surfaces from `relay()` as `AttemptFailed` without `error_event_sent`, so the inbound API
writes the error event in its own format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from proxy.config import DeploymentConfig
from proxy.core.errors import Unsupported
from proxy.formats.anthropic import (
    ChatToMessagesStream,
    MessagesToChatStream,
    chat_to_message,
    chat_to_messages,
    message_to_chat,
    messages_to_chat,
)
from proxy.formats.responses import responses_to_chat, responses_to_messages
from proxy.formats.responses_answers import (
    ChatToResponsesStream,
    MessagesToResponsesStream,
    chat_to_response,
    message_to_response,
)
from proxy.formats.translation import Translation
from proxy.vendors.base import AttemptFailed, StreamOut, UpstreamCall, UpstreamResponse
from proxy.vendors.http import JSONResponse, invalid_json

if TYPE_CHECKING:
    from proxy.vendors.base import VendorAdapter

__all__ = ["BRIDGES", "send_bridged"]


class StreamTranslator(Protocol):
    done: bool

    def feed(self, chunk: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Bridge:
    """How requests of API `source` reach a vendor speaking API `target`.

    `request` translates the client's body for one deployment (the `Translation` names it
    and collects what was dropped; it raises `Unsupported` for what cannot be carried);
    `response` and `stream` translate the answer back, given the same `Translation`."""

    source_endpoint: str  # the one endpoint of the source API that can be translated
    target_endpoint: str
    request: Callable[[Mapping[str, Any], Translation], dict[str, Any]]
    response: Callable[[Mapping[str, Any], Translation], dict[str, Any]]
    stream: Callable[[Mapping[str, Any], Translation], StreamTranslator]


# (inbound API, vendor's native API) -> bridge
BRIDGES: Mapping[tuple[str, str], Bridge] = {
    ("openai", "anthropic"): Bridge(
        "chat/completions", "messages", chat_to_messages, message_to_chat, MessagesToChatStream
    ),
    ("anthropic", "openai"): Bridge(
        "messages", "chat/completions", messages_to_chat, chat_to_message, ChatToMessagesStream
    ),
    ("responses", "anthropic"): Bridge(
        "responses",
        "messages",
        responses_to_messages,
        message_to_response,
        MessagesToResponsesStream,
    ),
    ("responses", "openai"): Bridge(
        "responses", "chat/completions", responses_to_chat, chat_to_response, ChatToResponsesStream
    ),
}


class _Translated:
    """The `StreamOut` a bridged stream relays into: each chunk is translated on its way."""

    __slots__ = ("_out", "_translator")

    def __init__(self, translator: StreamTranslator, out: StreamOut) -> None:
        self._translator = translator
        self._out = out

    def send(self, data: bytes) -> bool:
        translated = self._translator.feed(data)
        return self._out.send(translated) if translated else False

    async def drained(self) -> None:
        await self._out.drained()


class _BridgedStream(UpstreamResponse):
    __slots__ = ("_first", "_inner", "_translator", "content_type", "dropped", "status", "usage")

    def __init__(
        self,
        inner: UpstreamResponse,
        translator: StreamTranslator,
        first: bytes,
        dropped: tuple[str, ...],
    ) -> None:
        self.status = inner.status
        self.content_type = "text/event-stream"
        self.usage = inner.usage
        self.dropped = dropped
        self._inner = inner
        self._translator = translator
        self._first = first

    @property
    def body(self) -> bytes:
        return self._first

    async def relay(self, out: StreamOut) -> None:
        try:
            await self._inner.relay(_Translated(self._translator, out))
        except AttemptFailed as failed:
            # The vendor's own error event was in its format, not the client's: the inbound
            # API writes one of its own.
            raise AttemptFailed(failed.outcome) from None
        finally:
            self.usage = self._inner.usage

    def close(self) -> None:
        self._inner.close()


def _unsupported(call: UpstreamCall, adapter: VendorAdapter) -> Unsupported:
    return Unsupported(
        "/v1/" + call.endpoint,
        adapter.config.name,
        f"vendor type {adapter.config.type} has no such endpoint; route this model group to "
        "deployments whose vendors serve it",
    )


async def send_bridged(
    adapter: VendorAdapter,
    deployment: DeploymentConfig,
    call: UpstreamCall,
    *,
    first_byte_s: float,
    attempt_s: float,
) -> UpstreamResponse:
    bridge = BRIDGES.get((call.api, adapter.native_api))
    if bridge is None or call.endpoint != bridge.source_endpoint:
        raise _unsupported(call, adapter)
    translation = Translation(adapter.config.name, deployment.model, call.strict_params)
    body = bridge.request(call.parsed, translation)
    inner_call = UpstreamCall(
        bridge.target_endpoint,
        orjson.dumps(body),
        body,
        call.stream,
        call.request_id,
        api=adapter.native_api,
        strict_params=call.strict_params,
        trace_headers=call.trace_headers,
    )
    inner = await adapter.send_native(
        deployment, inner_call, first_byte_s=first_byte_s, attempt_s=attempt_s
    )
    # What the vendor's own path dropped too (a litellm vendor screens the translated body).
    dropped = (*translation.dropped, *(d for d in inner.dropped if d not in translation.dropped))
    if inner.content_type != "text/event-stream":
        try:
            doc = orjson.loads(inner.body)
        except orjson.JSONDecodeError:
            raise invalid_json() from None
        finally:
            inner.close()
        answer = JSONResponse(
            inner.status, orjson.dumps(bridge.response(doc, translation)), inner.usage
        )
        answer.dropped = dropped
        return answer
    translator = bridge.stream(call.parsed, translation)
    # The inner stream committed at its first content; its translation starts there too.
    return _BridgedStream(inner, translator, translator.feed(inner.body), dropped)
