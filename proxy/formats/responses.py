"""OpenAI Responses API requests -> Anthropic Messages and OpenAI chat completions.

What the Codex CLI, the openai-agents SDK and `client.responses.*` send, for vendors that do
not speak the Responses API: Anthropic (natively, `responses_to_messages`) and the
litellm-backed types, whose adapter speaks chat completions (`responses_to_chat`). The
answers come back through `proxy.formats.responses_answers`.

The fields a translation carries are `CARRIED`; every other field is screened by its kind in
`RESPONSES_FIELDS` (`proxy.formats.translation`, the same rule as every translation): one
that changes the answer is refused (`Unsupported`: the deployment is skipped, and the
client gets a 400 naming the field and the vendor only when no deployment of the group can
serve it), a sampling hint or a field that changes nothing the vendor does is dropped and
named in `x-proxy-dropped-params`.

Input items: messages (text, images, files), function calls and their outputs, and
reasoning items. A reasoning item is a vendor's private state: one this proxy produced from
Anthropic thinking blocks (`encrypted_content` starts with `THINKING_PREFIX`) goes back as
those blocks; one from another vendor cannot be replayed anywhere else and is left out, as
is a `web_search_call` (a record of a search the vendor ran; the answer that used it follows
it in the input).

Tools: function tools; `namespace` tools (Codex's sub-agent tools) flattened to
`<namespace>__<name>` and restored on the way back (`Toolset`); the hosted `web_search`
tool as Anthropic's server-side web search. Other hosted tools, and web search for chat
vendors, are refused.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from proxy.formats.anthropic import DEFAULT_MAX_TOKENS, THINKING_BUDGET, tool_input
from proxy.formats.capabilities import anthropic_structured_outputs, anthropic_thinks
from proxy.formats.jsonschema import anthropic_expressible, to_anthropic
from proxy.formats.translation import Field, Kind, Translation, neutral

__all__ = [
    "CARRIED",
    "RESPONSES_FIELDS",
    "SUMMARY_MODES",
    "THINKING_PREFIX",
    "Toolset",
    "input_items",
    "pack_thinking",
    "responses_to_chat",
    "responses_to_messages",
    "unpack_thinking",
]


# What both translations carry (mapped onto the target API by the code below).
CARRIED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "text",
        "reasoning",
        "include",
        "stream",
        "user",
        "safety_identifier",
        # The proxy's affinity key; for Anthropic also automatic prompt caching (OpenAI
        # caches prefixes by itself, Anthropic only when asked).
        "prompt_cache_key",
    }
)
_STATE = (
    "keeps no conversation state: send the whole conversation as input (as Codex does with "
    "store: false), or use a model group with a deployment of the vendor that stored it"
)
# The other fields of the Responses API, by kind. A translated answer is stored nowhere, so
# `store` (true by default) is dropped visibly.
RESPONSES_FIELDS: Mapping[str, Field] = MappingProxyType(
    {
        "truncation": Field(Kind.SHAPE, ("disabled",)),
        "top_logprobs": Field(Kind.SHAPE, (0,)),
        "max_tool_calls": Field(Kind.SHAPE),
        "background": Field(Kind.SHAPE, (False,)),
        "previous_response_id": Field(Kind.SHAPE),
        "conversation": Field(Kind.SHAPE),
        "prompt": Field(Kind.SHAPE),
        "service_tier": Field(Kind.INFO, ("auto", "default")),
        "prompt_cache_retention": Field(Kind.INFO),
        "store": Field(Kind.INFO, (False,)),
        "metadata": Field(Kind.INFO, ({},)),
        "client_metadata": Field(Kind.INFO, ({},)),
        "stream_options": Field(Kind.INFO, ({},)),
    }
)
# What to tell the client about the refusals that have a way out.
_WHY: Mapping[str, str] = MappingProxyType(
    {
        "truncation": "cannot drop earlier input to fit the context window (truncation: auto)",
        "top_logprobs": "returns no token log probabilities",
        "background": "cannot run a response in the background",
        "previous_response_id": _STATE,
        "conversation": _STATE,
        "prompt": "cannot use a prompt template stored at OpenAI",
    }
)

# reasoning.summary values that ask for the reasoning text (OpenAI's names).
SUMMARY_MODES = frozenset({"auto", "concise", "detailed"})

_NO_EFFORT = frozenset({"none"})
_MIN_THINKING = 1024  # Anthropic's minimum thinking budget
_MAX_OUTPUT = 32000  # the most output tokens every Anthropic thinking model takes

# Tool names both Anthropic and chat completions accept.
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAMESPACE_SEPARATOR = "__"

_WEB_SEARCH_TYPES = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26"})
ANTHROPIC_WEB_SEARCH = "web_search_20250305"
_WEB_SEARCH_NAME = "web_search"
# Parts of an `include` list that ask for something a translation cannot produce.
_INCLUDE_REFUSED: Mapping[str, str] = MappingProxyType(
    {"message.output_text.logprobs": "returns no token log probabilities"}
)

# Reasoning items made from Anthropic thinking blocks carry the blocks themselves (text and
# signature, which Anthropic needs back with tool results) in `encrypted_content`.
THINKING_PREFIX = "llmproxy-thinking-v1:"
_THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def pack_thinking(blocks: Sequence[Mapping[str, Any]]) -> str:
    return THINKING_PREFIX + base64.b64encode(orjson.dumps(list(blocks))).decode()


def unpack_thinking(encrypted: Any) -> list[dict[str, Any]] | None:
    """The thinking blocks a reasoning item of ours carries, or None (another vendor's)."""
    if not isinstance(encrypted, str) or not encrypted.startswith(THINKING_PREFIX):
        return None
    try:
        blocks = orjson.loads(base64.b64decode(encrypted[len(THINKING_PREFIX) :], validate=True))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(blocks, list) or not all(
        isinstance(b, dict) and b.get("type") in _THINKING_BLOCKS for b in blocks
    ):
        return None
    return blocks


# --------------------------------------------------------------------------- common


class _Refused(Exception):
    """A request field the target cannot carry (turned into `Translation.refuse` by the
    public translations, which name the target API)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def _screen(body: Mapping[str, Any], t: Translation, target: str) -> None:
    """Refuse (with a way out, where there is one) or drop what is not carried."""
    for name, why in _WHY.items():
        value = body.get(name)
        if value is not None and not neutral(RESPONSES_FIELDS[name], value):
            t.refuse(name, f"{target} {why}")
    t.screen(body, CARRIED, RESPONSES_FIELDS, target)


def input_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`input` as a list of items: a string is one user message; an item with a `role` and
    no `type` is a message (as the SDKs send them)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    items: list[dict[str, Any]] = []
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, dict):
            items.append({"type": "message", **item} if "type" not in item else item)
    return items


def _text_parts(content: Any) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """A message's content as (index, part); a string is one text part."""
    if isinstance(content, str):
        yield 0, {"type": "input_text", "text": content}
        return
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if isinstance(part, dict):
            yield j, part


_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL, or None."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return media_type, data
    return None


# How one content part becomes the target's: (the part, where it is) -> the target's part,
# or None for a part that carries nothing (an empty text).
PartRenderer = Callable[[Mapping[str, Any], str], "dict[str, Any] | None"]


def _render_parts(
    content: Any, where: str, renderers: Mapping[str, PartRenderer]
) -> list[dict[str, Any]]:
    """A message's content parts in the target API; a kind it has no renderer for is refused."""
    out: list[dict[str, Any]] = []
    for j, part in _text_parts(content):
        kind = part.get("type")
        render = renderers.get("text" if kind in _TEXT_PARTS else str(kind))
        if render is None:
            raise _Refused(f"{where}[{j}].type", f"has no equivalent of '{kind}' content")
        rendered = render(part, f"{where}[{j}]")
        if rendered is not None:
            out.append(rendered)
    return out


def _text(part: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    text = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
    return {"type": "text", "text": str(text)} if text else None


def _image_url(part: Mapping[str, Any], where: str) -> str:
    url = part.get("image_url")
    if not isinstance(url, str):
        raise _Refused(
            f"{where}.file_id", "cannot read files stored at OpenAI: send the image as a URL"
        )
    return url


def _function_output(output: Any) -> Iterator[Mapping[str, Any]]:
    """A function_call_output's `output` as content parts (a string is one text part)."""
    for _, part in _text_parts(output):
        yield part


def _output_text(output: Any) -> str:
    return "".join(
        str(part.get("text", ""))
        for part in _function_output(output)
        if part.get("type") in _TEXT_PARTS
    )


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True, slots=True)
class Function:
    """A function tool as the target sees it (namespaced tools under their flat name)."""

    name: str  # the flat name the vendor sees
    description: str
    parameters: dict[str, Any]
    strict: bool


@dataclass(slots=True)
class Toolset:
    """The request's tools, flattened for a vendor without namespaces or hosted tools.

    `restore` maps a flat name the vendor called back to (name, namespace)."""

    functions: list[Function] = field(default_factory=list)
    web_search: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    namespaces: dict[str, tuple[str, str]] = field(default_factory=dict)  # flat -> (ns, name)

    @classmethod
    def of(cls, body: Mapping[str, Any], *, web_search: bool) -> Toolset:
        toolset = cls()
        tools = body.get("tools")
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):
            if not isinstance(tool, dict):
                continue
            kind = tool.get("type")
            if kind == "function":
                toolset._function(tool, f"tools[{i}]", None)
            elif kind == "namespace":
                toolset._namespace(tool, i)
            elif kind in _WEB_SEARCH_TYPES and web_search:
                toolset.web_search.append((i, tool))
            else:
                raise _Refused(f"tools[{i}].type", f"has no equivalent of the hosted tool '{kind}'")
        names = [f.name for f in toolset.functions]
        if toolset.web_search:
            names.append(_WEB_SEARCH_NAME)
        for name in names:
            if names.count(name) > 1:
                raise _Refused(
                    "tools", f"would see two tools named '{name}' once namespaces are flattened"
                )
        return toolset

    def _function(self, tool: Mapping[str, Any], where: str, namespace: str | None) -> None:
        name = tool.get("name")
        if not isinstance(name, str):
            raise _Refused(f"{where}.name", "needs a name for every function tool")
        flat = self.flat(name, namespace)
        if not _TOOL_NAME_RE.match(flat):
            raise _Refused(
                f"{where}.name",
                f"accepts tool names of at most 64 letters, digits, '_' or '-' ('{flat}')",
            )
        if namespace is not None:
            self.namespaces[flat] = (namespace, name)
        parameters = tool.get("parameters")
        self.functions.append(
            Function(
                flat,
                str(tool.get("description") or ""),
                parameters
                if isinstance(parameters, dict)
                else {"type": "object", "properties": {}},
                tool.get("strict") is True,
            )
        )

    def _namespace(self, tool: Mapping[str, Any], i: int) -> None:
        namespace = tool.get("name")
        if not isinstance(namespace, str):
            raise _Refused(f"tools[{i}].name", "needs a name for every namespace tool")
        for j, inner in enumerate(tool.get("tools") or ()):
            if not isinstance(inner, dict) or inner.get("type") != "function":
                kind = inner.get("type") if isinstance(inner, dict) else None
                raise _Refused(
                    f"tools[{i}].tools[{j}].type", f"has no equivalent of a '{kind}' tool"
                )
            self._function(inner, f"tools[{i}].tools[{j}]", namespace)

    @staticmethod
    def flat(name: str, namespace: str | None) -> str:
        return name if not namespace else f"{namespace}{NAMESPACE_SEPARATOR}{name}"

    def restore(self, flat: str) -> tuple[str, str | None]:
        """The client's (name, namespace) of a tool the vendor called by its flat name."""
        found = self.namespaces.get(flat)
        return (found[1], found[0]) if found is not None else (flat, None)

    def allowed(self, choice: Any) -> Toolset:
        """Only the tools an `allowed_tools` choice lets the model call (the same answer:
        the model cannot call the others)."""
        if not (isinstance(choice, dict) and choice.get("type") == "allowed_tools"):
            return self
        names = set()
        for tool in choice.get("tools") or ():
            if isinstance(tool, dict):
                kind = tool.get("type")
                if kind in _WEB_SEARCH_TYPES:
                    names.add(_WEB_SEARCH_NAME)
                elif isinstance(tool.get("name"), str):
                    names.add(self.flat(tool["name"], tool.get("namespace")))
        return Toolset(
            [f for f in self.functions if f.name in names],
            self.web_search if _WEB_SEARCH_NAME in names else [],
            self.namespaces,
        )


