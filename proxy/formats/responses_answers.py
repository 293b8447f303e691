"""Anthropic Messages and OpenAI chat answers -> Responses API answers, JSON and streams.

One `ResponseBuilder` builds the response object item by item; when streaming it also
writes the event sequence the SDKs' accumulators rebuild that object from
(`openai.lib.streaming.responses`): `response.created` first, one response id on every
lifecycle event, every `output_item.added` matched by its `output_item.done` (same `id`,
same `call_id` for function calls), an item's content events only between the two, text
deltas with a `logprobs` list. JSON answers go through the same builder without events, so
a streamed answer and its JSON twin carry the same items.

Item mapping: text -> one `message` item (consecutive text blocks share it; their citations
become `url_citation` annotations); thinking -> a `reasoning` item whose
`encrypted_content` carries the thinking blocks (Anthropic needs them back with tool
results; `proxy.formats.responses.unpack_thinking`), with the thinking text as its summary
when the request asked for one; tool calls -> `function_call` items under the client's
names (namespaced tools restored); Anthropic's server-side web search ->
`web_search_call` items. Stop reasons map to `completed` or `incomplete`
(`max_output_tokens`, `content_filter`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.formats.responses import SUMMARY_MODES, Toolset, pack_thinking
from proxy.formats.sse import SSEParser, sse_event
from proxy.formats.translation import Translation

__all__ = [
    "ChatToResponsesStream",
    "MessagesToResponsesStream",
    "ResponseBuilder",
    "chat_to_response",
    "message_to_response",
    "response_id",
]

# Stop reasons -> (status, incomplete_details.reason).
_ANTHROPIC_STOP: Mapping[str, tuple[str, str | None]] = {
    "end_turn": ("completed", None),
    "stop_sequence": ("completed", None),
    "tool_use": ("completed", None),
    "pause_turn": ("completed", None),
    "max_tokens": ("incomplete", "max_output_tokens"),
    "model_context_window_exceeded": ("incomplete", "max_output_tokens"),
    "refusal": ("incomplete", "content_filter"),
}
_CHAT_FINISH: Mapping[str, tuple[str, str | None]] = {
    "stop": ("completed", None),
    "tool_calls": ("completed", None),
    "function_call": ("completed", None),
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}
_COMPLETED: tuple[str, str | None] = ("completed", None)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _usage(prompt: int, cached: int, written: int, output: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def anthropic_to_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic usage -> Responses usage (input_tokens counts cache reads and writes)."""
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + read + written
    return _usage(prompt, read, written, _int(usage.get("output_tokens")), 0)


def chat_to_usage(usage: Any) -> dict[str, Any]:
    """Chat completions usage -> Responses usage."""
    usage = usage if isinstance(usage, dict) else {}
    prompt_details = usage.get("prompt_tokens_details")
    output_details = usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0
    reasoning = output_details.get("reasoning_tokens") if isinstance(output_details, dict) else 0
    return _usage(
        _int(usage.get("prompt_tokens")),
        _int(cached),
        0,
        _int(usage.get("completion_tokens")),
        _int(reasoning),
    )


def response_id(vendor_id: Any) -> str:
    """A response id derived from the vendor's answer id (one id for the whole stream)."""
    if isinstance(vendor_id, str) and vendor_id:
        return "resp_" + vendor_id.removeprefix("msg_")
    return "resp_" + uuid.uuid4().hex


def _wants_summary(request: Mapping[str, Any]) -> bool:
    reasoning = request.get("reasoning")
    if not isinstance(reasoning, dict):
        return False
    return (reasoning.get("summary") or reasoning.get("generate_summary")) in SUMMARY_MODES


def _skeleton(request: Mapping[str, Any], rid: str, model: str) -> dict[str, Any]:
    """The response object before its output: what it echoes of the request."""
    reasoning = request.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    text = request.get("text")
    text = text if isinstance(text, dict) else {}
    instructions = request.get("instructions")
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": "default",
        "store": False,  # a translated answer is not stored anywhere
        "temperature": request.get("temperature"),
        "text": {
            "format": text.get("format") or {"type": "text"},
            "verbosity": text.get("verbosity") or "medium",
        },
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_logprobs": 0,
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


