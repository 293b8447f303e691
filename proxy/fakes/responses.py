"""OpenAI's Responses API (``/v1/responses``) for the OpenAI fake.

What the Codex CLI, the openai-agents SDK and ``client.responses.*`` speak: a response
object with typed ``output`` items (``reasoning``, ``message`` with ``output_text`` parts,
``function_call``), and, streamed, a sequence of named events that the SDK's accumulator
(``openai.lib.streaming.responses``) rebuilds into the same object. The fake produces
both from one decided answer, so a streamed response and its JSON twin carry the same
content, and it remembers what it created (``store``) so ``previous_response_id``,
``GET``/``DELETE /v1/responses/{id}`` and ``/input_items`` behave as OpenAI's do,
including the 404 for an id it does not know and the 400s for tool outputs that answer
no call (or calls left unanswered).

The streamed sequence, every event numbered by ``sequence_number`` from 0::

    response.created, response.in_progress
    per output item: response.output_item.added
      reasoning: response.reasoning_summary_part.added, ..._text.delta*, ..._text.done,
                 response.reasoning_summary_part.done (when a summary was asked for)
      message:   response.content_part.added, response.output_text.delta*,
                 response.output_text.done, response.content_part.done
      function_call: response.function_call_arguments.delta*, ..._arguments.done
    response.output_item.done
    response.completed (or response.incomplete when max_output_tokens cut the text)

A stream cut by a fault ends with ``response.failed`` (the response, ``status: failed``,
with an ``error``), as OpenAI ends a response that fails mid-way; there is no ``[DONE]``.
"""

from __future__ import annotations

import base64
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.fakes.answers import (
    ChoiceMode,
    PlannedCall,
    ToolChoice,
    ToolSpec,
    plan_calls,
    split_text,
    structured_text,
    thinking_text,
    token_logprobs,
)
from proxy.fakes.base import (
    Call,
    FakeVendor,
    Rejected,
    Route,
    Usage,
    estimate_tokens,
    sse_event,
    text_chars,
)
from proxy.fakes.chat import json_object_text

__all__ = ["Answer", "InFlight", "ResponseStore", "ResponsesAPI", "StoredResponse", "plan_answer"]

#: Responses remembered per fake; the oldest are forgotten first (a long demo stays bounded).
STORE_LIMIT = 1024
#: OpenAI's lower bound on ``max_output_tokens``.
_MIN_OUTPUT_TOKENS = 16
_LOGPROBS_INCLUDE = "message.output_text.logprobs"
_ENCRYPTED_INCLUDE = "reasoning.encrypted_content"
_SUMMARY_MODES = frozenset({"auto", "concise", "detailed"})


@dataclass(slots=True)
class StoredResponse:
    """A response as ``GET /v1/responses/{id}`` returns it, with the input it answered
    (items with ids, as ``/input_items`` lists them)."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]


class ResponseStore:
    """The responses a fake created with ``store`` on, by id (bounded, oldest out first)."""

    def __init__(self, limit: int = STORE_LIMIT) -> None:
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._limit = limit

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._items

    def get(self, response_id: str) -> StoredResponse | None:
        return self._items.get(response_id)

    def put(self, stored: StoredResponse) -> None:
        self._items[stored.response["id"]] = stored
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None

    def clear(self) -> None:
        self._items.clear()

    def context(self, response_id: str | None) -> list[dict[str, Any]]:
        """The conversation a ``previous_response_id`` continues: every input and output
        item of the chain, oldest first (a deleted or forgotten link ends the chain)."""
        chain: list[StoredResponse] = []
        seen: set[str] = set()
        while response_id is not None and response_id not in seen:
            stored = self._items.get(response_id)
            if stored is None:
                break
            seen.add(response_id)
            chain.append(stored)
            previous = stored.response.get("previous_response_id")
            response_id = previous if isinstance(previous, str) else None
        items: list[dict[str, Any]] = []
        for stored in reversed(chain):
            items.extend(stored.input_items)
            items.extend(stored.response.get("output") or ())
        return items


# ---------------------------------------------------------------------------- request


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``input`` as a list of items (a string is one user message); raises ``Rejected``
    for what OpenAI rejects (a non-string, non-list input, a non-object item)."""
    raw = body.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise Rejected(
            f"Invalid type for 'input': expected one of a string or array of input items, but "
            f"got {type(raw).__name__} instead.",
            param="input",
            code="invalid_type",
        )
    items = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise Rejected(
                f"Invalid type for 'input[{index}]': expected an input item, but got "
                f"{type(item).__name__} instead.",
                param=f"input[{index}]",
                code="invalid_type",
            )
        if "type" not in item and "role" in item:
            item = {"type": "message", **item}
        items.append(item)
    return items


