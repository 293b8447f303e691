"""Serving a request in one inbound API by a vendor that speaks another.

`send_bridged` translates the request (`proxy.formats`), makes the attempt with the
adapter's `send_native`, and translates the answer back: JSON at once, streams chunk by
chunk. A request field the translation cannot carry (`Untranslatable`) is `Unsupported` by
that vendor, before anything is sent: the router tries the next deployment. Fields it
dropped (sampling hints) are reported on the answer (`UpstreamResponse.dropped`), or
refused in a group with `strict_params`. The commit point is the native stream's (its first content event): a vendor
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
from proxy.formats.translation import Translated, Untranslatable
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
    """How requests of API `source` reach a vendor speaking API `target`."""

    source_endpoint: str  # the one endpoint of the source API that can be translated
    target_endpoint: str
    # (client's request, deployment's model) -> the request in the target API
    request: Callable[[Mapping[str, Any], str], Translated]
    # (vendor's answer, client's request) -> the answer in the source API
    response: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
    stream: Callable[[Mapping[str, Any]], StreamTranslator]


def _carried(
    translate: Callable[[Mapping[str, Any], str], dict[str, Any]],
) -> Callable[[Mapping[str, Any], str], Translated]:
    """A request translation that drops nothing."""
    return lambda body, model: Translated(translate(body, model))


def _answer(
    translate: Callable[[Mapping[str, Any]], dict[str, Any]],
) -> Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]:
    """An answer translation that needs nothing of the request."""
    return lambda answer, request: translate(answer)


# (inbound API, vendor's native API) -> bridge
BRIDGES: Mapping[tuple[str, str], Bridge] = {
    ("openai", "anthropic"): Bridge(
        "chat/completions",
        "messages",
        _carried(chat_to_messages),
        _answer(message_to_chat),
        MessagesToChatStream,
    ),
    ("anthropic", "openai"): Bridge(
        "messages",
        "chat/completions",
        _carried(messages_to_chat),
        _answer(chat_to_message),
        ChatToMessagesStream,
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
    __slots__ = ("_first", "_inner", "_translator", "content_type", "status", "usage")

    def __init__(self, inner: UpstreamResponse, translator: StreamTranslator, first: bytes) -> None:
        self.status = inner.status
        self.content_type = "text/event-stream"
        self.usage = inner.usage
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
    translated = _translate(bridge, adapter, deployment, call)
    body = translated.body
    inner_call = UpstreamCall(
        bridge.target_endpoint,
        orjson.dumps(body),
        body,
        call.stream,
        call.request_id,
        api=adapter.native_api,
    )
    inner = await adapter.send_native(
        deployment, inner_call, first_byte_s=first_byte_s, attempt_s=attempt_s
    )
    if inner.content_type != "text/event-stream":
        try:
            doc = orjson.loads(inner.body)
        except orjson.JSONDecodeError:
            raise invalid_json() from None
        finally:
            inner.close()
        answer: UpstreamResponse = JSONResponse(
            inner.status, orjson.dumps(bridge.response(doc, call.parsed)), inner.usage
        )
    else:
        translator = bridge.stream(call.parsed)
        # The inner stream committed at its first content; its translation starts there too.
        answer = _BridgedStream(inner, translator, translator.feed(inner.body))
    answer.dropped = translated.dropped
    return answer


def _translate(
    bridge: Bridge, adapter: VendorAdapter, deployment: DeploymentConfig, call: UpstreamCall
) -> Translated:
    """The request in the vendor's API; a field it cannot carry (or, with strict_params,
    a hint it would drop) makes the deployment unable to serve it."""
    vendor = adapter.config
    try:
        translated = bridge.request(call.parsed, deployment.model)
    except Untranslatable as exc:
        raise Unsupported(
            exc.field, vendor.name, f"vendor type {vendor.type} {exc.detail}"
        ) from None
    if translated.dropped and call.strict_params:
        raise Unsupported(
            translated.dropped[0],
            vendor.name,
            f"vendor type {vendor.type} has no equivalent of this sampling hint, and the model "
            "group sets strict_params: true (remove the field, or route the group to "
            "deployments that honour it)",
        )
    return translated
