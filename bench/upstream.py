"""A lean fake LLM upstream for the benchmark: raw asyncio Protocol, HTTP/1.1 keep-alive.

It must never be the bottleneck, so every answer is pre-built bytes and parsing is the
least HTTP/1.1 needs (request line, Content-Length or chunked body). The proxy fakes in
proxy/fakes/ are richer (fault injection over HTTP, token estimates) and much slower.

The first path segment picks the behaviour, so one process serves every deployment of
every target and counts hits per deployment (GET /_stats):

    /ok.../v1/chat/completions          200 JSON, or 20-chunk SSE when "stream": true
                                        (the whole stream in one burst of writes)
    /paced.../v1/chat/completions       the same, but a stream is paced like a vendor's:
                                        head and first event at once, then one write per
                                        event, `--stream-gap-ms` apart (default 1 ms)
    /long-<gap ms>-<events>.../v1/chat/completions
                                        a long paced stream: <events> events (the head
                                        with the first), <gap ms> apart, then [DONE]; e.g.
                                        /long-2000-31 lasts 60 s, /long-20-1500 is 50
                                        events/s for 30 s
    /quota.../v1/chat/completions       429 insufficient_quota (OpenAI's body)
    /flaky.../v1/chat/completions       500 for half the requests (seeded, reproducible)
    /budget.../v1/chat/completions      a vendor account with a rate limit: `BUDGET` requests
                                        per window, each prefix its own account, reported in
                                        OpenAI's x-ratelimit-* headers on every answer; over
                                        it, OpenAI's 429 (counted as "<prefix>#429"). Answers
                                        come `BUDGET_LATENCY_S` late, like a model's.
    /sibling.../v1/chat/completions     the same latency, no budget: the budgeted one's sibling
    /<any>.../v1/messages               the same in Anthropic's Messages format
    /<any>.../v1/responses              the same in the Responses API's format (its stream:
                                        created, in_progress, the message item's events
                                        with 20 text deltas, completed)
    /<any>.../v1/traces                 200 to an OTLP/HTTP export (a tracing collector that
                                        takes every batch and keeps nothing)
    GET /_stats                          {"prefix": hits, ...};  POST /_reset clears it

A paced stream is a chain of `loop.call_later` timers on its connection (no task per
stream, no buffer: each event is written as its timer fires); the connection answers nothing else until its stream is done (HTTP/1.1 order),
and a lost connection cancels the chain. Events leave `gap` apart plus the loop's wake-up
latency (~0.1 ms), never less than `gap / 2` apart.

Run: python -m bench.upstream --port 9100 [--stream-gap-ms 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import time
import zlib
from collections import Counter

import orjson

from proxy.fakes.budget import Budget, BudgetMeter
from proxy.fdlimit import raise_open_files_limit

__all__ = [
    "BUDGET",
    "BUDGET_LATENCY_S",
    "STREAM_CHUNKS",
    "STREAM_EVENTS",
    "STREAM_GAP_MS",
    "Upstream",
    "UpstreamProtocol",
    "serve",
]

STREAM_CHUNKS = 20
STREAM_GAP_MS = 1.0  # a very fast model: 1,000 tokens/s
BUDGET = Budget(requests=40, window_s=2.0)  # the /budget... accounts' rate limit: 20 requests/s
BUDGET_LATENCY_S = 0.15  # /budget... and /sibling... answers take this long
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_WORDS = [f"w{i} " for i in range(STREAM_CHUNKS)]


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"

_OPENAI_JSON = _response(
    "200 OK",
    b"application/json",
    orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! How can I help today?"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23},
        }
    ),
)


def _openai_event(delta: dict[str, object], finish: str | None) -> bytes:
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


# 20 events with content, the last one carrying finish_reason, then [DONE].
_OPENAI_SSE = (
    [_openai_event({"role": "assistant", "content": _WORDS[0]}, None)]
    + [_openai_event({"content": w}, None) for w in _WORDS[1:-1]]
    + [_openai_event({"content": _WORDS[-1]}, "stop"), b"data: [DONE]\n\n"]
)

_OPENAI_QUOTA = _response(
    "429 Too Many Requests",
    b"application/json",
    orjson.dumps(
        {
            "error": {
                "message": "You exceeded your current quota, please check your plan and billing "
                "details. For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        }
    ),
)
_OPENAI_500 = _response(
    "500 Internal Server Error",
    b"application/json",
    orjson.dumps(
        {
            "error": {
                "message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    ),
)

_ANTHROPIC_JSON = _response(
    "200 OK",
    b"application/json",
    orjson.dumps(
        {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hello! How can I help today?"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 14, "output_tokens": 9},
        }
    ),
)


def _anthropic_event(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


# message_start, content_block_start, 20 deltas (the content), block stop, delta, stop.
_ANTHROPIC_SSE = (
    [
        _anthropic_event(
            "message_start",
            {
                "message": {
                    "id": "msg_bench",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 14, "output_tokens": 1},
                }
            },
        ),
        _anthropic_event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        ),
    ]
    + [
        _anthropic_event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w}}
        )
        for w in _WORDS
    ]
    + [
        _anthropic_event("content_block_stop", {"index": 0}),
        _anthropic_event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": STREAM_CHUNKS},
            },
        ),
        _anthropic_event("message_stop", {}),
    ]
)
_ANTHROPIC_CREDIT = _response(
    "400 Bad Request",
    b"application/json",
    orjson.dumps(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "Your credit balance is too low to access the Anthropic API. Please "
                "go to Plans & Billing to upgrade or purchase credits.",
            },
        }
    ),
)
_ANTHROPIC_500 = _response(
    "500 Internal Server Error",
    b"application/json",
    orjson.dumps({"type": "error", "error": {"type": "api_error", "message": "Internal error"}}),
)


_RESPONSE: dict[str, object] = {
    "id": "resp_bench",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": 32,
    "model": "gpt-4o-mini",
    "output": [
        {
            "id": "msg_bench",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "Hello! How can I help today?",
                    "annotations": [],
                    "logprobs": [],
                }
            ],
        }
    ],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": {
        "input_tokens": 14,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 23,
    },
    "user": None,
    "metadata": {},
}
_RESPONSES_JSON = _response("200 OK", b"application/json", orjson.dumps(_RESPONSE))


def _responses_events() -> list[bytes]:
    """The event sequence of a one-message response whose text comes in 20 deltas."""
    where = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    text = "".join(_WORDS)
    started = {**_RESPONSE, "status": "in_progress", "output": [], "usage": None}
    message = {**_RESPONSE["output"][0], "content": [{**part, "text": text}]}  # type: ignore[index]
    events: list[tuple[str, dict[str, object]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**message, "status": "in_progress", "content": []}},
        ),
        ("response.content_part.added", {**where, "part": part}),
        *[("response.output_text.delta", {**where, "delta": w, "logprobs": []}) for w in _WORDS],
        ("response.output_text.done", {**where, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": {**part, "text": text}}),
        ("response.output_item.done", {"output_index": 0, "item": message}),
        (
            "response.completed",
            {"response": {**_RESPONSE, "output": [message]}},
        ),
    ]
    return [
        b"event: " + kind.encode() + b"\ndata: "
        + orjson.dumps({"type": kind, "sequence_number": n, **data}) + b"\n\n"
        for n, (kind, data) in enumerate(events)
    ]  # fmt: skip


_RESPONSES_SSE = _responses_events()
# Events per stream (a proxy's relay costs about the same per event, whatever the API).
STREAM_EVENTS = {"chat": len(_OPENAI_SSE), "responses": len(_RESPONSES_SSE)}


def _stream_bytes(events: list[bytes]) -> list[bytes]:
    return [_SSE_HEAD] + [_chunk(e) for e in events] + [_LAST_CHUNK]


def _paced_writes(events: list[bytes]) -> tuple[bytes, ...]:
    """One write per event: the head rides with the first, the terminator with the last."""
    chunks = [_chunk(e) for e in events]
    return (_SSE_HEAD + chunks[0], *chunks[1:-1], chunks[-1] + _LAST_CHUNK)


# (format) -> (json answer, burst stream writes, paced stream writes, quota answer, 500 answer)
_ANSWERS = {
    "openai": (
        _OPENAI_JSON,
        _stream_bytes(_OPENAI_SSE),
        _paced_writes(_OPENAI_SSE),
        _OPENAI_QUOTA,
        _OPENAI_500,
    ),
    "anthropic": (
        _ANTHROPIC_JSON,
        _stream_bytes(_ANTHROPIC_SSE),
        _paced_writes(_ANTHROPIC_SSE),
        _ANTHROPIC_CREDIT,
        _ANTHROPIC_500,
    ),
    "responses": (
        _RESPONSES_JSON,
        _stream_bytes(_RESPONSES_SSE),
        _paced_writes(_RESPONSES_SSE),
        _OPENAI_QUOTA,
        _OPENAI_500,
    ),
}


def _long_writes(gap_ms: int, events: int) -> tuple[bytes, ...]:
    """The writes of a long paced stream (OpenAI format): `events` content events, the last
    with finish_reason, [DONE] and the terminator."""
    words = [f"t{i} " for i in range(events)]
    sse = (
        [_openai_event({"role": "assistant", "content": words[0]}, None)]
        + [_openai_event({"content": w}, None) for w in words[1:-1]]
        + [_openai_event({"content": words[-1]}, "stop")]
    )
    chunks = [_chunk(e) for e in sse]
    done = _chunk(b"data: [DONE]\n\n") + _LAST_CHUNK
    return (_SSE_HEAD + chunks[0], *chunks[1:-1], chunks[-1] + done)


_LONG_RE = re.compile(r"long-(\d+)-(\d+)")
_NOT_FOUND = _response("404 Not Found", b"application/json", b'{"error":"no such path"}')
_TRACES_TAKEN = _response("200 OK", b"application/x-protobuf", b"")  # an empty export response

_OPENAI_RATE_LIMITED = orjson.dumps(
    {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-bench on requests "
            "per min (RPM): Limit 40, Used 40, Requested 1.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
)


def _with_headers(answer: bytes, headers: dict[str, str]) -> bytes:
    """A pre-built answer with more headers after its status line."""
    line_end = answer.index(b"\r\n") + 2
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    return answer[:line_end] + extra + answer[line_end:]


class Upstream:
    """Per-process state: hit counters, one seeded coin per flaky prefix, the stream pace."""

    def __init__(self, seed: int = 42, stream_gap_s: float = STREAM_GAP_MS / 1000) -> None:
        self.hits: Counter[str] = Counter()
        self.stream_gap_s = stream_gap_s
        self._seed = seed
        self._coins: dict[str, random.Random] = {}
        self._budgets: dict[str, BudgetMeter] = {}
        self._long: dict[str, tuple[float, tuple[bytes, ...]] | None] = {}

    def budgeted(self, prefix: str, answer: bytes) -> bytes:
        """`answer` if the prefix's account has budget left, else OpenAI's 429; either with
        the account's x-ratelimit-* headers."""
        meter = self._budgets.get(prefix)
        if meter is None:
            meter = self._budgets[prefix] = BudgetMeter(BUDGET, "openai")
        retry = meter.admit(0)
        headers = meter.headers()
        if retry is None:
            return _with_headers(answer, headers)
        self.hits[prefix + "#429"] += 1
        headers["retry-after"] = f"{retry:.3f}"
        return _with_headers(
            _response("429 Too Many Requests", b"application/json", _OPENAI_RATE_LIMITED), headers
        )

    def long_stream(self, prefix: str) -> tuple[float, tuple[bytes, ...]] | None:
        """(gap in seconds, writes) of a /long-<gap ms>-<events> prefix, built once."""
        if prefix not in self._long:
            m = _LONG_RE.match(prefix)
            gap_ms, events = (int(m[1]), int(m[2])) if m else (0, 0)
            self._long[prefix] = (
                (gap_ms / 1000, _long_writes(gap_ms, events)) if gap_ms and events >= 2 else None
            )
        return self._long[prefix]

    def flip(self, prefix: str) -> bool:
        coin = self._coins.get(prefix)
        if coin is None:
            coin = self._coins[prefix] = random.Random(zlib.crc32(prefix.encode()) ^ self._seed)
        return coin.random() < 0.5

    def reset(self) -> None:
        self.hits.clear()
        self._coins.clear()
        self._budgets.clear()