def prompt_chars(instructions: Any, items: Sequence[dict[str, Any]]) -> int:
    """Prompt characters for the token estimate: instructions, message text, tool call
    arguments and tool outputs."""
    total = text_chars(instructions) if isinstance(instructions, str) else 0
    for item in items:
        total += text_chars(item)
        for key in ("arguments", "output"):
            value = item.get(key)
            if isinstance(value, str):
                total += len(value)
            elif isinstance(value, list):
                total += text_chars(value)
    return total


def _function_tools(body: dict[str, Any]) -> list[ToolSpec]:
    tools = body.get("tools")
    return [
        ToolSpec(t["name"], t.get("parameters") or {})
        for t in (tools if isinstance(tools, list) else ())
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]


def _tool_choice(body: dict[str, Any], names: Sequence[str]) -> ToolChoice:
    raw = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls") is not False
    if raw == "auto" or raw == "none" or raw == "required":
        return ToolChoice(mode=raw, parallel=parallel)
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        if name not in names:
            raise Rejected(
                "Tool choice 'function' not found in 'tools' parameter.", param="tool_choice"
            )
        return ToolChoice(mode="required", forced=name, parallel=parallel)
    if isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        allowed = frozenset(
            t["name"]
            for t in raw.get("tools") or ()
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        )
        mode: ChoiceMode = "required" if raw.get("mode") == "required" else "auto"
        return ToolChoice(mode=mode, allowed=allowed, parallel=parallel)
    return ToolChoice(parallel=parallel)


def _check_tool_outputs(context: Sequence[dict[str, Any]]) -> None:
    """OpenAI's 400s: an output must answer a call of the conversation, and every call
    must have its output before the conversation goes on."""
    calls: list[str] = []
    answered: set[str] = set()
    for item in context:
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            continue
        if item.get("type") == "function_call":
            calls.append(call_id)
        elif item.get("type") == "function_call_output":
            if call_id not in calls:
                raise Rejected(
                    f"No tool call found for function call output with call_id {call_id}.",
                    param="input",
                )
            answered.add(call_id)
    for call_id in calls:
        if call_id not in answered:
            raise Rejected(f"No tool output found for function call {call_id}.", param="input")