class ResponseBuilder:
    """One response object, built item by item (see the module docstring); with `stream`
    it also writes the events, collected by `take`."""

    __slots__ = (
        "_args",
        "_blocks",
        "_events",
        "_item",
        "_parts",
        "_query",
        "_response",
        "_seq",
        "_summary",
        "_thought",
        "_toolset",
        "wants_summary",
    )

    def __init__(
        self, request: Mapping[str, Any], vendor_id: Any, model: str, *, stream: bool
    ) -> None:
        self._response = _skeleton(request, response_id(vendor_id), model)
        self._toolset = Toolset.of(request, web_search=True)
        self.wants_summary = _wants_summary(request)
        self._events: list[bytes] | None = [] if stream else None
        self._seq = 0
        self._item: dict[str, Any] | None = None  # the open output item
        self._parts: list[dict[str, Any]] = []  # the open message's content parts
        self._args: list[str] = []
        self._thought: list[str] = []
        self._blocks: list[dict[str, Any]] = []
        self._summary = False  # the open reasoning item's summary part has been added
        self._query = ""

    # ------------------------------------------------------------------ events

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._events is None:
            return
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        self._events.append(sse_event(kind, orjson.dumps(payload)))

    def take(self) -> bytes:
        """The events written since the last call."""
        events = self._events
        if not events:
            return b""
        self._events = []
        return b"".join(events)

    def start(self) -> None:
        snapshot = {**self._response, "output": []}
        self._emit("response.created", response=snapshot)
        self._emit("response.in_progress", response=snapshot)

    @property
    def _index(self) -> int:
        return len(self._response["output"])

    def _where(self) -> dict[str, Any]:
        assert self._item is not None
        return {"item_id": self._item["id"], "output_index": self._index}

    def _open(self, item: dict[str, Any]) -> None:
        self.close()
        self._item = item
        self._emit("response.output_item.added", output_index=self._index, item=item)

    def _suffix(self) -> str:
        return f"{self._response['id'].removeprefix('resp_')}_{self._index}"

    # ------------------------------------------------------------------ message

    def _part(self, kind: str) -> dict[str, Any]:
        """The open message's part of `kind` (output_text or refusal), opened if needed."""
        if self._item is None or self._item["type"] != "message":
            self._open(
                {
                    "id": "msg_" + self._suffix(),
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
            )
        if self._parts and self._parts[-1]["type"] == kind:
            return self._parts[-1]
        self._close_part()
        part: dict[str, Any] = (
            {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            if kind == "output_text"
            else {"type": "refusal", "refusal": ""}
        )
        self._parts.append(part)
        self._emit(
            "response.content_part.added",
            **self._where(),
            content_index=len(self._parts) - 1,
            part=dict(part),
        )
        return part

    def text(self, delta: str) -> None:
        if not delta:
            return
        part = self._part("output_text")
        part["text"] += delta
        self._emit(
            "response.output_text.delta",
            **self._where(),
            content_index=len(self._parts) - 1,
            delta=delta,
            logprobs=[],
        )

    def refusal(self, delta: str) -> None:
        if not delta:
            return
        part = self._part("refusal")
        part["refusal"] += delta
        self._emit(
            "response.refusal.delta",
            **self._where(),
            content_index=len(self._parts) - 1,
            delta=delta,
        )

    def text_length(self) -> int:
        """Characters of text in the open message so far (where an annotation starts)."""
        if self._parts and self._parts[-1]["type"] == "output_text":
            return len(self._parts[-1]["text"])
        return 0

    def annotate(self, url: str, title: str, start: int, end: int) -> None:
        """A URL citation over [start, end) of the open message's text."""
        if not self._parts or self._parts[-1]["type"] != "output_text":
            return
        part = self._parts[-1]
        annotation = {
            "type": "url_citation",
            "url": url,
            "title": title,
            "start_index": start,
            "end_index": end,
        }
        part["annotations"].append(annotation)
        self._emit(
            "response.output_text.annotation.added",
            **self._where(),
            content_index=len(self._parts) - 1,
            annotation_index=len(part["annotations"]) - 1,
            annotation=annotation,
        )

    def _close_part(self) -> None:
        if not self._parts:
            return
        part = self._parts[-1]
        where = {**self._where(), "content_index": len(self._parts) - 1}
        if part["type"] == "output_text":
            self._emit("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            self._emit("response.refusal.done", **where, refusal=part["refusal"])
        self._emit("response.content_part.done", **where, part=part)

    # ------------------------------------------------------------------ reasoning

    def reasoning(self) -> None:
        """Open a reasoning item (its thinking arrives with `thinking`, its blocks with
        `thinking_block`)."""
        self._open({"id": "rs_" + self._suffix(), "type": "reasoning", "summary": []})

    def thinking(self, delta: str) -> None:
        if not delta:
            return
        if self._item is None or self._item["type"] != "reasoning":
            self.reasoning()
        self._thought.append(delta)
        if not self.wants_summary:
            return
        where = {**self._where(), "summary_index": 0}
        if not self._summary:
            self._summary = True
            part = {"type": "summary_text", "text": ""}
            self._emit("response.reasoning_summary_part.added", **where, part=part)
        self._emit("response.reasoning_summary_text.delta", **where, delta=delta)

    def thinking_block(self, block: Mapping[str, Any]) -> None:
        """An Anthropic thinking or redacted_thinking block, kept for the next turn."""
        if self._item is None or self._item["type"] != "reasoning":
            self.reasoning()
        self._blocks.append(dict(block))

    # ------------------------------------------------------------------ function calls

    def call(self, call_id: str, flat_name: str) -> None:
        name, namespace = self._toolset.restore(flat_name)
        item: dict[str, Any] = {
            "id": "fc_" + call_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            "name": name,
        }
        if namespace is not None:
            item["namespace"] = namespace
        self._open(item)

    def arguments(self, delta: str) -> None:
        if not delta or self._item is None or self._item["type"] != "function_call":
            return
        self._args.append(delta)
        self._emit("response.function_call_arguments.delta", **self._where(), delta=delta)

    # ------------------------------------------------------------------ web search

    def search(self, vendor_id: str) -> None:
        self._open(
            {
                "id": "ws_" + vendor_id,
                "type": "web_search_call",
                "status": "in_progress",
                "action": {"type": "search", "query": ""},
            }
        )
        self._emit("response.web_search_call.in_progress", **self._where())
        self._emit("response.web_search_call.searching", **self._where())

    def search_query(self, query: str) -> None:
        self._query = query

    def searched(self, sources: list[str], failed: bool) -> None:
        """The open web search's result: the pages it found, or that it failed."""
        item = self._item
        if item is None or item["type"] != "web_search_call":
            return
        item["status"] = "failed" if failed else "completed"
        item["action"] = {
            "type": "search",
            "query": self._query,
            "sources": [{"type": "url", "url": url} for url in sources],
        }
        self.close()

    # ------------------------------------------------------------------ ends

    def close(self, status: str = "completed") -> None:
        """Finish the open item (if any) with its done events."""
        item = self._item
        if item is None:
            return
        kind = item["type"]
        done = dict(item)
        if kind == "message":
            self._close_part()
            done.update(status=status, content=self._parts)
        elif kind == "reasoning":
            thought = "".join(self._thought)
            if self._summary:
                where = {**self._where(), "summary_index": 0}
                part = {"type": "summary_text", "text": thought}
                self._emit("response.reasoning_summary_text.done", **where, text=thought)
                self._emit("response.reasoning_summary_part.done", **where, part=part)
            if self.wants_summary and thought:
                done["summary"] = [{"type": "summary_text", "text": thought}]
            if self._blocks:
                done["encrypted_content"] = pack_thinking(self._blocks)
        elif kind == "function_call":
            arguments = "".join(self._args)
            self._emit(
                "response.function_call_arguments.done", **self._where(), arguments=arguments
            )
            done.update(status="completed", arguments=arguments)
        elif kind == "web_search_call" and done["status"] == "in_progress":
            done.update(status="completed", action={"type": "search", "query": self._query})
        if kind == "web_search_call" and done["status"] == "completed":
            self._emit("response.web_search_call.completed", **self._where())
        self._emit("response.output_item.done", output_index=self._index, item=done)
        self._response["output"].append(done)
        self._item = None
        self._parts, self._args, self._thought, self._blocks = [], [], [], []
        self._summary = False
        self._query = ""

    def finish(self, status: str, reason: str | None, usage: dict[str, Any]) -> None:
        """The answer is complete: close the open item and write the final event."""
        self.close("incomplete" if status == "incomplete" else "completed")
        response = self._response
        response["status"] = status
        response["incomplete_details"] = {"reason": reason} if reason else None
        response["completed_at"] = int(time.time()) if status == "completed" else None
        response["usage"] = usage
        kind = "response.completed" if status == "completed" else "response.incomplete"
        self._emit(kind, response=response)

    def response(self) -> dict[str, Any]:
        return self._response


# --------------------------------------------------------------------------- Anthropic


class _Block:
    """An Anthropic content block being streamed, for what its end needs."""

    __slots__ = ("citations", "input", "kind", "start")

    def __init__(self, kind: str, start: int) -> None:
        self.kind = kind
        self.start = start  # text: where the block starts in the message's text
        self.input: list[str] = []  # tool input JSON fragments
        self.citations: list[dict[str, Any]] = []


def _cite(builder: ResponseBuilder, citations: list[Any], start: int) -> None:
    end = builder.text_length()
    for citation in citations:
        if isinstance(citation, dict) and isinstance(citation.get("url"), str):
            builder.annotate(citation["url"], str(citation.get("title") or ""), start, end)


def _search_result(builder: ResponseBuilder, block: Mapping[str, Any]) -> None:
    content = block.get("content")
    if isinstance(content, list):
        urls = [r["url"] for r in content if isinstance(r, dict) and isinstance(r.get("url"), str)]
        builder.searched(urls, failed=False)
    else:  # {"type": "web_search_tool_result_error", "error_code": ...}
        builder.searched([], failed=True)


def _query(raw: Any) -> str:
    query = raw.get("query") if isinstance(raw, dict) else None
    return query if isinstance(query, str) else ""


def message_to_response(msg: Mapping[str, Any], t: Translation) -> dict[str, Any]:
    """An Anthropic Messages answer -> a Responses API response object."""
    builder = ResponseBuilder(t.request, msg.get("id"), str(msg.get("model", "")), stream=False)
    for block in msg.get("content") or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            start = builder.text_length()
            builder.text(str(block.get("text", "")))
            _cite(builder, block.get("citations") or [], start)
        elif kind in ("thinking", "redacted_thinking"):
            builder.reasoning()
            builder.thinking_block(block)
            builder.thinking(str(block.get("thinking") or ""))
            builder.close()
        elif kind == "tool_use":
            builder.call(str(block.get("id", "")), str(block.get("name", "")))
            builder.arguments(orjson.dumps(block.get("input") or {}).decode())
            builder.close()
        elif kind == "server_tool_use":
            builder.search(str(block.get("id", "")))
            builder.search_query(_query(block.get("input")))
        elif kind == "web_search_tool_result":
            _search_result(builder, block)
    stop = msg.get("stop_reason")
    status, reason = _ANTHROPIC_STOP.get(stop, _COMPLETED) if isinstance(stop, str) else _COMPLETED
    usage = msg.get("usage")
    builder.finish(status, reason, anthropic_to_usage(usage if isinstance(usage, dict) else {}))
    return builder.response()


class MessagesToResponsesStream:
    """Anthropic SSE events -> the Responses API event sequence.

    Error events are not translated: the vendor adapter below already turns them into a
    failed attempt (before the commit point) or a broken stream (after it), which the
    Responses endpoint ends with an error event of its own.
    """

    __slots__ = ("_blocks", "_builder", "_parser", "_request", "_stop", "_usage", "done")

    def __init__(self, request: Mapping[str, Any], t: Translation) -> None:
        self._request = request
        self._parser = SSEParser()
        self._builder: ResponseBuilder | None = None
        self._blocks: dict[int, _Block] = {}
        self._usage: dict[str, Any] = {}
        self._stop: str | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        for name, event in self._parser.objects(chunk):
            if event is not None and name not in (b"ping", b"error"):
                self._event(event)
        return self._builder.take() if self._builder is not None else b""

    def _event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._builder = ResponseBuilder(
                self._request, message.get("id"), str(message.get("model", "")), stream=True
            )
            self._builder.start()
            self._usage.update(message.get("usage") or {})
            return
        builder = self._builder
        if builder is None:
            return
        index = event.get("index", 0)
        if kind == "content_block_start":
            self._start(builder, index, event.get("content_block") or {})
        elif kind == "content_block_delta":
            self._delta(builder, index, event.get("delta") or {})
        elif kind == "content_block_stop":
            self._stop_block(builder, index)
        elif kind == "message_delta":
            self._usage.update(
                {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            )
            stop = (event.get("delta") or {}).get("stop_reason")
            if isinstance(stop, str):
                self._stop = stop
        elif kind == "message_stop":
            status, reason = _ANTHROPIC_STOP.get(self._stop or "", _COMPLETED)
            builder.finish(status, reason, anthropic_to_usage(self._usage))
            self.done = True

    def _start(self, builder: ResponseBuilder, index: int, block: Mapping[str, Any]) -> None:
        kind = str(block.get("type", ""))
        state = self._blocks[index] = _Block(kind, builder.text_length())
        if kind == "text":
            builder.text(str(block.get("text") or ""))
            state.start = builder.text_length() - len(str(block.get("text") or ""))
        elif kind in ("thinking", "redacted_thinking"):
            builder.reasoning()
            if kind == "redacted_thinking":
                builder.thinking_block(block)
        elif kind == "tool_use":
            builder.call(str(block.get("id", "")), str(block.get("name", "")))
        elif kind == "server_tool_use":
            builder.search(str(block.get("id", "")))
        elif kind == "web_search_tool_result":
            _search_result(builder, block)

    def _delta(self, builder: ResponseBuilder, index: int, delta: Mapping[str, Any]) -> None:
        state = self._blocks.get(index)
        kind = delta.get("type")
        if kind == "text_delta":
            builder.text(str(delta.get("text", "")))
        elif kind == "thinking_delta":
            builder.thinking(str(delta.get("thinking", "")))
            if state is not None:
                state.input.append(str(delta.get("thinking", "")))
        elif kind == "signature_delta" and state is not None:
            thinking = "".join(state.input)
            builder.thinking_block(
                {"type": "thinking", "thinking": thinking, "signature": delta.get("signature", "")}
            )
        elif kind == "input_json_delta" and state is not None:
            fragment = str(delta.get("partial_json", ""))
            state.input.append(fragment)
            if state.kind == "tool_use":
                builder.arguments(fragment)
        elif kind == "citations_delta" and state is not None:
            citation = delta.get("citation")
            if isinstance(citation, dict):
                state.citations.append(citation)

    def _stop_block(self, builder: ResponseBuilder, index: int) -> None:
        state = self._blocks.pop(index, None)
        if state is None:
            return
        if state.kind == "text":
            _cite(builder, state.citations, state.start)
        elif state.kind == "server_tool_use":
            with contextlib.suppress(orjson.JSONDecodeError):
                builder.search_query(_query(orjson.loads("".join(state.input) or "{}")))
        elif state.kind in ("thinking", "redacted_thinking", "tool_use"):
            builder.close()


# --------------------------------------------------------------------------- chat


def chat_to_response(resp: Mapping[str, Any], t: Translation) -> dict[str, Any]:
    """An OpenAI chat completion -> a Responses API response object."""
    builder = ResponseBuilder(t.request, resp.get("id"), str(resp.get("model", "")), stream=False)
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning and builder.wants_summary:
        builder.thinking(reasoning)
        builder.close()
    if isinstance(message.get("content"), str):
        builder.text(message["content"])
    if isinstance(message.get("refusal"), str):
        builder.refusal(message["refusal"])
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        fn = call.get("function") or {}
        builder.call(str(call.get("id", "")), str(fn.get("name", "")))
        builder.arguments(str(fn.get("arguments") or ""))
        builder.close()
    finish = choice.get("finish_reason")
    status, reason = _CHAT_FINISH.get(finish, _COMPLETED) if isinstance(finish, str) else _COMPLETED
    builder.finish(status, reason, chat_to_usage(resp.get("usage")))
    return builder.response()


class ChatToResponsesStream:
    """OpenAI chat chunks -> the Responses API event sequence.

    Tool calls are expected in index order (every vendor streams them so): a call's item
    opens at its first fragment and closes when the next call (or the end) comes. The final
    event is written at `[DONE]`, after the usage chunk (the bridge always asks for it).
    """

    __slots__ = ("_builder", "_calls", "_finish", "_parser", "_request", "_usage", "done")

    def __init__(self, request: Mapping[str, Any], t: Translation) -> None:
        self._request = request
        self._parser = SSEParser()
        self._builder: ResponseBuilder | None = None
        self._calls: set[int] = set()
        self._finish: str | None = None
        self._usage: Any = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        for _, event in self._parser.objects(chunk):
            if event is None:  # [DONE]
                builder = self._started({})
                status, reason = _CHAT_FINISH.get(self._finish or "", _COMPLETED)
                builder.finish(status, reason, chat_to_usage(self._usage))
                self.done = True
                continue
            if "error" in event:
                continue
            builder = self._started(event)
            if event.get("usage"):
                self._usage = event["usage"]
            for choice in event.get("choices") or ():
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._choice(builder, choice)
        return self._builder.take() if self._builder is not None else b""

    def _started(self, chunk: Mapping[str, Any]) -> ResponseBuilder:
        if self._builder is None:
            self._builder = ResponseBuilder(
                self._request, chunk.get("id"), str(chunk.get("model", "")), stream=True
            )
            self._builder.start()
        return self._builder

    def _choice(self, builder: ResponseBuilder, choice: Mapping[str, Any]) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning and builder.wants_summary:
            builder.thinking(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            builder.text(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            builder.refusal(refusal)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            fn = call.get("function") or {}
            index = call.get("index", 0)
            if index not in self._calls:
                self._calls.add(index)
                builder.call(str(call.get("id", "")), str(fn.get("name", "")))
            builder.arguments(str(fn.get("arguments") or ""))
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._finish = finish
