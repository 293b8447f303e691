"""Generic fake LLM vendor: lifecycle, stats, fault injection and control endpoints.

The proxy's value is what it does when a vendor misbehaves, so the demo, the tests
and the benchmarks need vendors that misbehave *on demand and deterministically*:
real HTTP on a real socket (so the proxy's connection pool, timeouts and stream
parsing are exercised), with faults switchable at run time, in process or over HTTP
(``/_fake/*``) when the fake runs as a subprocess.

This module knows nothing about any vendor's wire format. A subclass (``FakeOpenAI``,
later Anthropic/Gemini) supplies its routes and says how to render an error body, an
auth failure, a malformed-request error and an in-stream error event; this base class
decides *when* to inject which fault and owns the socket. That split is why a fault
names an ``error`` kind (``"overloaded"``) rather than a status: the same preset
becomes OpenAI's 503 or Anthropic's 529 depending on who renders it.

Hot-path budget: a few tens of microseconds per request (orjson, no per-request
allocation beyond the response itself), because the benchmarks measure the proxy,
not the fake.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import os
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, Self

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "ERROR_KINDS",
    "PRESETS",
    "Call",
    "FakeStats",
    "FakeVendor",
    "Fault",
    "RecordedRequest",
    "Rejected",
    "Route",
    "Usage",
    "sse_data",
    "sse_event",
]

#: Error kinds a vendor subclass must be able to render (the error presets' names).
#: Vendors map each to their native status, body and headers.
ERROR_KINDS: frozenset[str] = frozenset(
    {
        "insufficient_quota",
        "rate_limited",
        "request_too_large",
        "overloaded",
        "server_error",
        "bad_gateway",
        "bad_request",
        "context_too_long",
        "auth_error",
        "model_not_found",
    }
)

#: How long the stall presets stall: longer than the proxy's default first-byte budget
#: (30 s), so the proxy's timeout, not the fake, ends the attempt.
_STALL_S = 60.0

#: Loop iterations ``apply_fault(refuse)`` yields after cutting connections: close ->
#: socket closed (FIN) -> peer reads EOF takes about three on loopback.
_CUT_SETTLE_ITERATIONS = 8

_FAULT_FIELDS: frozenset[str] = frozenset()  # filled in after the class is defined

#: Methods whose requests carry no body (an empty one is not a malformed JSON body).
_BODYLESS: frozenset[str] = frozenset({"GET", "DELETE", "HEAD"})


@dataclass(frozen=True, slots=True)
class Fault:
    """What the fake does wrong, applied per request (immutable: swap, don't mutate).

    Error responses: ``error`` names a vendor-neutral kind (one of ``ERROR_KINDS``) that
    the vendor renders in its own format with its own status; ``status`` forces a status
    (with no ``error``, the vendor renders a generic body for it); ``body`` replaces the
    body (dict → JSON, bytes → raw) and ``message`` only the message text; ``headers`` are
    added to whatever response the faulted request gets (error *or* success, so
    ``x-ratelimit-*`` on a 200 can be simulated); ``retry_after_s`` makes the vendor emit
    its retry-after headers.

    Timing: ``latency_s`` delays *every* request while the fault is set (it is not subject
    to ``rate``); ``stall_s`` delays before the response headers (no first byte);
    ``stall_after_headers_s`` sends the headers, then delays the body (first chunk).

    Streams only: ``drop_after_chunks`` closes the TCP connection after N events (no
    final chunk, no terminator: the client sees a truncated chunked body);
    ``error_event_after_chunks`` sends the vendor's in-stream error event after N events
    and ends the stream cleanly but without the success terminator (``body``, if set, is
    the event's payload); ``truncate_after_chunks`` ends the stream cleanly after N events
    with neither an error event nor the terminator (a vendor that just stops).

    ``drip_s`` sends the body one byte at a time, ``drip_s`` apart (JSON and streams): a
    vendor that is alive but uselessly slow, which only an overall deadline catches.

    Listener: ``refuse`` closes the listening socket (connects get ECONNREFUSED, pooled
    connections are closed too, as when a host dies); clearing it rebinds the same port;
    ``refuse_for_s`` rebinds by itself after that long (the only way back for a subprocess
    fake, whose control endpoint is unreachable while refusing). ``black_hole`` reads the
    request and never answers until the client goes away.

    ``rate`` is the probability that a request is faulted, drawn from the fake's seeded
    ``random.Random`` so tests are reproducible.
    """

    status: int | None = None
    error: str | None = None
    message: str | None = None
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    rate: float = 1.0
    latency_s: float = 0.0
    stall_s: float = 0.0
    stall_after_headers_s: float = 0.0
    drop_after_chunks: int | None = None
    error_event_after_chunks: int | None = None
    truncate_after_chunks: int | None = None
    drip_s: float = 0.0
    refuse: bool = False
    refuse_for_s: float | None = None
    black_hole: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be 100..599, got {self.status}")
        if self.error is not None and self.error not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error!r}; known: {sorted(ERROR_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within 0..1, got {self.rate}")
        for name in ("latency_s", "stall_s", "stall_after_headers_s", "drip_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("retry_after_s", "refuse_for_s", "drop_after_chunks", "truncate_after_chunks"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.error_event_after_chunks is not None and self.error_event_after_chunks < 0:
            raise ValueError("error_event_after_chunks must be >= 0")

    @property
    def is_error(self) -> bool:
        """True if a faulted request gets an error response instead of an answer."""
        return self.status is not None or self.error is not None

    def stream_end(self, events: int) -> int | None:
        """After how many of ``events`` stream events this fault ends the stream (drop,
        error event or truncation), or None if the stream completes."""
        ends = (self.drop_after_chunks, self.error_event_after_chunks, self.truncate_after_chunks)
        end = min((n for n in ends if n is not None), default=None)
        return end if end is not None and end <= events else None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Fault:
        """Build a named preset, with any field overridden (``retry_after_s=5``, ``rate=0.5``).

        Raises ValueError for an unknown preset or field, listing the valid ones.
        """
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown fault preset {name!r}; known: {sorted(PRESETS)}") from None
        unknown = set(overrides) - _FAULT_FIELDS
        if unknown:
            raise ValueError(
                f"unknown Fault field(s) {sorted(unknown)}; known: {sorted(_FAULT_FIELDS)}"
            )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault | None:
        """Parse the JSON of ``POST /_fake/fault``: ``{"preset": name, ...field overrides}``.

        Without ``preset`` the fields describe a custom fault. ``{"preset": "none"}`` (or
        ``{}``) returns None, i.e. healthy. A string ``body`` is sent as raw bytes.
        """
        fields = dict(data)
        name = fields.pop("preset", None)
        if isinstance(fields.get("body"), str):
            fields["body"] = fields["body"].encode()
        if "headers" in fields:
            headers = fields["headers"]
            if not isinstance(headers, dict):
                raise ValueError("headers must be an object of strings")
            fields["headers"] = {str(k): str(v) for k, v in headers.items()}
        if name is None:
            unknown = set(fields) - _FAULT_FIELDS
            if unknown:
                raise ValueError(
                    f"unknown Fault field(s) {sorted(unknown)}; known: {sorted(_FAULT_FIELDS)}"
                )
            fault = cls(**fields)
        elif not isinstance(name, str):
            raise ValueError("preset must be a string")
        else:
            fault = cls.preset(name, **fields)
        return None if fault == _NO_FAULT else fault

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (bytes bodies decoded leniently), for ``/_fake/stats`` and logs."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.body, bytes):
            out["body"] = self.body.decode(errors="replace")
        return out


_FAULT_FIELDS = frozenset(f.name for f in dataclasses.fields(Fault))
_NO_FAULT = Fault()

#: Named fault presets. Error presets name an ``error`` kind and leave ``status`` unset
#: so each vendor answers with its native status/body/headers (OpenAI: see
#: ``proxy.fakes.openai``); pass ``status=`` to force one.
PRESETS: dict[str, Fault] = {
    "none": _NO_FAULT,
    "insufficient_quota": Fault(error="insufficient_quota"),
    "rate_limited": Fault(error="rate_limited", retry_after_s=2.0),
    "request_too_large": Fault(error="request_too_large"),
    "overloaded": Fault(error="overloaded"),
    "server_error": Fault(error="server_error"),
    "bad_gateway": Fault(error="bad_gateway"),
    "bad_request": Fault(error="bad_request"),
    "context_too_long": Fault(error="context_too_long"),
    "auth_error": Fault(error="auth_error"),
    "model_not_found": Fault(error="model_not_found"),
    # Nothing at all (not even headers) for a minute: the proxy's first-byte timeout.
    "stall": Fault(stall_s=_STALL_S),
    # 200 + headers at once, then no body for a minute: the stream-idle / body timeout.
    "stall_first_byte": Fault(stall_after_headers_s=_STALL_S),
    "drop_midstream": Fault(drop_after_chunks=2),
    "error_event_midstream": Fault(error_event_after_chunks=2),
    "truncated_stream": Fault(truncate_after_chunks=2),
    # A 200 whose JSON body is cut off: the answer cannot be parsed.
    "invalid_json": Fault(status=200, body=b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess'),
    # Alive, but a byte a second: only the attempt deadline catches it.
    "slow_drip": Fault(drip_s=1.0),
    "refuse": Fault(refuse=True),
    "black_hole": Fault(black_hole=True),
}


class Usage(NamedTuple):
    """Token usage a response reports; ``cached`` is included in ``prompt`` (OpenAI rule)."""

    prompt: int
    completion: int
    cached: int = 0


class RecordedRequest(NamedTuple):
    """One LLM request as received: header names lower-cased, body parsed (None if not JSON
    or empty, as for ``GET``/``DELETE``), the method last (it was added later)."""

    path: str
    headers: dict[str, str]
    body: Any
    method: str = "POST"


class Rejected(Exception):
    """A request the vendor refuses (bad field, unknown id): raised by a handler before it
    answers, rendered by the vendor's ``rejected_response`` in its own error format."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass(slots=True)
class FakeStats:
    """What the fake saw and served; tests assert on it, ``/_fake/stats`` serves it.

    ``tokens`` sums the usage of responses that completed (a JSON answer, or a stream
    that reached its terminator), i.e. exactly what the fake reported or, for a stream
    sent without ``include_usage``, would have reported. ``tokens_unfinished`` sums what
    streams cut short by a fault (drop, truncate, error event) had cost when they ended:
    the prompt plus one completion token per event sent, billed but never delivered
    whole (the chaos suite's "tokens wasted"). ``disconnects`` counts clients
    that went away before their response finished (not connections the fake cut itself).
    """

    requests: Counter[str] = field(default_factory=Counter)
    model_list_requests: int = 0
    tokens: dict[str, int] = field(
        default_factory=lambda: {"prompt": 0, "completion": 0, "cached": 0}
    )
    tokens_unfinished: int = 0
    disconnects: int = 0
    in_flight: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    last_requests: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=64))

    def reset(self) -> None:
        """Zero in place (handlers hold a reference); ``in_flight`` is live state: kept."""
        self.requests.clear()
        self.model_list_requests = 0
        self.tokens.update(prompt=0, completion=0, cached=0)
        self.tokens_unfinished = 0
        self.disconnects = 0
        self.faults.clear()
        self.last_requests.clear()

    @property
    def total_requests(self) -> int:
        """LLM requests on all paths (model-list probes excluded)."""
        return sum(self.requests.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able snapshot."""
        return {
            "requests": dict(self.requests),
            "total_requests": self.total_requests,
            "model_list_requests": self.model_list_requests,
            "tokens": dict(self.tokens),
            "tokens_unfinished": self.tokens_unfinished,
            "disconnects": self.disconnects,
            "in_flight": self.in_flight,
            "faults": dict(self.faults),
            "last_requests": [r._asdict() for r in self.last_requests],
        }


@dataclass(slots=True)
class Call:
    """One request as a vendor handler sees it.

    ``fault`` is the fault rolled for *this* request (None: serve it healthily); pass the
    Call back to ``json_response``/``stream_response`` so stream faults and fault headers
    are applied. ``state`` is the handler's, for the vendor's renderers (the Responses
    API's in-stream failure event names the response being streamed).
    """

    request: web.Request
    body: dict[str, Any]
    fault: Fault | None
    state: Any = None


CallHandler = Callable[[Call], Awaitable[web.StreamResponse]]


class Route(NamedTuple):
    """A vendor endpoint: method, path and the handler that serves a healthy request."""

    method: str
    path: str
    handler: CallHandler


_SSE_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
}


def sse_data(payload: Any) -> bytes:
    """An unnamed SSE event (``data: {...}``): OpenAI chat, Gemini."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_event(name: str, payload: Any) -> bytes:
    """A named SSE event (``event: name`` + ``data: {...}``): Anthropic, the Responses API."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


_FILLER_WORDS: tuple[str, ...] = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit",
    "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et",
)  # fmt: skip


def content_pieces(name: str, chunks: int) -> tuple[str, ...]:
    """The deterministic answer, split into ``chunks`` stream pieces (at least one).

    ``"Hello from {name}"`` first, so a test can tell which vendor answered; then filler
    words, each a separate piece, so chunk counts are exact.
    """
    pieces = [f"Hello from {name}"]
    pieces.extend(" " + _FILLER_WORDS[i % len(_FILLER_WORDS)] for i in range(max(1, chunks) - 1))
    return tuple(pieces)


def text_chars(value: Any) -> int:
    """Characters of prompt text in a JSON value, for a cheap token estimate.

    Strings count their length; lists sum their items; objects count only their
    ``content``/``text`` members (message and content-part shapes); integers count as one
    token's worth (4 chars: token-id prompts). Everything else is free.
    """
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(text_chars(v) for v in value)
    if isinstance(value, dict):
        return text_chars(value.get("content")) + text_chars(value.get("text"))
    if isinstance(value, int) and not isinstance(value, bool):
        return 4
    return 0


def estimate_tokens(chars: int) -> int:
    """~4 characters per token, at least 1: deterministic, so tests can predict it."""
    return max(1, chars // 4)


#: Vendors' 502s come from their edge (e.g. Cloudflare) as HTML, not JSON: the proxy must cope.
BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def seconds_text(value: float) -> str:
    """``2.0`` -> ``"2"``, ``1.5`` -> ``"1.5"`` (header/message friendly)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def bad_gateway(fault: Fault, headers: Mapping[str, str] | None = None) -> web.Response:
    """The HTML 502 every vendor's edge sends (`bad_gateway` with no body override)."""
    return web.Response(
        status=fault.status or 502, body=BAD_GATEWAY_HTML, headers=headers, content_type="text/html"
    )


def overridden_body(fault: Fault) -> bytes | None:
    """The fault's own body (bytes as-is, a dict as JSON), or None to render the vendor's."""
    if isinstance(fault.body, bytes):
        return fault.body
    return orjson.dumps(fault.body) if fault.body is not None else None


class FakeVendor(abc.ABC):
    """A fake vendor served by aiohttp on a real socket, with switchable faults.

    Lifecycle: ``port = await fake.start(host, port=0)`` (0 picks a free port, kept for
    rebinds), ``fake.base_url``, ``await fake.stop()``; or ``async with Fake(...) as fake``.

    Faults: ``fake.set_fault(fault)`` is synchronous and applies from the next request;
    a change of listener state (``refuse`` on/off) is scheduled in the background, so use
    ``await fake.apply_fault(fault)`` / ``await fake.unrefuse()`` when the test must know
    the socket is closed/rebound when the call returns. ``clear_fault()`` = ``set_fault(None)``.

    Subclasses provide ``llm_routes`` (faultable, counted, recorded), ``probe_routes``
    (``GET`` model lists: counted apart, no tokens, no stream faults), and the renderers:
    ``error_response``, ``auth_error_response``, ``bad_request_response``,
    ``stream_error_event``; they build answers with ``json_response``/``stream_response``.
    """

    #: Short vendor-type name (``openai``, ``anthropic``...), for logs and ``/_fake/stats``.
    vendor_type: ClassVar[str] = "generic"
    #: Path prefix clients put in their base URL (OpenAI: ``/v1``; Anthropic: empty).
    base_path: ClassVar[str] = ""
    #: Models listed when none are configured.
    default_models: ClassVar[tuple[str, ...]] = ("fake-model",)

    def __init__(
        self,
        name: str = "fake",
        *,
        models: Iterable[str] | None = None,
        chunks: int = 5,
        chunk_delay_s: float = 0.0,
        api_key: str | None = None,
        cached_tokens: int = 0,
        fault: Fault | None = None,
        seed: int = 0,
        max_recorded: int = 64,
    ) -> None:
        self.name = name
        self.models: tuple[str, ...] = tuple(models) if models is not None else self.default_models
        self._chunks = max(1, chunks)
        self.pieces: tuple[str, ...] = content_pieces(name, self._chunks)
        #: Pause between stream events (not before the first), for TTFB/latency tests.
        self.chunk_delay_s = chunk_delay_s
        #: Bearer key requests must carry, or None to accept anything.
        self.api_key = api_key
        #: ``cached_tokens`` reported per chat answer (``prompt_tokens`` is raised to match).
        self.cached_tokens = cached_tokens
        self.stats = FakeStats(last_requests=deque(maxlen=max_recorded))
        #: Called as each LLM request arrives, before any fault (the chaos suite samples the
        #: proxy's view of this vendor at that instant).
        self.on_request: Callable[[], None] | None = None
        self._fault: Fault | None = fault
        self._rng = random.Random(seed)
        self._id_prefix = os.urandom(6).hex()
        self._seq = 0
        self._host = "127.0.0.1"
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._listener_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unrefuse_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Bumped whenever the fake itself cuts connections (refuse, stop), so the handlers
        # it cancels are not counted as client disconnects.
        self._cut_generation = 0

    # ------------------------------------------------------------------ subclass API

    @abc.abstractmethod
    def llm_routes(self) -> Sequence[Route]:
        """LLM endpoints: every fault applies, requests are counted and recorded."""

    def probe_routes(self) -> Sequence[Route]:
        """Model-list endpoints (health probes): status/stall/black_hole/refuse apply,
        stream faults don't; counted in ``model_list_requests``; handlers get ``body={}``."""
        return ()

    @abc.abstractmethod
    def error_response(self, call: Call, fault: Fault) -> web.Response:
        """Render ``fault`` (``fault.is_error`` is true) in the vendor's wire format."""

    @abc.abstractmethod
    def auth_error_response(self, call: Call) -> web.Response:
        """The vendor's answer to a missing or wrong API key."""

    @abc.abstractmethod
    def bad_request_response(self, call: Call, message: str | None) -> web.Response:
        """The vendor's 400 for an unparsable body (``message`` None) or a bad field."""

    @abc.abstractmethod
    def stream_error_event(self, call: Call, fault: Fault, sent: int) -> bytes:
        """A framed in-stream error event (``fault.body``, if set, is its payload), sent
        after ``sent`` events (the Responses API numbers its events)."""

    def rejected_response(self, call: Call, rejected: Rejected) -> web.Response:
        """The vendor's answer to a ``Rejected`` request; by default its 400 for a bad field."""
        return self.bad_request_response(call, rejected.message)

    def is_authorized(self, request: web.Request) -> bool:
        """Default: ``Authorization: Bearer <api_key>``; override for other header schemes."""
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    # ------------------------------------------------------------------ properties

    @property
    def chunks(self) -> int:
        """Pieces per answer (= completion tokens); settable at run time."""
        return self._chunks

    @chunks.setter
    def chunks(self, value: int) -> None:
        self._chunks = max(1, value)
        self.pieces = content_pieces(self.name, self._chunks)

    @property
    def fault(self) -> Fault | None:
        """The fault currently set (None: healthy)."""
        return self._fault

    @property
    def port(self) -> int:
        """The bound port (0 before ``start``); stable across refuse/unrefuse."""
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def listening(self) -> bool:
        """True while the listening socket is open (False before start and while refusing)."""
        return self._site is not None

    @property
    def origin(self) -> str:
        """``http://host:port`` (a wildcard bind address is shown as loopback)."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        if ":" in host:
            host = "[::1]" if host == "::" else f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """What a client SDK takes as ``base_url``."""
        return self.origin + self.base_path

    def next_id(self) -> str:
        """A unique, cheap response id suffix (no uuid per request)."""
        self._seq += 1
        return f"{self._id_prefix}{self._seq:06d}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind and serve; returns the actual port. A ``refuse`` fault set before start
        still binds first (to learn the port), then closes the listener."""
        if self._runner is not None:
            raise RuntimeError(f"fake vendor {self.name!r} already started")
        self._stopping = False
        app = web.Application()
        for route in self.llm_routes():
            app.router.add_route(route.method, route.path, self._wrap_llm(route.handler))
        for route in self.probe_routes():
            app.router.add_route(route.method, route.path, self._wrap_probe(route.handler))
        app.router.add_post("/_fake/fault", self._control_fault)
        app.router.add_get("/_fake/stats", self._control_stats)
        app.router.add_post("/_fake/reset", self._control_reset)
        # handler_cancellation: a client that goes away cancels its handler at once, which
        # is how sleeps (latency, stall, black hole) notice disconnects and end.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        self._host, self._port = host, site.port
        if self._fault is not None and self._fault.refuse:
            await self._sync_listener()
            self._arm_unrefuse_timer(self._fault)
        return self._port

    async def stop(self) -> None:
        """Close the listener and every connection, cancel background tasks. Idempotent."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        runner = self._runner
        if runner is not None:
            # Cut every connection first: their handlers are cancelled at once instead of
            # the runner waiting out its shutdown timeout for black-holed requests.
            self._cut_connections(spare=None)
            self._runner, self._site = None, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ faults & stats

    def set_fault(self, fault: Fault | None) -> None:
        """Set (None: clear) the fault for subsequent requests.

        A listener change (``refuse`` on/off) happens in a background task; await
        ``apply_fault`` instead when the caller needs it done on return.
        """
        self._set(fault)
        if self._runner is not None and self.listening == self._refusing:
            self._spawn(self._sync_listener())

    async def apply_fault(self, fault: Fault | None) -> None:
        """``set_fault`` then wait until the listener matches it (closed for ``refuse``,
        rebound on the same port otherwise): deterministic for tests."""
        self.set_fault(fault)
        await self._sync_listener()

    def clear_fault(self) -> None:
        """Back to healthy (a refusing fake rebinds in the background)."""
        self.set_fault(None)

    async def unrefuse(self) -> None:
        """Clear the fault and wait until the same port accepts connections again."""
        await self.apply_fault(None)

    def reset_stats(self) -> None:
        """Zero the counters and recorded requests (``in_flight`` is live state: kept)."""
        self.stats.reset()

    @property
    def _refusing(self) -> bool:
        return self._fault is not None and self._fault.refuse

    def _set(self, fault: Fault | None) -> None:
        self._fault = None if fault == _NO_FAULT else fault
        self._arm_unrefuse_timer(self._fault)

    def _roll(self) -> Fault | None:
        fault = self._fault
        if fault is None or (fault.rate < 1.0 and self._rng.random() >= fault.rate):
            return None
        return fault

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _arm_unrefuse_timer(self, fault: Fault | None) -> None:
        timer, self._unrefuse_task = self._unrefuse_task, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        if self._runner is None or fault is None or not fault.refuse or fault.refuse_for_s is None:
            return

        async def unrefuse_later(delay: float) -> None:
            await asyncio.sleep(delay)
            if self._fault is fault:
                await self.apply_fault(None)

        task = asyncio.get_running_loop().create_task(unrefuse_later(fault.refuse_for_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._unrefuse_task = task

    async def _sync_listener(self, spare: RequestHandler | None = None) -> None:
        """Make the socket match the fault: closed while refusing, else bound to our port."""
        async with self._listener_lock:
            runner = self._runner
            if runner is None or self._stopping:
                return
            refuse = self._refusing
            if refuse and self._site is not None:
                site, self._site = self._site, None
                await site.stop()
                # A dead host also kills established connections; without this, a pooled
                # keep-alive connection would keep reaching a "refusing" vendor.
                if self._cut_connections(spare):
                    # Let the loop send the FINs and a same-loop client (tests) read them, so
                    # its next request opens a new connection (ECONNREFUSED) instead of
                    # racing on a stale pooled one ("Server disconnected").
                    for _ in range(_CUT_SETTLE_ITERATIONS):
                        await asyncio.sleep(0)
            elif not refuse and self._site is None:
                site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
                await site.start()
                self._site = site

    def _cut_connections(self, spare: RequestHandler | None) -> int:
        """Close every server connection but ``spare``; returns how many were closed."""
        runner = self._runner
        server = runner.server if runner is not None else None
        if server is None:
            return 0
        self._cut_generation += 1
        cut = 0
        for conn in server.connections:
            if conn is not spare:
                conn.force_close()
                cut += 1
        return cut

    # ------------------------------------------------------------------ hot path

    def _wrap_llm(
        self, handler: CallHandler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            stats.requests[request.path] += 1
            stats.in_flight += 1
            if self.on_request is not None:
                self.on_request()
            generation = self._cut_generation
            try:
                raw = await request.read()
                try:
                    body: Any = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    body = None
                method = request.method
                stats.last_requests.append(
                    RecordedRequest(
                        request.path,
                        {k.lower(): v for k, v in request.headers.items()},
                        body,
                        method,
                    )
                )
                call = Call(request, body if isinstance(body, dict) else {}, None)
                if self.api_key is not None and not self.is_authorized(request):
                    return self.auth_error_response(call)
                early = await self._before_response(call, stats)
                if early is not None:
                    return early
                # GET/DELETE (stored responses) carry no body: that is not a malformed one.
                if not isinstance(body, dict) and (raw or method not in _BODYLESS):
                    return self.bad_request_response(call, None)
                try:
                    return await handler(call)
                except Rejected as rejected:
                    return self.rejected_response(call, rejected)
            except (asyncio.CancelledError, ConnectionResetError):
                if not self._stopping and generation == self._cut_generation:
                    stats.disconnects += 1
                raise
            finally:
                stats.in_flight -= 1

        return serve

    def _wrap_probe(
        self, handler: CallHandler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            stats.model_list_requests += 1
            call = Call(request, {}, None)
            if self.api_key is not None and not self.is_authorized(request):
                return self.auth_error_response(call)
            early = await self._before_response(call, stats)
            if early is not None:
                return early
            call.fault = None  # stream-only / after-header faults don't apply to probes
            return await handler(call)

        return serve

    async def _before_response(self, call: Call, stats: FakeStats) -> web.StreamResponse | None:
        """Latency, black hole, stall and error faults; sets ``call.fault`` if rolled."""
        current = self._fault
        if current is not None and current.latency_s:
            await asyncio.sleep(current.latency_s)
        fault = self._roll()
        if fault is None:
            return None
        call.fault = fault
        if fault.black_hole:
            stats.faults["black_hole"] += 1
            await asyncio.Event().wait()  # ends only by cancellation: client gone or stop()
        if fault.stall_s:
            stats.faults["stall"] += 1
            await asyncio.sleep(fault.stall_s)
        if fault.is_error:
            stats.faults["error"] += 1
            resp = self.error_response(call, fault)
            if fault.headers:
                resp.headers.update(fault.headers)
            return resp
        return None

    def _count_usage(self, usage: Usage | None) -> None:
        if usage is not None:
            tokens = self.stats.tokens
            tokens["prompt"] += usage.prompt
            tokens["completion"] += usage.completion
            tokens["cached"] += usage.cached

    async def json_response(
        self, call: Call, payload: Any, usage: Usage | None = None, status: int = 200
    ) -> web.StreamResponse:
        """Serialize ``payload`` as the answer; honours ``stall_after_headers_s`` and
        fault headers; counts ``usage`` as served."""
        data = orjson.dumps(payload)
        fault = call.fault
        if fault is not None and fault.stall_after_headers_s:
            self.stats.faults["stall_after_headers"] += 1
            resp = web.StreamResponse(status=status, headers=fault.headers)
            resp.content_type = "application/json"
            resp.content_length = len(data)
            await resp.prepare(call.request)  # headers go out now; the body waits
            await asyncio.sleep(fault.stall_after_headers_s)
            await resp.write(data)
            self._count_usage(usage)
            return resp
        if fault is not None and fault.drip_s:
            self.stats.faults["drip"] += 1
            resp = web.StreamResponse(status=status, headers=fault.headers)
            resp.content_type = "application/json"
            resp.content_length = len(data)
            await resp.prepare(call.request)
            await self._drip(resp, data, fault.drip_s)
            self._count_usage(usage)
            return resp
        out = web.Response(body=data, status=status, content_type="application/json")
        if fault is not None and fault.headers:
            out.headers.update(fault.headers)
        self._count_usage(usage)
        return out

    async def stream_response(
        self,
        call: Call,
        events: Sequence[bytes],
        *,
        trailer: bytes | None,
        usage: Usage | None,
    ) -> web.StreamResponse:
        """Send framed SSE ``events`` one write each, then ``trailer`` (e.g. ``[DONE]``).

        Applies the stream faults: stall after headers, drop after N events (connection
        closed mid chunked body, so the client sees a payload error), error event after N
        events (clean end, no trailer). ``usage`` is counted only if the stream completes.
        """
        fault = call.fault
        headers = dict(_SSE_HEADERS)
        if fault is not None and fault.headers:
            headers.update(fault.headers)
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(call.request)
        drop_at = error_at = truncate_at = None
        drip = 0.0
        if fault is not None:
            drop_at, error_at = fault.drop_after_chunks, fault.error_event_after_chunks
            truncate_at, drip = fault.truncate_after_chunks, fault.drip_s
            if drip:
                self.stats.faults["drip"] += 1
            if fault.stall_after_headers_s:
                self.stats.faults["stall_after_headers"] += 1
                await asyncio.sleep(fault.stall_after_headers_s)
        delay = self.chunk_delay_s
        end_at = fault.stream_end(len(events)) if fault is not None else None
        for i in range(len(events) + 1):
            if i == end_at:
                self.stats.tokens_unfinished += i + (usage.prompt if usage is not None else 0)
            if drop_at is not None and i >= drop_at:
                self.stats.faults["drop"] += 1
                transport = call.request.transport
                if transport is not None:
                    transport.close()  # flushes the N events, then FIN without the last chunk
                return resp
            if error_at is not None and i >= error_at:
                assert fault is not None
                self.stats.faults["error_event"] += 1
                await resp.write(self.stream_error_event(call, fault, i))
                await resp.write_eof()
                return resp
            if truncate_at is not None and i >= truncate_at:
                self.stats.faults["truncate"] += 1
                await resp.write_eof()
                return resp
            if i == len(events):
                break
            if i and delay:
                await asyncio.sleep(delay)
            if drip:
                await self._drip(resp, events[i], drip)
            else:
                await resp.write(events[i])
        if trailer is not None:
            await resp.write(trailer)
        await resp.write_eof()
        self._count_usage(usage)
        return resp

    @staticmethod
    async def _drip(resp: web.StreamResponse, data: bytes, interval_s: float) -> None:
        for i in range(len(data)):
            if i:
                await asyncio.sleep(interval_s)
            await resp.write(data[i : i + 1])

    # ------------------------------------------------------------------ control endpoints

    async def _control_fault(self, request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read())
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object")
            fault = Fault.from_dict(data)
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return web.json_response({"error": str(exc)}, status=400, dumps=_dumps)
        self._set(fault)
        resp = web.Response(
            body=orjson.dumps({"fault": None if fault is None else fault.to_dict()}),
            content_type="application/json",
        )
        if self._refusing:
            # Close the listener and the other connections now; this response still goes
            # out on its own connection, which closes after it.
            resp.force_close()
        await self._sync_listener(spare=request.protocol)
        return resp

    async def _control_stats(self, request: web.Request) -> web.Response:
        data = self.stats.to_dict()
        data["name"] = self.name
        data["vendor_type"] = self.vendor_type
        data["fault"] = None if self._fault is None else self._fault.to_dict()
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.Response(body=b'{"reset":true}', content_type="application/json")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