class UpstreamProtocol(asyncio.Protocol):
    """One client connection. Requests are handled in order as they complete in the buffer."""

    __slots__ = ("_buf", "_last_write", "_loop", "_pacing", "_state", "_transport")

    def __init__(self, state: Upstream) -> None:
        self._state = state
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        # The timer of the paced stream being written; requests wait in _buf meanwhile.
        self._pacing: asyncio.TimerHandle | None = None
        self._last_write = 0.0  # time.monotonic() of the paced stream's last write

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pacing is not None:
            self._pacing.cancel()
            self._pacing = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while self._pacing is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            lower = head.lower()
            start = end + 4
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(lower[i + 17 : j if j >= 0 else len(lower)])
                if len(buf) < start + length:
                    break
                body = buf[start : start + length]
                buf = buf[start + length :]
            elif b"\r\ntransfer-encoding: chunked" in lower:
                decoded = _dechunk(buf, start)
                if decoded is None:
                    break
                body, consumed = decoded
                buf = buf[consumed:]
            else:
                body = b""
                buf = buf[start:]
            self._handle(head, body)
        self._buf = buf

    def _handle(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        line_end = head.find(b"\r\n")
        method, _, rest = head[: line_end if line_end >= 0 else len(head)].partition(b" ")
        path = rest.partition(b" ")[0].decode("latin-1").partition("?")[0]
        if method == b"GET" and path == "/_stats":
            transport.write(
                _response("200 OK", b"application/json", orjson.dumps(self._state.hits))
            )
            return
        if method == b"POST" and path == "/_reset":
            self._state.reset()
            transport.write(_response("200 OK", b"application/json", b"{}"))
            return
        prefix = path[1:].partition("/")[0]
        if path.endswith("/chat/completions"):
            fmt = "openai"
        elif path.endswith("/messages"):
            fmt = "anthropic"
        elif path.endswith("/responses"):
            fmt = "responses"
        elif method == b"POST" and path.endswith("/v1/traces"):
            self._state.hits[prefix] += 1
            transport.write(_TRACES_TAKEN)
            return
        else:
            transport.write(_NOT_FOUND)
            return
        self._state.hits[prefix] += 1
        answer_json, answer_stream, answer_paced, quota, error = _ANSWERS[fmt]
        if prefix.startswith(("budget", "sibling")):
            answer = answer_json
            if prefix.startswith("budget"):
                answer = self._state.budgeted(prefix, answer)
            # Later, like a model's answer; this connection answers nothing else meanwhile.
            self._pacing = self._loop.call_later(BUDGET_LATENCY_S, self._late, answer)
        elif prefix.startswith("quota"):
            transport.write(quota)
        elif prefix.startswith("flaky") and self._state.flip(prefix):
            transport.write(error)
        elif _STREAM_RE.search(body):
            long = self._state.long_stream(prefix) if fmt == "openai" else None
            if long is not None:
                self._pace(long[1], 0, long[0])
            elif prefix.startswith("paced"):
                self._pace(answer_paced, 0, self._state.stream_gap_s)
            else:
                for piece in answer_stream:
                    transport.write(piece)
        else:
            transport.write(answer_json)

    def _late(self, answer: bytes) -> None:
        transport = self._transport
        self._pacing = None
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        if self._buf:  # a request that arrived meanwhile
            self.data_received(b"")

    def _pace(self, writes: tuple[bytes, ...], i: int, gap: float) -> None:
        """Write event `i` of a paced stream and arm the timer for the next one, `gap` s on.

        uvloop's timers count whole milliseconds from its clock's last tick, so a timer
        armed late in a millisecond can fire a few microseconds later, when the loop wakes
        for other work. An event due that early waits for the next tick instead: events
        never leave less than half a gap apart (without that the upstream itself would
        bunch events, a few percent of them at concurrency 16).
        """
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            self._pacing = None
            return
        loop = self._loop
        now = time.monotonic()
        early = gap - (now - self._last_write)
        if i and early > gap / 2:
            self._pacing = loop.call_later(max(early, 0.001), self._pace, writes, i, gap)
            return
        transport.write(writes[i])
        self._last_write = now
        i += 1
        if i < len(writes):
            self._pacing = loop.call_later(gap, self._pace, writes, i, gap)
            return
        self._pacing = None
        if self._buf:  # a request that arrived during the stream
            self.data_received(b"")


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked request body starting at `pos`: (body, end offset), or None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos : pos + size])
        pos += size + 2


async def serve(
    host: str, port: int, *, stream_gap_s: float = STREAM_GAP_MS / 1000
) -> asyncio.Server:
    state = Upstream(stream_gap_s=stream_gap_s)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: UpstreamProtocol(state), host, port, backlog=1024)


def main() -> None:
    parser = argparse.ArgumentParser(description="lean fake LLM upstream for the benchmark")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument(
        "--stream-gap-ms",
        type=float,
        default=STREAM_GAP_MS,
        help="time between the events of a paced stream (/paced... routes)",
    )
    args = parser.parse_args()
    if not args.stream_gap_ms > 0:
        parser.error("--stream-gap-ms must be more than 0 (the /ok... routes stream in a burst)")

    raise_open_files_limit()  # a socket per stream: 5,000 streams in the long scenarios

    async def run() -> None:
        server = await serve(args.host, args.port, stream_gap_s=args.stream_gap_ms / 1000)
        print(
            f"bench upstream on http://{args.host}:{args.port} "
            f"(paced streams: an event every {args.stream_gap_ms:g} ms)",
            flush=True,
        )
        async with server:
            await server.serve_forever()

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(run())


if __name__ == "__main__":
    main()
