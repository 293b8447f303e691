"""Gemini, Vertex AI, Bedrock and Cohere through litellm's request/response translation.

litellm is imported on first use of such a vendor (it costs seconds and ~200 MB), with
its cost-map fetch off (offline), its banners and logging quiet, and its retries off: the
router owns retries and failover. The adapter stays thin: litellm turns an OpenAI chat
request into the vendor's call and the vendor's answer back into OpenAI chunks; errors
come back as litellm exceptions carrying the vendor's status, headers and body, which the
proxy's own classifier maps (Retry-After and Google's RetryInfo included).

Fields: a request field litellm's translation for that vendor and model does not take
(`litellm.get_supported_openai_params`) is never silently dropped. One that changes the
answer (`n`, `logprobs`, `response_format`, tools...) is refused (`Unsupported`: the router
tries the next deployment); a sampling hint is left out and reported in
`x-proxy-dropped-params` (or refused under the group's `strict_params`). Only known OpenAI
chat fields reach litellm, which runs with `drop_params` off: anything it still refuses
is the same `Unsupported`, never a 400 blamed on the client.

Budgets: a stream's first chunk must arrive within the attempt's first-byte budget and
each later chunk within `stream_idle_s`. A non-streamed answer arrives whole from litellm,
so its attempt is bounded by `attempt_s` as one piece.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import orjson

from proxy.config import DeploymentConfig, VendorConfig
from proxy.core.errors import Unsupported
from proxy.core.outcomes import Outcome, OutcomeClass
from proxy.core.usage import Usage
from proxy.formats.translation import CHAT_FIELDS, Translation
from proxy.vendors.base import (
    AttemptFailed,
    StreamOut,
    UpstreamCall,
    UpstreamResponse,
    VendorAdapter,
)
from proxy.vendors.classify import classify_response, classify_transport
from proxy.vendors.http import JSONResponse

__all__ = ["PROVIDERS", "LiteLLMAdapter", "load_litellm"]

_litellm: ModuleType | None = None

# Loggers litellm writes to; kept at WARNING so a request is one access-log line, not ten.
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm")


def load_litellm() -> ModuleType:
    """Import and configure litellm once (offline, quiet, no retries of its own)."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOG", "WARNING")
        # pydantic complains about litellm's own TypedDicts as they are first used: noise.
        warnings.filterwarnings("ignore", message=r".*`ReadOnly` qualifier", category=UserWarning)
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.num_retries = 0
        litellm.drop_params = False  # the adapter screens fields itself: nothing vanishes
        for name in _LITELLM_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        _litellm = litellm
    return _litellm


@dataclass(frozen=True, slots=True)
class Provider:
    """How one of our vendor types is addressed through litellm."""

    model_prefix: str
    params: Callable[[VendorConfig], dict[str, Any]]


PROVIDERS: Mapping[str, Provider] = {
    "gemini": Provider(
        "gemini/",
        lambda c: {"api_base": f"{c.base_url}/v1beta", "api_key": c.api_key},
    ),
    "vertex": Provider(
        "vertex_ai/",
        lambda c: {
            "api_base": c.base_url,
            "vertex_project": c.project,
            "vertex_location": c.region,
            # A service-account JSON (or a path to one); None uses Application Default Credentials.
            "vertex_credentials": c.api_key,
        },
    ),
    "bedrock": Provider(
        "bedrock/",
        lambda c: {
            "aws_bedrock_runtime_endpoint": c.base_url,
            "aws_region_name": c.region,
            # A Bedrock API key (bearer); None uses the AWS credential chain (env, profile, role).
            "api_key": c.api_key,
        },
    ),
    "cohere": Provider(
        "cohere_chat/v2/",
        lambda c: {"api_base": f"{c.base_url}/v2/chat", "api_key": c.api_key},
    ),
}

# Request fields the adapter sets itself.
_OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})
# The OpenAI chat fields litellm may be given (when it takes them for the vendor): a client's
# other keys never reach litellm, whose keyword arguments also set URLs and credentials.
_CHAT_PARAMS = frozenset({"max_tokens", "max_completion_tokens", *CHAT_FIELDS})
# The field litellm's UnsupportedParamsError names: "gemini does not support parameters:
# ['logit_bias'], for model=...", or "Invalid `reasoning_effort`: 'xhigh'. Must be one of...".
_UNSUPPORTED_RE = re.compile(r"parameters: \[['\"]?(\w+)|`(\w+)`")


# litellm's rendering of a Google RPC error it parsed itself (e.g. an error chunk inside a
# stream): "...vertex_ai_betaException - UNAVAILABLE - The model is overloaded."
_RPC_STATUS_RE = re.compile(r"Exception - ([A-Z][A-Z_]{3,}) - (.*)", re.S)


