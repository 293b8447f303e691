"""The OpenAI Responses API: what the Codex CLI, the openai-agents SDK and `client.responses.*`
speak.

- `POST /v1/responses` (JSON and `stream: true`): the same model groups, client keys,
  limits, ledger, metrics and failover as chat. OpenAI-compatible and Azure deployments
  get the client's bytes with only `model` rewritten; other vendors get a translation
  (`proxy.vendors.bridge`). A stream fails over until its first byte; after that a failure
  ends it with an `error` event that also carries a top-level `error` object, so the
  official SDKs raise `APIError` instead of returning a truncated response.
- `GET`/`DELETE /v1/responses/{id}` (and `GET .../input_items`, `POST .../cancel`) and
  `previous_response_id` refer to state one vendor holds. The proxy remembers which
  deployment produced each stored response id (`store` not false), in process and, with
  the Redis backend, for every replica (`StateBackend.remember`), and sends those requests
  to that vendor only: a model group's deployments at the owner's vendor, the owner first.
  When none of them can take the request now, the client is told so plainly (503 with
  `retry-after`); no other vendor is tried, since none could know the id.
- `POST /v1/responses/input_tokens`: the first deployment of the group whose vendor can
  count (OpenAI-compatible vendors ask `/responses/input_tokens`, Anthropic its
  `count_tokens`), else a 404 saying that none can.

A stored-response request has no body: `resolve` finds the model group the response was
created in (the allow-list and limits apply to it) and its owner; it counts as a request
(rpm, ledger) without tokens. A response id created for one client key is not found for
another.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.api.errors import error_answer
from proxy.api.openai import final_error_answer
from proxy.api.pipeline import Endpoint, Exchange, Inbound, stream_error_message
from proxy.api.validation import EndpointSchema, validate
from proxy.core.errors import ApiError
from proxy.core.outcomes import FinalError, Outcome, OutcomeClass
from proxy.core.redact import redact
from proxy.formats.sse import SSEParser, sse_event
from proxy.health.breaker import BreakerState
from proxy.health.deployment import DeploymentState
from proxy.listener import Answer
from proxy.routing.router import AllFailed, ModelGroup, Served
from proxy.vendors.base import StoredResponseRequest, UpstreamCall
from proxy.vendors.classify import classify_response, classify_transport

__all__ = ["CREATE", "ENDPOINTS", "INPUT_TOKENS", "OWNER_TTL_S", "RESPONSES", "Owner"]

API = "responses"
# OpenAI keeps stored responses for 30 days; their owners are remembered as long.
OWNER_TTL_S = 30 * 86400.0
_OWNER_KEY = "resp:"
_PREFIX = "/v1/responses/"
_SSE = "text/event-stream"
_KNOWN_WAIT_S = 86400.0  # a longer wait than this is no known time of return

_NUM = (int, float)
CREATE = EndpointSchema(
    "responses",
    required=("model",),
    fields={
        "model": (str,),
        "input": (str, list),
        "instructions": (str,),
        "stream": (bool,),
        "store": (bool,),
        "background": (bool,),
        "tools": (list,),
        "tool_choice": (str, dict),
        "parallel_tool_calls": (bool,),
        "max_output_tokens": (int,),
        "max_tool_calls": (int,),
        "temperature": _NUM,
        "top_p": _NUM,
        "top_logprobs": (int,),
        "text": (dict,),
        "reasoning": (dict,),
        "include": (list,),
        "metadata": (dict,),
        "previous_response_id": (str,),
        "prompt_cache_key": (str,),
        "safety_identifier": (str,),
        "service_tier": (str,),
        "truncation": (str,),
        "user": (str,),
    },
    items={"tools": (dict, ("type",))},
)
INPUT_TOKENS = EndpointSchema(
    "response input tokens",
    required=("model",),
    fields={k: v for k, v in CREATE.fields.items() if k not in ("stream", "store", "background")},
    streamable=False,
    items=CREATE.items,
)
# A request about a stored response has no body (`resolve` stands in for it).
STORED = EndpointSchema("stored response", required=(), fields={}, streamable=False)


def _validate(body: Any, schema: EndpointSchema) -> dict[str, Any]:
    """The generic field checks, plus: `input` is a string or a list of item objects."""
    checked = validate(body, schema)
    items = checked.get("input")
    if isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ApiError(
                    400,
                    f"Invalid type for 'input[{i}]': expected an input item object.",
                    param=f"input[{i}]",
                    code="invalid_type",
                )
    return checked


def _stream_error(deployment: str, outcome: Outcome) -> bytes:
    """The Responses API's `error` event, with a top-level `error` object too: the official
    SDKs raise `APIError` on that, where they would only yield a bare `error` event."""
    message = stream_error_message(deployment, outcome)
    code = "upstream_stream_error"
    payload = {
        "type": "error",
        "code": code,
        "message": message,
        "param": None,
        "error": {"type": "server_error", "code": code, "message": message},
    }
    return sse_event("error", orjson.dumps(payload))


RESPONSES = Inbound(API, _validate, error_answer, final_error_answer, _stream_error)


# --------------------------------------------------------------------------- owners


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a stored response: the deployment that produced it, its vendor, the model
    group it was asked of, and the client key that asked (None on an open proxy)."""

    deployment: str
    vendor: str
    group: str
    client: str | None

    def encode(self) -> str:
        return orjson.dumps([self.deployment, self.vendor, self.group, self.client]).decode()

    @classmethod
    def decode(cls, value: str) -> Owner | None:
        try:
            fields = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not (isinstance(fields, list) and len(fields) == 4):
            return None
        deployment, vendor, group, client = fields
        if not all(isinstance(v, str) for v in (deployment, vendor, group)):
            return None
        return cls(deployment, vendor, group, client if isinstance(client, str) else None)