def _choice_name(choice: Mapping[str, Any], toolset: Toolset) -> str | None:
    """The flat name of the one tool a `tool_choice` object forces, if it forces one."""
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        return toolset.flat(choice["name"], choice.get("namespace"))
    if kind in _WEB_SEARCH_TYPES:
        return _WEB_SEARCH_NAME
    return None


def _mode(choice: Any) -> str:
    """auto | none | required | forced (one named tool)."""
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict):
        if choice.get("type") == "allowed_tools":
            return "required" if choice.get("mode") == "required" else "auto"
        return "forced"
    return "auto"


def _effort(body: Mapping[str, Any]) -> str | None:
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    return effort if isinstance(effort, str) and effort not in _NO_EFFORT else None


def _check_include(body: Mapping[str, Any]) -> None:
    include = body.get("include")
    for i, value in enumerate(include if isinstance(include, list) else ()):
        why = _INCLUDE_REFUSED.get(value) if isinstance(value, str) else None
        if why is not None:
            raise _Refused(f"include[{i}]", why)


def _text_format(body: Mapping[str, Any], t: Translation, target: str) -> dict[str, Any] | None:
    """text.format when it asks for JSON ({"type": "json_schema" | "json_object", ...})."""
    text = body.get("text")
    if not isinstance(text, dict):
        return None
    if text.get("verbosity") is not None:
        t.drop("text.verbosity", f"{target} has no equivalent")
    fmt = text.get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") not in ("json_schema", "json_object"):
        raise _Refused("text.format.type", f"has no '{fmt.get('type')}' output format")
    return fmt


