"""The vendor adapter interface: one upstream attempt, in whatever wire format the vendor speaks.

An adapter turns an inbound request (already validated, OpenAI-shaped) into one call to
one deployment and hands back an `UpstreamResponse`, or raises `AttemptFailed` carrying
the classified `Outcome`. It never retries: the router owns retries and failover.

For streams, `send` returns only once the first chunk has arrived (the commit point):
until then every failure is still an `AttemptFailed` that the router may fail over.

Requests arrive in one of the inbound APIs (`UpstreamCall.api`: "openai" (chat
completions and the other classic endpoints), "anthropic" or "responses"). An adapter
speaks one of them natively (`native_api`), and may pass others through as they are
(`passthrough_apis`: OpenAI-compatible vendors serve the Responses API); `send` hands a
request in any other API to the bridge (`proxy.vendors.bridge`), which translates it both
ways around the adapter's `send_native`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

import orjson

from proxy.config import DeploymentConfig, VendorConfig
from proxy.core.errors import Unsupported
from proxy.core.outcomes import Outcome
from proxy.core.usage import Usage
from proxy.http1 import PoolState
from proxy.metrics import Metrics

__all__ = [
    "Api",
    "AttemptFailed",
    "Endpoint",
    "ProbeUnsupported",
    "StoredResponseRequest",
    "StreamOut",
    "UpstreamCall",
    "UpstreamResponse",
    "VendorAdapter",
]

Endpoint = str  # "chat/completions" | "completions" | "embeddings" | "messages" | "responses"
Api = str  # the inbound wire format: "openai" | "anthropic" | "responses"


class AttemptFailed(Exception):
    """One attempt failed; `outcome` says how (and so whether the router may fail over)."""

    def __init__(self, outcome: Outcome, *, error_event_sent: bool = False) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome
        # True when the vendor's own in-stream error event was already relayed to the client.
        self.error_event_sent = error_event_sent


@dataclass(slots=True)
class UpstreamCall:
    """What the inbound API asks of one attempt."""

    endpoint: Endpoint
    raw: bytes  # the client's body, exactly as received
    parsed: dict[str, Any]  # the same body, parsed once by the inbound API
    stream: bool
    request_id: str
    # The proxy needs a stream's usage (a keyed client's limits and ledger) whether or not the
    # client asked for it: adapters ask the vendor for it and, unless the client asked too,
    # keep the usage-only event out of the relayed stream.
    proxy_usage: bool = False
    # The conversation the client says this request belongs to (the cache-affinity key):
    # its x-session-id (or Codex's session) header, or prompt_cache_key.
    session_id: str | None = None

    api: Api = "openai"
    # The group refuses to drop fields a vendor cannot honour (`strict_params`): a
    # translation raises `Unsupported` instead of dropping a sampling hint.
    strict_params: bool = False
    # Client headers that go upstream when the vendor speaks the client's API natively
    # (e.g. `anthropic-beta` from Claude Code to an Anthropic deployment).
    forward_headers: Mapping[str, str] = field(default_factory=dict)
    # The W3C trace context of this attempt's span (`traceparent`, `tracestate`), sent to
    # every vendor whatever its API; None unless tracing is on.
    trace_headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StoredResponseRequest:
    """`method` on `/responses/{path}` (e.g. GET `resp_1`, GET `resp_1/input_items`),
    with the client's query string, within `timeout_s`."""

    method: str
    path: str
    query: str = ""
    timeout_s: float = 30.0


class ProbeUnsupported(Exception):
    """This adapter has no probe of the configured kind (the message says what to set instead)."""


# The cheapest completion a vendor will serve: one token of output for a one-word prompt.
_PROBE_COMPLETION: dict[str, Any] = {
    "model": "",
    "messages": [{"role": "user", "content": "ping"}],
    "max_tokens": 1,
}
_PROBE_COMPLETION_RAW = orjson.dumps(_PROBE_COMPLETION)


class StreamOut(Protocol):
    """Where a relayed stream goes: the client's connection."""

    def send(self, data: bytes) -> bool:
        """Queue `data` for the client now; raises ConnectionResetError if it has gone.

        Returns True when the client is not reading fast enough: wait for `drained`
        before sending more."""

    async def drained(self) -> None: ...