def _vendor_body(message: str) -> bytes:
    """The vendor's error body inside a litellm exception message ("...Exception - {json}"),
    or a Google-style body rebuilt from litellm's "Exception - STATUS - message" text."""
    rpc = _RPC_STATUS_RE.search(message)
    if rpc is not None and "{" not in message:
        error = {"status": rpc.group(1), "message": rpc.group(2).split(" Original exception")[0]}
        return orjson.dumps({"error": error})
    start = message.find("{")
    end = message.rfind("}")
    if 0 <= start < end:
        candidate = message[start : end + 1].encode()
        try:
            orjson.loads(candidate)
        except orjson.JSONDecodeError:
            pass
        else:
            return candidate
    return message.encode()


def classify_litellm(exc: BaseException, vendor_type: str, *, phase: str) -> Outcome:
    """Map a litellm exception to the proxy's outcome classes, like an HTTP error would be."""
    litellm = load_litellm()
    if isinstance(exc, litellm.Timeout | TimeoutError):
        return classify_transport(TimeoutError(), phase=phase)
    if isinstance(exc, litellm.APIConnectionError):
        return classify_transport(ConnectionError(), phase=phase)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 400:
        headers = getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
        message = getattr(exc, "message", None)
        text = message if isinstance(message, str) else str(exc)
        return classify_response(vendor_type, status, headers or {}, _vendor_body(text))
    return Outcome(
        OutcomeClass.SERVER_ERROR,
        None,
        None,
        f"unexpected {type(exc).__name__} translating for {vendor_type}",
        type(exc).__name__,
    )