def _end_user(body: Mapping[str, Any]) -> str | None:
    for name in ("safety_identifier", "user"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    return None


# --------------------------------------------------------------------------- Anthropic


def _anthropic_image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = _image_url(part, where)
    inline = _data_url(url)
    if inline is not None:
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": inline[0], "data": inline[1]},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _anthropic_document(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    data = part.get("file_data")
    inline = _data_url(data) if isinstance(data, str) else None
    if inline is not None:
        source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
    elif isinstance(part.get("file_url"), str):
        source = {"type": "url", "url": part["file_url"]}
    else:
        raise _Refused(
            f"{where}.file_id",
            "cannot read files stored at OpenAI: send the file as file_data or file_url",
        )
    block: dict[str, Any] = {"type": "document", "source": source}
    if isinstance(part.get("filename"), str):
        block["title"] = part["filename"]
    return block


_ANTHROPIC_PARTS: Mapping[str, PartRenderer] = MappingProxyType(
    {
        "text": _text,
        "refusal": _text,
        "input_image": _anthropic_image,
        "input_file": _anthropic_document,
    }
)


def _anthropic_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    return _render_parts(content, where, _ANTHROPIC_PARTS)


def _turn(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add blocks to the conversation; consecutive blocks of one role form one turn."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": list(blocks)})