def _max_output_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_output_tokens")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise Rejected(
            "Invalid type for 'max_output_tokens': expected an integer.",
            param="max_output_tokens",
            code="invalid_type",
        )
    if value < _MIN_OUTPUT_TOKENS:
        raise Rejected(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{_MIN_OUTPUT_TOKENS}, but got {value} instead.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    return value


# ---------------------------------------------------------------------------- answer


@dataclass(slots=True)
class Answer:
    """A decided response: its final object and what streaming it needs (the pieces each
    item's text or arguments arrive in)."""

    response: dict[str, Any]
    #: Per output item: the pieces of its text, arguments or reasoning summary.
    pieces: list[list[str]]
    input_items: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: int | None = None

    @property
    def id(self) -> str:
        response_id: str = self.response["id"]
        return response_id

    def in_progress(self) -> dict[str, Any]:
        """The response as ``response.created``/``in_progress`` carry it."""
        return {
            **self.response,
            "status": "in_progress",
            "output": [],
            "usage": None,
            "completed_at": None,
            "incomplete_details": None,
        }

    def failed(self, code: str, message: str) -> dict[str, Any]:
        """The response as a mid-stream failure leaves it (``response.failed``, and stored)."""
        return {
            **self.in_progress(),
            "status": "failed",
            "error": {"code": code, "message": message},
        }

    def events(self) -> list[bytes]:
        """The full SSE event sequence of this response (see the module docstring)."""
        out = _EventWriter()
        out.add("response.created", response=self.in_progress())
        out.add("response.in_progress", response=self.in_progress())
        for index, (item, pieces) in enumerate(
            zip(self.response["output"], self.pieces, strict=True)
        ):
            kind = item["type"]
            if kind == "message":
                self._message_events(out, index, item, pieces)
            elif kind == "function_call":
                added = {**item, "status": "in_progress", "arguments": ""}
                out.add("response.output_item.added", output_index=index, item=added)
                for piece in pieces:
                    out.add(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=piece,
                    )
                out.add(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
                out.add("response.output_item.done", output_index=index, item=item)
            else:
                self._reasoning_events(out, index, item, pieces)
        final = (
            "response.completed"
            if self.response["status"] == "completed"
            else ("response.incomplete")
        )
        out.add(final, response=self.response)
        return out.events

    def _message_events(
        self, out: _EventWriter, index: int, item: dict[str, Any], pieces: list[str]
    ) -> None:
        part = item["content"][0]
        item_id = item["id"]
        added = {**item, "status": "in_progress", "content": []}
        out.add("response.output_item.added", output_index=index, item=added)
        empty = {**part, "text": "", "logprobs": []}
        out.add(
            "response.content_part.added",
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=empty,
        )
        for piece in pieces:
            logprobs = [] if self.logprobs is None else token_logprobs((piece,), self.logprobs)
            out.add(
                "response.output_text.delta",
                item_id=item_id,
                output_index=index,
                content_index=0,
                delta=piece,
                logprobs=logprobs,
            )
        out.add(
            "response.output_text.done",
            item_id=item_id,
            output_index=index,
            content_index=0,
            text=part["text"],
            logprobs=part["logprobs"],
        )
        out.add(
            "response.content_part.done",
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=part,
        )
        out.add("response.output_item.done", output_index=index, item=item)

    @staticmethod
    def _reasoning_events(
        out: _EventWriter, index: int, item: dict[str, Any], pieces: list[str]
    ) -> None:
        item_id = item["id"]
        added = {**item, "summary": [], "status": "in_progress"}
        out.add("response.output_item.added", output_index=index, item=added)
        for summary_index, summary in enumerate(item["summary"]):
            empty = {**summary, "text": ""}
            where = {"item_id": item_id, "output_index": index, "summary_index": summary_index}
            out.add("response.reasoning_summary_part.added", **where, part=empty)
            for piece in pieces:
                out.add("response.reasoning_summary_text.delta", **where, delta=piece)
            out.add("response.reasoning_summary_text.done", **where, text=summary["text"])
            out.add("response.reasoning_summary_part.done", **where, part=summary)
        out.add("response.output_item.done", output_index=index, item=item)


class _EventWriter:
    """Numbers and frames events (``event: <type>`` + ``data: {...}``)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[bytes] = []

    def add(self, kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(self.events), **fields}
        self.events.append(sse_event(kind, payload))


@dataclass(slots=True)
class InFlight:
    """A response being streamed (``Call.state``): what its failure event needs, and the
    failed response once one was sent (stored in place of the complete one)."""

    answer: Answer
    failed: dict[str, Any] | None = None

    def failed_event(self, code: str, message: str, sent: int) -> bytes:
        """``response.failed`` numbered after the ``sent`` events already out."""
        self.failed = self.answer.failed(code, message)
        payload = {"type": "response.failed", "sequence_number": sent, "response": self.failed}
        return sse_event("response.failed", payload)


def _echo_tools(body: dict[str, Any]) -> list[Any]:
    """``tools`` as the response echoes them: function tools with ``strict`` defaulted (on)."""
    tools = body.get("tools")
    out: list[Any] = []
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            out.append({"description": None, "strict": True, **tool})
        else:
            out.append(tool)
    return out


def _reasoning(body: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """The echoed ``reasoning``, whether a reasoning item is made, and with a summary."""
    raw = body.get("reasoning")
    if not isinstance(raw, dict):
        return {"effort": None, "summary": None}, False, False
    effort = raw.get("effort")
    summary = raw.get("summary") or raw.get("generate_summary")
    echo = {"effort": effort, "summary": summary}
    return echo, effort != "none", summary in _SUMMARY_MODES


def plan_answer(
    body: dict[str, Any],
    context: list[dict[str, Any]],
    *,
    pieces: tuple[str, ...],
    chunks: int,
    cached: int,
    name: str,
    new_id: Callable[[], str],
) -> Answer:
    """Decide the response to a ``POST /v1/responses`` body.

    ``context`` is the stored conversation ``previous_response_id`` continues (empty when
    there is none); ``pieces`` the fake's usual text. Raises ``Rejected`` for what OpenAI
    rejects (bad input, tool outputs that answer nothing, calls left unanswered, a
    ``tool_choice`` naming no offered tool, a too small ``max_output_tokens``).
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Rejected("Missing required parameter: 'model'.", param="model",
                       code="missing_required_parameter")  # fmt: skip
    items = input_items(body)
    if not items and not context:
        raise Rejected("Missing required parameter: 'input'.", param="input",
                       code="missing_required_parameter")  # fmt: skip
    _check_tool_outputs([*context, *items])
    limit = _max_output_tokens(body)
    tools = _function_tools(body)
    choice = _tool_choice(body, [t.name for t in tools])
    instructions = body.get("instructions")
    conversation = [instructions, *context, *items]
    answered = bool(items) and items[-1].get("type") == "function_call_output"
    calls = plan_calls(tools, choice, conversation) if tools and not answered else []
    max_calls = body.get("max_tool_calls")
    if isinstance(max_calls, int) and not isinstance(max_calls, bool) and max_calls >= 0:
        calls = calls[:max_calls]

    include = body.get("include")
    include = include if isinstance(include, list) else []
    top = body.get("top_logprobs")
    wants_logprobs = _LOGPROBS_INCLUDE in include or (isinstance(top, int) and top > 0)
    logprobs = (
        (top if isinstance(top, int) and not isinstance(top, bool) else 0)
        if wants_logprobs
        else None
    )
    reasoning_echo, reasons, summarised = _reasoning(body)
    text_config = body.get("text")
    text_config = text_config if isinstance(text_config, dict) else {}
    fmt = text_config.get("format")
    fmt = fmt if isinstance(fmt, dict) else {"type": "text"}

    output: list[dict[str, Any]] = []
    item_pieces: list[list[str]] = []
    reasoning_tokens = 0
    if reasons:
        thought = split_text(thinking_text(name), chunks)
        reasoning_tokens = len(thought)
        item: dict[str, Any] = {
            "id": "rs_" + new_id(),
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "".join(thought)}] if summarised else [],
        }
        if _ENCRYPTED_INCLUDE in include:
            item["encrypted_content"] = base64.b64encode(
                zlib.compress("".join(thought).encode())
            ).decode()
        output.append(item)
        item_pieces.append(thought)
    status, incomplete = "completed", None
    if calls:
        completion = 0
        for planned in calls:
            output.append(_function_call(planned, new_id))
            parts = split_text(planned.arguments, chunks)
            item_pieces.append(parts)
            completion += len(parts)
    else:
        kind = fmt.get("type")
        text_pieces = list(pieces)
        if kind == "json_schema":
            text_pieces = split_text(structured_text(fmt.get("schema") or {}, conversation), chunks)
        elif kind == "json_object":
            text_pieces = split_text(json_object_text(pieces), chunks)
        if limit is not None and limit - reasoning_tokens < len(text_pieces):
            text_pieces = text_pieces[: max(0, limit - reasoning_tokens)] or [""]
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        text = "".join(text_pieces)
        part = {
            "type": "output_text",
            "text": text,
            "annotations": [],
            "logprobs": [] if logprobs is None else token_logprobs(text_pieces, logprobs),
        }
        output.append(
            {
                "id": "msg_" + new_id(),
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [part],
            }
        )
        item_pieces.append(text_pieces)
        completion = len(text_pieces)
    completion += reasoning_tokens

    prompt = max(estimate_tokens(prompt_chars(instructions, [*context, *items])), cached)
    created = int(time.time())
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": prompt + completion,
    }
    response = {
        "id": "resp_" + new_id(),
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": created if status == "completed" else None,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": limit,
        "max_tool_calls": max_calls if isinstance(max_calls, int) else None,
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": reasoning_echo,
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": body.get("service_tier") or "default",
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": fmt, "verbosity": text_config.get("verbosity") or "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": _echo_tools(body),
        "top_logprobs": top if isinstance(top, int) else 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    stored_items = [_stored_item(item, new_id) for item in items]
    return Answer(response, item_pieces, stored_items, prompt, completion, cached, logprobs)


def _function_call(planned: PlannedCall, new_id: Callable[[], str]) -> dict[str, Any]:
    return {
        "id": "fc_" + new_id(),
        "type": "function_call",
        "status": "completed",
        "arguments": planned.arguments,
        "call_id": "call_" + new_id(),
        "name": planned.name,
    }


def _stored_item(item: dict[str, Any], new_id: Callable[[], str]) -> dict[str, Any]:
    """An input item as ``/input_items`` lists it: with an id, a message's string content
    as one text part."""
    kind = item.get("type")
    out = dict(item)
    if kind == "message" and isinstance(item.get("content"), str):
        part = "output_text" if item.get("role") == "assistant" else "input_text"
        out["content"] = [{"type": part, "text": item["content"]}]
        out.setdefault("status", "completed")
    if not isinstance(out.get("id"), str):
        prefix = {"function_call_output": "fco_", "function_call": "fc_"}.get(str(kind), "msg_")
        out["id"] = prefix + new_id()
    return out


def list_input_items(stored: StoredResponse, query: dict[str, str]) -> dict[str, Any]:
    """``GET /v1/responses/{id}/input_items``: a cursor page (``order`` desc by default,
    ``limit`` 20, ``after`` an item id)."""
    items = list(stored.input_items)
    if query.get("order", "desc") != "asc":
        items.reverse()
    after = query.get("after")
    if after:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = max(1, min(100, int(query.get("limit", "20"))))
    except ValueError:
        limit = 20
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(items) > limit,
    }