def _delta(delta: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    role = getattr(delta, "role", None)
    if role:
        out["role"] = role
    content = getattr(delta, "content", None)
    if content is not None:
        out["content"] = content
    calls = getattr(delta, "tool_calls", None)
    if calls:
        out["tool_calls"] = [
            {
                "index": getattr(c, "index", i) or 0,
                **({"id": c.id} if getattr(c, "id", None) else {}),
                **({"type": "function"} if getattr(c, "id", None) else {}),
                "function": {
                    k: v
                    for k, v in (
                        ("name", getattr(c.function, "name", None)),
                        ("arguments", getattr(c.function, "arguments", None)),
                    )
                    if v is not None
                },
            }
            for i, c in enumerate(calls)
        ]
    return out


def _plain(value: Any) -> Any:
    """A litellm (pydantic) object as plain JSON data."""
    return value.model_dump() if hasattr(value, "model_dump") else value


def _usage_dict(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    dump = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
    details = dump.get("prompt_tokens_details") or {}
    return {
        "prompt_tokens": dump.get("prompt_tokens") or 0,
        "completion_tokens": dump.get("completion_tokens") or 0,
        "total_tokens": dump.get("total_tokens") or 0,
        "prompt_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
    }


def _chunk(chunk: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A litellm stream chunk -> an OpenAI chunk (without usage) and its usage, if any."""
    choices = [
        {
            "index": getattr(c, "index", 0),
            "delta": _delta(c.delta),
            "logprobs": _plain(getattr(c, "logprobs", None)),
            "finish_reason": c.finish_reason,
        }
        for c in chunk.choices or ()
    ]
    head = {
        "id": chunk.id,
        "object": "chat.completion.chunk",
        "created": chunk.created,
        "model": chunk.model,
        "choices": choices,
    }
    return head, _usage_dict(getattr(chunk, "usage", None))


class _Stream(UpstreamResponse):
    __slots__ = (
        "_finished",
        "_idle_s",
        "_include_usage",
        "_it",
        "_stream",
        "_vendor_type",
        "content_type",
        "dropped",
        "first",
        "status",
        "usage",
    )

    def __init__(
        self,
        stream: Any,
        it: AsyncIterator[Any],
        vendor_type: str,
        include_usage: bool,
        idle_s: float,
    ) -> None:
        self.status = 200
        self.content_type = "text/event-stream"
        self.usage: Usage | None = None
        self._stream = stream
        self._it = it
        self._vendor_type = vendor_type
        self._include_usage = include_usage
        self._idle_s = idle_s
        self._finished = False
        self.first = b""  # the committed first chunk(s), set by the adapter

    def encode(self, chunk: Any) -> bytes:
        head, usage = _chunk(chunk)
        if usage is not None:
            self.usage = Usage.from_openai(usage)
            if self._include_usage:
                head["usage"] = usage
            elif not head["choices"]:
                return b""  # a usage-only chunk the client did not ask for
        return b"data: " + orjson.dumps(head) + b"\n\n"

    @property
    def body(self) -> bytes:
        return self.first

    async def relay(self, out: StreamOut) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    chunk = await anext(self._it)
            except StopAsyncIteration:
                break
            except Exception as exc:
                raise AttemptFailed(
                    classify_litellm(exc, self._vendor_type, phase="body")
                ) from None
            data = self.encode(chunk)
            if data and out.send(data):
                await out.drained()
        self._finished = True
        out.send(b"data: [DONE]\n\n")

    def close(self) -> None:
        if not self._finished:
            self._stream.close()  # abort the vendor's HTTP stream


class LiteLLMAdapter(VendorAdapter):
    """One vendor account reached through litellm (`PROVIDERS` says how)."""

    def __init__(self, config: VendorConfig) -> None:
        super().__init__(config)
        self.litellm = load_litellm()
        provider = PROVIDERS[config.type]
        self._prefix = provider.model_prefix
        self._params = {k: v for k, v in provider.params(config).items() if v is not None}
        if config.headers:
            self._params["extra_headers"] = dict(config.headers)
        self._supported: dict[str, frozenset[str]] = {}

    def supported(self, model: str) -> frozenset[str]:
        """The OpenAI chat fields litellm takes for `model` at this vendor (cached: litellm
        takes ~150 us to work it out)."""
        known = self._supported.get(model)
        if known is None:
            litellm = self.litellm
            full = self._prefix + model
            try:
                _, provider, _, _ = litellm.get_llm_provider(model=full)
                names = litellm.get_supported_openai_params(
                    model=full, custom_llm_provider=provider
                )
            except Exception:  # litellm cannot tell: pass what we know, it refuses the rest
                names = None
            known = _CHAT_PARAMS if names is None else _CHAT_PARAMS.intersection(names)
            self._supported[model] = known
        return known

    def call_params(
        self, deployment: DeploymentConfig, call: UpstreamCall, t: Translation | None = None
    ) -> dict[str, Any]:
        """litellm.acompletion's keyword arguments for one attempt. The client's fields that
        litellm does not take for this model are refused or dropped into `t` (see the module
        docstring)."""
        t = t or Translation(self.config.name, deployment.model, call.strict_params)
        supported = self.supported(deployment.model)
        t.screen(call.parsed, supported | _OWN_FIELDS, CHAT_FIELDS, f"{self.config.type} (litellm)")
        tm = deployment.timeouts
        params = {k: v for k, v in call.parsed.items() if k in supported and v is not None}
        params.update(self._params)
        params.update(
            model=self._prefix + deployment.model,
            messages=call.parsed.get("messages") or [],
            stream=call.stream,
            num_retries=0,
            max_retries=0,
            # litellm's own (per-read) timeout is a backstop; the adapter enforces the budgets.
            timeout=max(tm.attempt_s, tm.stream_idle_s),
        )
        if call.stream:
            params["stream_options"] = {"include_usage": True}  # for accounting, always
        if call.trace_headers:
            params["extra_headers"] = {
                **self._params.get("extra_headers", {}),
                **call.trace_headers,
            }
        return params

    async def send_native(
        self,
        deployment: DeploymentConfig,
        call: UpstreamCall,
        *,
        first_byte_s: float,
        attempt_s: float,
    ) -> UpstreamResponse:
        if call.endpoint != "chat/completions":
            raise Unsupported(
                "/v1/" + call.endpoint,
                self.config.name,
                f"vendor type {self.config.type} has no such endpoint; route this model group "
                "to deployments whose vendors serve it",
            )
        t = Translation(self.config.name, deployment.model, call.strict_params)
        params = self.call_params(deployment, call, t)
        dropped = tuple(t.dropped)
        vendor_type = self.config.type
        phase = "first_byte"
        stream: Any = None
        try:
            if not call.stream:
                async with asyncio.timeout(max(attempt_s, first_byte_s)):
                    resp = await self.litellm.acompletion(**params)
                doc = resp.model_dump()
                doc["object"] = "chat.completion"
                usage = _usage_dict(getattr(resp, "usage", None))
                if usage is not None:
                    doc["usage"] = usage
                answer = JSONResponse(200, orjson.dumps(doc), Usage.from_openai(usage))
                answer.dropped = dropped
                return answer
            async with asyncio.timeout(first_byte_s):
                stream = await self.litellm.acompletion(**params)
                it = aiter(stream)
                out = _Stream(
                    stream,
                    it,
                    vendor_type,
                    _include_usage(call.parsed),
                    deployment.timeouts.stream_idle_s,
                )
                out.dropped = dropped
                while not out.first:
                    out.first = out.encode(await anext(it))
            return out
        except asyncio.CancelledError:
            if stream is not None:
                stream.close()
            raise
        except StopAsyncIteration:
            stream.close()
            raise AttemptFailed(
                classify_transport(ConnectionResetError("empty stream"), phase="body")
            ) from None
        except self.litellm.UnsupportedParamsError as exc:  # raised before anything is sent
            found = _UNSUPPORTED_RE.search(str(exc))
            t.refuse(
                (found.group(1) or found.group(2)) if found else "parameters",
                f"litellm's {vendor_type} translation does not take it for model "
                f"{deployment.model} ({_litellm_words(exc)})",
            )
        except Exception as exc:
            if stream is not None:
                stream.close()
            raise AttemptFailed(classify_litellm(exc, vendor_type, phase=phase)) from None


def _litellm_words(exc: BaseException) -> str:
    """litellm's own reason, without its class name and its advice to drop parameters."""
    text = str(exc).removeprefix("litellm.UnsupportedParamsError: ")
    return text.split(" To drop")[0].strip()


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
