"""JSON schemas between OpenAI's strict mode and Anthropic's structured outputs.

Both vendors constrain decoding to a schema, and both accept only a subset of JSON Schema:

- Anthropic (`output_config.format`, strict tools) takes `type` (or a list of types),
  `properties`, `required`, `additionalProperties: false` (mandatory on every object),
  `items`, `minItems` of 0 or 1, `enum` and `const` of plain values, `anyOf`, `allOf`,
  local `$ref`/`$defs`, `description`, `title` and a fixed set of string formats; not
  recursive schemas, nor numeric, length or pattern constraints. `to_anthropic` rewrites
  a schema the way Anthropic's own SDK does (`anthropic.lib._parse._transform`): what
  Anthropic cannot enforce moves into the description, where the model still reads it.
- OpenAI's strict mode needs every object closed (`additionalProperties: false`) with all
  its properties `required`, and an object at the root; `openai_strict` says whether a
  schema qualifies (else it is sent non-strict, which guides rather than guarantees).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["anthropic_expressible", "openai_strict", "to_anthropic"]

_STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)
_DEFS = ("$defs", "definitions")


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _types(schema: Mapping[str, Any]) -> tuple[str, ...]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return (kind,)
    if isinstance(kind, list):
        return tuple(k for k in kind if isinstance(k, str))
    return ()


def to_anthropic(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` rewritten into what Anthropic's structured outputs accept."""
    rest = dict(schema)
    out: dict[str, Any] = {}
    for key in _DEFS:
        defs = rest.pop(key, None)
        if isinstance(defs, dict):
            out[key] = {name: to_anthropic(s) for name, s in defs.items() if isinstance(s, dict)}
    ref = rest.pop("$ref", None)
    if isinstance(ref, str):
        out["$ref"] = ref
        return out  # a reference carries nothing else Anthropic would read
    for key in ("description", "title"):
        if isinstance(rest.get(key), str):
            out[key] = rest.pop(key)
    enum = rest.get("enum")
    if isinstance(enum, list) and enum and all(map(_plain, enum)):
        out["enum"] = rest.pop("enum")
    if "const" in rest and _plain(rest["const"]):
        out["const"] = rest.pop("const")
    variants = rest.pop("anyOf", None) or rest.pop("oneOf", None)
    if isinstance(variants, list):
        out["anyOf"] = [to_anthropic(v) for v in variants if isinstance(v, dict)]
    every = rest.pop("allOf", None)
    if isinstance(every, list):
        out["allOf"] = [to_anthropic(v) for v in every if isinstance(v, dict)]
    types = _types(rest)
    if types:
        out["type"] = rest.pop("type")
    if "object" in types or "properties" in rest:
        props = rest.pop("properties", None)
        out["properties"] = {
            name: to_anthropic(s)
            for name, s in (props.items() if isinstance(props, dict) else ())
            if isinstance(s, dict)
        }
        rest.pop("additionalProperties", None)
        out["additionalProperties"] = False
        required = rest.pop("required", None)
        if isinstance(required, list):
            out["required"] = required
    if "string" in types and rest.get("format") in _STRING_FORMATS:
        out["format"] = rest.pop("format")
    if "array" in types or "items" in rest:
        items = rest.pop("items", None)
        if isinstance(items, dict):
            out["items"] = to_anthropic(items)
        if rest.get("minItems") in (0, 1):
            out["minItems"] = rest.pop("minItems")
    rest.pop("type", None)
    rest.pop("strict", None)
    if rest:  # constraints Anthropic cannot enforce: the model still reads them
        note = "{" + ", ".join(f"{k}: {_text(v)}" for k, v in rest.items()) + "}"
        described = out.get("description")
        out["description"] = f"{described}\n\n{note}" if described else note
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _refs(schema: Any, found: set[str]) -> None:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for value in schema.values():
            _refs(value, found)
    elif isinstance(schema, list):
        for value in schema:
            _refs(value, found)


def anthropic_expressible(schema: Mapping[str, Any]) -> bool:
    """False for a schema Anthropic's structured outputs refuse whatever the rewrite: a
    recursive one (a definition that reaches itself through `$ref`s), or one that refers
    outside itself."""
    defs: dict[str, Any] = {}
    for key in _DEFS:
        table = schema.get(key)
        if isinstance(table, dict):
            defs.update({f"#/{key}/{name}": s for name, s in table.items()})
    top: set[str] = set()
    _refs({k: v for k, v in schema.items() if k not in _DEFS}, top)
    edges: dict[str, set[str]] = {}
    for ref, target in defs.items():
        _refs(target, edges.setdefault(ref, set()))
    every = top.union(*edges.values()) if edges else top
    if any(ref != "#" and ref not in defs for ref in every):
        return False  # "#" (the root itself) counts as recursion below
    if "#" in every:
        return False
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def cyclic(ref: str) -> bool:
        seen = state.get(ref)
        if seen is not None:
            return seen == 1
        state[ref] = 1
        if any(cyclic(r) for r in edges.get(ref, ())):
            return True
        state[ref] = 2
        return False

    return not any(cyclic(ref) for ref in defs)


# Keywords OpenAI's strict mode rejects wherever they appear.
_NOT_STRICT = frozenset(
    {
        "allOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "patternProperties",
        "unevaluatedProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
    }
)


def _strict(schema: Any) -> bool:
    if isinstance(schema, list):
        return all(map(_strict, schema))
    if not isinstance(schema, dict):
        return True
    if _NOT_STRICT.intersection(schema):
        return False
    props = schema.get("properties")
    if "object" in _types(schema) or isinstance(props, dict):
        props = props if isinstance(props, dict) else {}
        if schema.get("additionalProperties") is not False:
            return False
        required = schema.get("required") or []
        if not isinstance(required, list) or set(required) != set(props):
            return False
    children: list[Any] = [schema[k] for k in ("items", "anyOf") if k in schema]
    for key in ("properties", "$defs", "definitions"):
        table = schema.get(key)
        if isinstance(table, dict):
            children.extend(table.values())
    return all(map(_strict, children))


def openai_strict(schema: Mapping[str, Any]) -> bool:
    """True if OpenAI's strict mode accepts `schema` as it is."""
    return "object" in _types(schema) and _strict(schema)