def not_found(response_id: str) -> Rejected:
    """OpenAI's 404 for a response id it does not have."""
    return Rejected(f"Response with id '{response_id}' not found.", status=404)


def previous_not_found(response_id: str) -> Rejected:
    """OpenAI's 404 for a ``previous_response_id`` it does not have."""
    return Rejected(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
        status=404,
    )


def input_token_count(body: dict[str, Any], context: list[dict[str, Any]]) -> dict[str, Any]:
    """``POST /v1/responses/input_tokens``: what ``usage.input_tokens`` would say."""
    items = input_items(body)
    chars = prompt_chars(body.get("instructions"), [*context, *items])
    return {"object": "response.input_tokens", "input_tokens": estimate_tokens(chars)}


class ResponsesAPI:
    """The ``/v1/responses`` endpoints of one fake vendor, and the responses it stored.

    The handlers are ordinary faultable LLM routes of the vendor (errors, stalls and stream
    faults apply as to chat); ``store`` is public so tests can see which deployment owns a
    response id.
    """

    def __init__(self, vendor: FakeVendor) -> None:
        self._vendor = vendor
        self.store = ResponseStore()

    def routes(self, prefix: str = "/v1") -> list[Route]:
        """The endpoints under ``prefix`` (OpenAI: ``/v1``; Azure: ``/openai``)."""
        base = prefix + "/responses"
        return [
            Route("POST", base, self.create),
            Route("POST", base + "/input_tokens", self.count_input_tokens),
            Route("GET", base + "/{response_id}", self.retrieve),
            Route("DELETE", base + "/{response_id}", self.delete),
            Route("GET", base + "/{response_id}/input_items", self.list_input_items),
        ]

    def _context(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        previous = body.get("previous_response_id")
        if previous is None:
            return []
        if not isinstance(previous, str) or previous not in self.store:
            raise previous_not_found(str(previous))
        return self.store.context(previous)

    def _stored(self, call: Call) -> StoredResponse:
        response_id = call.request.match_info["response_id"]
        stored = self.store.get(response_id)
        if stored is None:
            raise not_found(response_id)
        return stored

    async def create(self, call: Call) -> web.StreamResponse:
        vendor, body = self._vendor, call.body
        answer = plan_answer(
            body,
            self._context(body),
            pieces=vendor.pieces,
            chunks=vendor.chunks,
            cached=vendor.cached_tokens,
            name=vendor.name,
            new_id=vendor.next_id,
        )
        usage = Usage(answer.prompt_tokens, answer.completion_tokens, answer.cached_tokens)
        store = body.get("store") is not False
        if store:  # before the answer goes out: a client may continue from it at once
            self.store.put(StoredResponse(answer.response, answer.input_items))
        if body.get("stream") is not True:
            return await vendor.json_response(call, answer.response, usage)
        events = answer.events()
        flight = call.state = InFlight(answer)
        resp = await vendor.stream_response(call, events, trailer=None, usage=usage)
        fault = call.fault
        if store and fault is not None and fault.stream_end(len(events)) is not None:
            # Cut short: OpenAI keeps the response as failed, not as the complete one.
            failed = flight.failed or answer.failed("server_error", "The stream was interrupted.")
            self.store.put(StoredResponse(failed, answer.input_items))
        return resp

    async def count_input_tokens(self, call: Call) -> web.StreamResponse:
        body = call.body
        return await self._vendor.json_response(call, input_token_count(body, self._context(body)))

    async def retrieve(self, call: Call) -> web.StreamResponse:
        stored = self._stored(call)
        if call.request.query.get("stream") == "true":
            raise Rejected(
                "Streaming a stored response is only supported for background responses.",
                param="stream",
            )
        return await self._vendor.json_response(call, stored.response)

    async def delete(self, call: Call) -> web.StreamResponse:
        response_id = self._stored(call).response["id"]
        self.store.delete(response_id)
        return await self._vendor.json_response(
            call, {"id": response_id, "object": "response.deleted", "deleted": True}
        )

    async def list_input_items(self, call: Call) -> web.StreamResponse:
        page = list_input_items(self._stored(call), dict(call.request.query))
        return await self._vendor.json_response(call, page)