class UpstreamResponse(ABC):
    """A successful upstream answer (status 2xx) of one attempt."""

    status: int
    content_type: str
    usage: Usage | None
    # The vendor's response headers (rate-limit budgets live there); none for translated answers.
    headers: Mapping[str, str] = MappingProxyType({})
    # Request fields a translation dropped because the vendor has no equivalent (sampling
    # hints only: a field that changes the answer's shape is mapped or refused). The client
    # is told in `x-proxy-dropped-params`.
    dropped: tuple[str, ...] = ()

    @property
    @abstractmethod
    def body(self) -> bytes:
        """The whole JSON body (non-streamed), or the first chunk (streamed)."""

    @abstractmethod
    async def relay(self, out: StreamOut) -> None:
        """Send the stream after its first bytes (`body`) to `out` as it arrives, in the
        inbound API's format. Usage seen in the stream is in `usage` by the time it returns.

        Raises AttemptFailed if the stream breaks off, ConnectionResetError if the client
        left. A non-streamed answer has nothing more to send."""

    @abstractmethod
    def close(self) -> None:
        """Release the upstream connection (and abort it if the stream is unfinished)."""


class VendorAdapter(ABC):
    """One vendor account: its wire format, credentials and connection pool."""

    #: The inbound API this vendor's wire format is natively (what bridges translate into).
    native_api: ClassVar[Api] = "openai"

    def __init__(self, config: VendorConfig) -> None:
        self.config = config
        #: Other inbound APIs this vendor serves as they are (no translation).
        self.passthrough_apis: frozenset[Api] = frozenset()

    async def start(self) -> None:
        """Open pools. Called once on the running event loop before serving."""

    async def close(self) -> None:
        """Close pools; in-flight calls have finished or been cancelled by then."""

    def bind_metrics(self, metrics: Metrics) -> None:
        """Report to `metrics` (a connection pool's waits); adapters without one ignore it."""

    def pool_state(self) -> PoolState | None:
        """The vendor's connection pool's occupancy, for the saturation gauges (None: no pool)."""
        return None

    async def send(
        self,
        deployment: DeploymentConfig,
        call: UpstreamCall,
        *,
        first_byte_s: float,
        attempt_s: float,
    ) -> UpstreamResponse:
        """Make one attempt; the response is in `call.api`'s format. `first_byte_s` bounds
        the wait for headers and the first chunk; `attempt_s` bounds a non-streamed attempt."""
        if call.api == self.native_api or call.api in self.passthrough_apis:
            return await self.send_native(
                deployment, call, first_byte_s=first_byte_s, attempt_s=attempt_s
            )
        from proxy.vendors.bridge import send_bridged

        return await send_bridged(
            self, deployment, call, first_byte_s=first_byte_s, attempt_s=attempt_s
        )

    @abstractmethod
    async def send_native(
        self,
        deployment: DeploymentConfig,
        call: UpstreamCall,
        *,
        first_byte_s: float,
        attempt_s: float,
    ) -> UpstreamResponse:
        """One attempt with a request (and response) in this vendor's `native_api`."""

    async def count_tokens(self, deployment: DeploymentConfig, body: dict[str, Any]) -> int | None:
        """The vendor's own count of an Anthropic Messages body's input tokens, or None
        where the vendor has no such endpoint (the caller then estimates)."""
        return None

    async def count_input_tokens(
        self, deployment: DeploymentConfig, body: dict[str, Any]
    ) -> int | None:
        """The vendor's own count of a Responses API body's input tokens, or None where the
        vendor cannot count it."""
        return None

    async def stored_response(
        self, deployment: DeploymentConfig, request: StoredResponseRequest
    ) -> tuple[int, bytes]:
        """A request about a response this vendor stores (`GET`/`DELETE /responses/{id}`
        and its sub-resources): the vendor's status and body. Raises what the transport
        raises (OSError, TimeoutError, ...); a vendor that stores no responses raises
        Unsupported."""
        raise Unsupported(
            "/v1/responses/{id}",
            self.config.name,
            f"vendor type {self.config.type} stores no responses",
        )

    async def probe(
        self, deployment: DeploymentConfig, kind: str, timeout_s: float
    ) -> Outcome | None:
        """One active health check of `deployment`: None if it passed, else the classified failure.

        `completion` works for every adapter (a one-token answer through `send`); cheaper
        kinds (`models`: list the vendor's models, no tokens) are the adapter's to offer.
        Raises ProbeUnsupported for a kind this adapter cannot do.
        """
        if kind != "completion":
            raise ProbeUnsupported(
                f"vendor type {self.config.type!r} has no {kind!r} health probe; "
                "set `health_check: {probe: completion}` (one token per probe) or "
                "`health_check: {enabled: false}` for its deployments"
            )
        call = UpstreamCall(
            "chat/completions", _PROBE_COMPLETION_RAW, dict(_PROBE_COMPLETION), False, "probe"
        )
        try:
            response = await self.send(
                deployment, call, first_byte_s=timeout_s, attempt_s=timeout_s
            )
        except AttemptFailed as failed:
            return failed.outcome
        response.close()
        return None

    def describe(self) -> Mapping[str, str]:
        """Non-secret facts for status pages and logs."""
        return {"type": self.config.type, "base_url": self.config.base_url}