class _NotYours(Exception):
    """The response id was created for another client key."""


async def _owner(ex: Exchange, response_id: str) -> Owner | None:
    """The owner of a response id (None: not known here); raises _NotYours for an id
    another client key created, which the client is told it does not exist."""
    value = await ex.gateway.state.recall(_OWNER_KEY + response_id)
    owner = Owner.decode(value) if value is not None else None
    if owner is None:
        return None
    if owner.client != (ex.client.name if ex.client is not None else None):
        raise _NotYours(response_id)
    return owner


async def _previous_owner(ex: Exchange, body: Mapping[str, Any]) -> tuple[str, Owner] | None:
    """The previous_response_id of a request and its owner, when this proxy knows it."""
    previous = body.get("previous_response_id")
    if not isinstance(previous, str) or not previous:
        return None
    try:
        owner = await _owner(ex, previous)
    except _NotYours:
        raise ApiError(
            404,
            f"Previous response with id '{previous}' not found.",
            code="previous_response_not_found",
            param="previous_response_id",
        ) from None
    return (previous, owner) if owner is not None else None


# The response id where a Responses answer starts: a JSON object's first key, or in a
# stream the `response` of `response.created` (OpenAI writes `id` first). Anything else is
# parsed whole.
_JSON_ID_RE = re.compile(rb'^\s*\{\s*"id"\s*:\s*"([^"\\]{1,256})"')
_EVENT_ID_RE = re.compile(rb'"response"\s*:\s*\{\s*"id"\s*:\s*"([^"\\]{1,256})"')


def response_id_of(body: bytes, stream: bool) -> str | None:
    """The id of the response a native answer (its JSON, or its stream's first chunk) carries."""
    found = (_EVENT_ID_RE if stream else _JSON_ID_RE).search(body)
    if found is not None:
        return found.group(1).decode()
    try:
        if stream:
            data = next((d for name, d in SSEParser().feed(body) if name != b"error"), b"{}")
            doc = orjson.loads(data).get("response")
        else:
            doc = orjson.loads(body)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    rid = doc.get("id") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str) else None


def _remember(ex: Exchange, served: Served, call: UpstreamCall) -> None:
    """Remember which deployment holds the response just served, if its vendor stored it."""
    if call.parsed.get("store") is False:
        return
    vendor = served.deployment.config.vendor
    if API not in ex.generation.adapters[vendor].passthrough_apis:
        return  # translated: the vendor stored nothing
    rid = response_id_of(served.response.body, served.response.content_type == _SSE)
    if rid is None:
        return
    client = ex.client.name if ex.client is not None else None
    owner = Owner(served.deployment.id, vendor, ex.group, client)
    ex.gateway.state.remember(_OWNER_KEY + rid, owner.encode(), OWNER_TTL_S)