def _anthropic_conversation(
    body: Mapping[str, Any], toolset: Toolset
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) of the request's instructions and input items."""
    system: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        system.append({"type": "text", "text": instructions})
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(input_items(body)):
        kind = item.get("type")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            blocks = _anthropic_blocks(item.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                if any(b["type"] != "text" for b in blocks):
                    raise _Refused(
                        f"{where}.content", "takes only text in system and developer messages"
                    )
                system.extend(blocks)
            else:
                _turn(messages, "assistant" if role == "assistant" else "user", blocks)
        elif kind == "function_call":
            name = toolset.flat(str(item.get("name", "")), item.get("namespace"))
            use = {
                "type": "tool_use",
                "id": str(item.get("call_id", "")),
                "name": name,
                "input": tool_input(item.get("arguments")),
            }
            _turn(messages, "assistant", [use])
        elif kind == "function_call_output":
            _turn(messages, "user", [_tool_result(item, f"{where}.output")])
        elif kind == "reasoning":
            thinking = unpack_thinking(item.get("encrypted_content"))
            if thinking:
                _turn(messages, "assistant", thinking)
        elif kind == "web_search_call":
            continue
        else:
            raise _Refused(f"{where}.type", f"has no equivalent of '{kind}' input items")
    return system, messages


def _tool_result(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A function_call_output as a tool_result; one without a call_id (Codex adds such
    outputs of its own tools) as text the model can read."""
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        name = Toolset.flat(str(item.get("name") or "tool"), item.get("namespace"))
        return {"type": "text", "text": f"[output of {name}]\n{_output_text(item.get('output'))}"}
    output = item.get("output")
    content: Any = output if isinstance(output, str) else _anthropic_blocks(output, where)
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


def _anthropic_tools(toolset: Toolset, t: Translation) -> list[dict[str, Any]]:
    """Function tools (`strict` where the model can hold arguments to the schema) and the
    hosted web search as Anthropic's."""
    tools: list[dict[str, Any]] = []
    for f in toolset.functions:
        tool: dict[str, Any] = {
            "name": f.name,
            "description": f.description,
            "input_schema": f.parameters,
        }
        if (
            f.strict
            and anthropic_structured_outputs(t.model)
            and anthropic_expressible(f.parameters)
        ):
            tool.update(input_schema=to_anthropic(f.parameters), strict=True)
        elif f.strict:
            t.drop(
                "tools[].strict",
                f"model {t.model} cannot hold tool arguments to this schema (strict tool use "
                "needs Claude 4.5 or later and a non-recursive schema)",
            )
        tools.append(tool)
    for i, hosted in toolset.web_search:
        search: dict[str, Any] = {"type": ANTHROPIC_WEB_SEARCH, "name": _WEB_SEARCH_NAME}
        filters = hosted.get("filters")
        domains = filters.get("allowed_domains") if isinstance(filters, dict) else None
        if domains:
            search["allowed_domains"] = list(domains)
        location = hosted.get("user_location")
        if isinstance(location, dict):
            search["user_location"] = {
                k: v
                for k, v in location.items()
                if k in ("type", "city", "region", "country", "timezone") and v is not None
            }
        if hosted.get("search_context_size") is not None:
            t.drop(f"tools[{i}].search_context_size", "Anthropic's web search has no such setting")
        if hosted.get("external_web_access") is False:
            t.drop(
                f"tools[{i}].external_web_access",
                "Anthropic's web search reads the live web; it has no cached-only mode",
            )
        tools.append(search)
    return tools


def _anthropic_tool_choice(choice: Any, toolset: Toolset, parallel: Any) -> dict[str, Any] | None:
    mode = _mode(choice)
    mapped: dict[str, Any] | None
    if mode == "none":
        mapped = {"type": "none"}
    elif mode == "required":
        mapped = {"type": "any"}
    elif mode == "forced" and isinstance(choice, dict):
        name = _choice_name(choice, toolset)
        if name is None:
            raise _Refused("tool_choice.type", f"cannot force a '{choice.get('type')}'")
        mapped = {"type": "tool", "name": name}
    else:
        mapped = {"type": "auto"} if parallel is False else None
    if parallel is False and mapped is not None and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    return mapped


def _translated(
    body: Mapping[str, Any], t: Translation, target: str, build: Callable[[Toolset], dict[str, Any]]
) -> dict[str, Any]:
    """What both translations do around building the target request: screen the fields,
    check `include`, flatten the tools, name the target in a refusal, and keep the request
    for the answer (which echoes it)."""
    _screen(body, t, target)
    t.request = body
    try:
        _check_include(body)
        return build(Toolset.of(body, web_search=target == _MESSAGES_API))
    except _Refused as refused:
        t.refuse(refused.field, f"{target} {refused.detail}")


_MESSAGES_API = "Anthropic's Messages API"
_CHAT_API = "the chat completions API"


def responses_to_messages(body: Mapping[str, Any], t: Translation) -> dict[str, Any]:
    """A Responses API request -> an Anthropic Messages request for `t.model`."""
    return _translated(body, t, _MESSAGES_API, lambda tools: _messages(body, t, tools))


def _messages(body: Mapping[str, Any], t: Translation, toolset: Toolset) -> dict[str, Any]:
    choice = body.get("tool_choice")
    system, messages = _anthropic_conversation(body, toolset)
    limit = body.get("max_output_tokens")
    out: dict[str, Any] = {
        "model": t.model,
        "messages": messages,
        "max_tokens": limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = system
    if body.get("stream") is True:
        out["stream"] = True
    user = _end_user(body)
    if user is not None:
        out["metadata"] = {"user_id": user}
    if isinstance(body.get("prompt_cache_key"), str):
        out["cache_control"] = {"type": "ephemeral"}
    offered = toolset.allowed(choice)
    if offered.functions or offered.web_search:
        out["tools"] = _anthropic_tools(offered, t)
        mapped = _anthropic_tool_choice(choice, toolset, body.get("parallel_tool_calls"))
        if mapped is not None:
            out["tool_choice"] = mapped
    fmt = _text_format(body, t, _MESSAGES_API)
    if fmt is not None:
        schema = fmt.get("schema") if fmt.get("type") == "json_schema" else {"type": "object"}
        if not (isinstance(schema, dict) and anthropic_structured_outputs(t.model)):
            raise _Refused("text.format", f"takes no structured output on model {t.model}")
        if not anthropic_expressible(schema):
            raise _Refused("text.format.schema", "cannot hold an answer to this schema")
        out["output_config"] = {"format": {"type": "json_schema", "schema": to_anthropic(schema)}}
    _thinking(body, out, limit, t)
    _sampling(body, out, t)
    return out


def _thinking(body: Mapping[str, Any], out: dict[str, Any], limit: Any, t: Translation) -> None:
    """reasoning.effort as an Anthropic thinking budget, within max_output_tokens (which
    counts reasoning in both APIs), where the model can think now."""
    effort = _effort(body)
    if effort is None:
        return
    budget = THINKING_BUDGET.get(effort)
    client_max = isinstance(limit, int) and limit > 0
    if budget is not None:
        budget = min(budget, limit - 1 if client_max else _MAX_OUTPUT - DEFAULT_MAX_TOKENS)
    reason = None
    if budget is None:
        reason = f"the effort {effort!r} has no Anthropic thinking budget"
    elif not anthropic_thinks(t.model):
        reason = f"model {t.model} has no extended thinking"
    elif (out.get("tool_choice") or {}).get("type") in ("any", "tool"):
        reason = "Anthropic cannot think while a tool call is forced"
    elif not _thinking_blocks_kept(out["messages"]):
        reason = (
            "Anthropic thinks after tool results only with the thinking of the turn that "
            "called the tools (a reasoning item with its encrypted_content)"
        )
    elif budget < _MIN_THINKING:
        reason = f"max_output_tokens leaves no room for {_MIN_THINKING} thinking tokens"
    if reason is not None:
        t.drop("reasoning.effort", reason)
        return
    assert budget is not None
    if not client_max:
        out["max_tokens"] = DEFAULT_MAX_TOKENS + budget
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _thinking_blocks_kept(messages: list[dict[str, Any]]) -> bool:
    """False if the request answers tool calls whose turn came without its thinking."""
    last = messages[-1] if messages else None
    if last is None or not any(b.get("type") == "tool_result" for b in last["content"]):
        return True
    turn = messages[-2] if len(messages) > 1 else None
    return turn is not None and turn["content"][0].get("type") in _THINKING_BLOCKS


def _sampling(body: Mapping[str, Any], out: dict[str, Any], t: Translation) -> None:
    """temperature (OpenAI's range is 0..2, Anthropic's 0..1) and top_p; Anthropic takes
    only one of them, and neither while it thinks."""
    thinking = "thinking" in out
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        if thinking and temperature != 1:
            t.drop("temperature", "Anthropic takes no temperature but 1 while thinking")
        else:
            out["temperature"] = min(float(temperature), 1.0)
    if isinstance(top_p, int | float) and not isinstance(top_p, bool) and top_p != 1:
        if thinking:
            t.drop("top_p", "Anthropic takes no top_p while thinking")
        elif "temperature" in out:
            t.drop("top_p", "Anthropic's current models take temperature or top_p, not both")
        else:
            out["top_p"] = top_p


# --------------------------------------------------------------------------- chat


def _chat_image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    image: dict[str, Any] = {"url": _image_url(part, where)}
    if isinstance(part.get("detail"), str):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _chat_file(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(part.get("file_data"), str):
        raise _Refused(
            f"{where}.file_id", "cannot read files stored at OpenAI: send the file as file_data"
        )
    file = {"file_data": part["file_data"]}
    if isinstance(part.get("filename"), str):
        file["filename"] = part["filename"]
    return {"type": "file", "file": file}


_CHAT_PARTS: Mapping[str, PartRenderer] = MappingProxyType(
    {"text": _text, "refusal": _text, "input_image": _chat_image, "input_file": _chat_file}
)


def _chat_parts(content: Any, where: str) -> list[dict[str, Any]]:
    return _render_parts(content, where, _CHAT_PARTS)


def _chat_content(parts: list[dict[str, Any]]) -> Any:
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _chat_messages(body: Mapping[str, Any], toolset: Toolset) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(input_items(body)):
        kind = item.get("type")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            parts = _chat_parts(item.get("content"), f"{where}.content")
            if role == "assistant":
                message = _assistant(messages)
                text = "".join(p.get("text", "") for p in parts)
                message["content"] = (message.get("content") or "") + text or None
            else:
                chat_role = "system" if role in ("system", "developer") else "user"
                messages.append({"role": chat_role, "content": _chat_content(parts)})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {
                    "name": toolset.flat(str(item.get("name", "")), item.get("namespace")),
                    "arguments": str(item.get("arguments") or "{}"),
                },
            }
            _assistant(messages).setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            text = _output_text(item.get("output"))
            if isinstance(call_id, str) and call_id:
                messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            else:
                name = Toolset.flat(str(item.get("name") or "tool"), item.get("namespace"))
                messages.append({"role": "user", "content": f"[output of {name}]\n{text}"})
        elif kind in ("reasoning", "web_search_call"):
            continue  # a vendor's private reasoning; a record of a search (module docstring)
        else:
            raise _Refused(f"{where}.type", f"has no equivalent of '{kind}' input items")
    return messages


def _assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message the next part of an assistant turn belongs to (a text reply
    and the tool calls after it form one chat message)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    message: dict[str, Any] = {"role": "assistant", "content": None}
    messages.append(message)
    return message


def responses_to_chat(body: Mapping[str, Any], t: Translation) -> dict[str, Any]:
    """A Responses API request -> an OpenAI chat completions request for `t.model`."""
    return _translated(body, t, _CHAT_API, lambda tools: _chat(body, t, tools))


def _chat(body: Mapping[str, Any], t: Translation, toolset: Toolset) -> dict[str, Any]:
    choice = body.get("tool_choice")
    out: dict[str, Any] = {"model": t.model, "messages": _chat_messages(body, toolset)}
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and limit > 0:
        out["max_completion_tokens"] = limit
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    effort = _effort(body)
    if effort is not None:
        out["reasoning_effort"] = effort
    user = _end_user(body)
    if user is not None:
        out["user"] = user
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    offered = toolset.allowed(choice)
    if offered.functions:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": f.name,
                    "description": f.description,
                    "parameters": f.parameters,
                    **({"strict": True} if f.strict else {}),
                },
            }
            for f in offered.functions
        ]
        mode = _mode(choice)
        if mode == "forced" and isinstance(choice, dict):
            forced = _choice_name(choice, toolset)
            if forced is None:
                raise _Refused("tool_choice.type", f"cannot force a '{choice.get('type')}'")
            out["tool_choice"] = {"type": "function", "function": {"name": forced}}
        elif mode in ("none", "required"):
            out["tool_choice"] = mode
        if body.get("parallel_tool_calls") is False:
            out["parallel_tool_calls"] = False
    if isinstance(body.get("prompt_cache_key"), str):
        out["prompt_cache_key"] = body["prompt_cache_key"]
    fmt = _text_format(body, t, _CHAT_API)
    if fmt is not None and fmt.get("type") == "json_schema":
        schema: dict[str, Any] = {
            "name": str(fmt.get("name") or "response"),
            "schema": fmt.get("schema") if isinstance(fmt.get("schema"), dict) else {},
        }
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None:
        out["response_format"] = {"type": "json_object"}
    return out