def _why_down(dep: DeploymentState, now: float) -> str:
    if dep.breaker.drained:
        return "an operator has drained it"
    if dep.breaker.state is not BreakerState.CLOSED:
        return "its circuit breaker is open"
    if now < dep.cooldown_until:
        return f"it is cooling down after {dep.cooldown_reason or 'failures'}"
    if not dep.healthy:
        return "it is failing its health checks"
    return "it is at its configured capacity"


def _held_by(ex: Exchange, group: ModelGroup, owner: Owner, response_id: str) -> ModelGroup:
    """The group narrowed to the deployments at the owner's vendor (the owner first)."""
    states = ex.gateway.deployments
    deployments = ex.generation.config.deployments
    members = [
        m
        for m in group.config.members
        if m.deployment in deployments and deployments[m.deployment].vendor == owner.vendor
    ]
    where = f"vendor '{owner.vendor}' (deployment {owner.deployment})"
    if not members:
        raise ApiError(
            400,
            f"previous_response_id '{response_id}' continues a response stored at {where}, "
            f"and model group '{group.name}' has no deployment at that vendor. Continue it "
            f"with model group '{owner.group}', or send the whole conversation as input "
            "instead.",
            code="previous_response_unavailable",
            param="previous_response_id",
        )
    members.sort(key=lambda m: m.deployment != owner.deployment)
    now = time.monotonic()
    if not any(states[m.deployment].usable(now) for m in members):
        dep = states[members[0].deployment]
        left = dep.unusable_until(now) - now
        # Unhealthy or drained deployments have no known time of return.
        wait = max(1, math.ceil(left)) if left < _KNOWN_WAIT_S else None
        retry = f"Retry in about {wait}s" if wait is not None else "Retry later"
        raise ApiError(
            503,
            f"previous_response_id '{response_id}' refers to a response stored at {where}, "
            f"which is unavailable now ({_why_down(dep, now)}), and no other vendor can know "
            f"it. {retry}, or send the whole conversation as input instead.",
            type="server_error",
            code="previous_response_unavailable",
            param="previous_response_id",
            headers={"retry-after": str(wait)} if wait is not None else None,
        )
    config = dataclasses.replace(
        group.config,
        members=tuple(members),
        strategy="priority",
        context_window_fallback=None,
        hedge_after_ms=None,
    )
    return ModelGroup(config, states)


async def _route(ex: Exchange, group: ModelGroup, call: UpstreamCall, deadline: float) -> Served:
    """Route a create request: one that continues a stored response goes to the vendor
    holding it; the owner of what it answers is remembered."""
    router = ex.generation.router
    continued = await _previous_owner(ex, call.parsed)
    if continued is None:
        served = await router.run(group, call, deadline, ex.trace)
    else:
        previous, owner = continued
        try:
            served = await router.run(
                _held_by(ex, group, owner, previous), call, deadline, ex.trace
            )
        except AllFailed as failed:
            prefix = (
                f"previous_response_id '{previous}' can only be continued at vendor "
                f"'{owner.vendor}', and it failed: "
            )
            error: FinalError = dataclasses.replace(
                failed.error, message=prefix + failed.error.message
            )
            raise AllFailed(error, failed.trace) from None
    _remember(ex, served, call)
    return served


# --------------------------------------------------------------------------- token counts


async def _input_tokens(ex: Exchange, group: ModelGroup, body: dict[str, Any]) -> Answer:
    continued = await _previous_owner(ex, body)
    if continued is not None:
        group = _held_by(ex, group, continued[1], continued[0])
    adapters = ex.generation.adapters
    count: int | None = None
    for dep, _ in group.members:
        count = await adapters[dep.config.vendor].count_input_tokens(dep.config, body)
        if count is not None:
            break
    if count is None:
        types = sorted({adapters[dep.config.vendor].config.type for dep, _ in group.members})
        raise ApiError(
            404,
            f"No deployment of model group '{group.name}' can count Responses API input "
            f"tokens (vendor types: {', '.join(types)}): OpenAI-compatible vendors that serve "
            "/v1/responses/input_tokens and Anthropic can.",
            code="input_tokens_unavailable",
        )
    await ex.settle_without_tokens()
    return Answer(
        200,
        {"x-request-id": ex.rid, **ex.ticket.headers},
        orjson.dumps({"object": "response.input_tokens", "input_tokens": count}),
    )


# --------------------------------------------------------------------------- stored responses

# Requests about a stored response: (method, sub-resource).
_STORED_OPERATIONS = (("GET", ""), ("DELETE", ""), ("GET", "/input_items"), ("POST", "/cancel"))
# The id in a route (aiohttp's `{name:regex}`): `input_tokens` is an endpoint, not an id.
_ID_PARAM = "{response_id:(?!input_tokens$)[^/]+}"


async def _stored_owner(ex: Exchange) -> dict[str, Any]:
    """The body a stored-response request stands for: its owner's model group and owner."""
    path = ex.request.path[len(_PREFIX) :]
    response_id = path.split("/", 1)[0]
    try:
        owner = await _owner(ex, response_id)
    except _NotYours:
        owner = None
    if owner is None:
        raise ApiError(
            404,
            f"Response '{response_id}' is not known to this proxy. It remembers the responses "
            "its OpenAI-compatible deployments stored (store not false) for 30 days; responses "
            "served through a translation (e.g. by Anthropic) are not stored anywhere.",
            code="response_not_found",
        )
    if ex.request.method == "GET" and "stream=true" in ex.request.query_string:
        raise ApiError(
            400,
            "Streaming a stored response is not supported through this proxy: poll "
            f"GET /v1/responses/{response_id} until its status is final instead.",
            param="stream",
        )
    return {
        "model": owner.group,
        "response": path,
        "owner": [owner.deployment, owner.vendor],
        "method": ex.request.method,
    }


async def _stored(ex: Exchange, group: ModelGroup, body: dict[str, Any]) -> Answer:
    """Send a stored-response request to the vendor holding it and relay its answer; a
    failure of that vendor is said plainly (no other vendor could answer it)."""
    deployment_id, vendor = body["owner"]
    adapter = ex.generation.adapters.get(vendor)
    deployment = ex.generation.config.deployments.get(deployment_id)
    if adapter is None or deployment is None:
        raise ApiError(
            503,
            f"Response '{body['response']}' is stored at vendor '{vendor}' (deployment "
            f"{deployment_id}), which is no longer configured on this proxy.",
            type="server_error",
            code="response_unavailable",
        )
    request = StoredResponseRequest(
        body["method"], body["response"], ex.request.query_string, deployment.timeouts.attempt_s
    )
    headers = {"x-request-id": ex.rid, "x-proxy-deployment": deployment_id, **ex.ticket.headers}
    try:
        status, data = await adapter.stored_response(deployment, request)
    except ApiError:
        raise
    except Exception as exc:
        outcome = classify_transport(exc, phase="first_byte")
        raise _vendor_failed(body, vendor, deployment_id, outcome) from None
    if status >= 400:
        outcome = classify_response(adapter.config.type, status, {}, data)
        if outcome.cls is not OutcomeClass.CLIENT_ERROR:  # the vendor's trouble, or ours
            raise _vendor_failed(body, vendor, deployment_id, outcome)
        data = redact(data, adapter.config.api_key)
    await ex.settle_without_tokens()
    return Answer(status, headers, data)


def _vendor_failed(
    body: Mapping[str, Any], vendor: str, deployment: str, outcome: Outcome
) -> ApiError:
    return ApiError(
        502,
        f"Response '{body['response']}' is stored at vendor '{vendor}' (deployment "
        f"{deployment}), which failed to answer ({outcome.cls}: {outcome.message}); no other "
        "vendor can. Retry later.",
        type="server_error",
        code="response_unavailable",
    )


ENDPOINTS = (
    Endpoint("/v1/responses", API, CREATE, RESPONSES, route=_route),
    Endpoint(
        "/v1/responses/input_tokens",
        "responses/input_tokens",
        INPUT_TOKENS,
        RESPONSES,
        _input_tokens,
    ),
    *(
        Endpoint(
            _PREFIX + _ID_PARAM + sub,
            "responses/stored",
            STORED,
            RESPONSES,
            _stored,
            method=method,
            resolve=_stored_owner,
        )
        for method, sub in _STORED_OPERATIONS
    ),
)
