"""JSON values generated from a JSON schema: tool arguments and structured answers.

A client that offers tools or asks for a JSON answer validates what comes back against
its own schema (pydantic models in ``chat.completions.parse``, ``responses.parse`` and
Anthropic's ``messages.parse``), so a fake that answered ``{}`` or a fixed string would
make those clients fail, or worse, let a test pass without seeing what a user sees. This
module is the one generator every fake uses (OpenAI chat, the Responses API, Anthropic,
Gemini): given a schema it returns a value that validates against it.

Covered: ``type`` (also a list of types, and Gemini's upper-case names), ``enum``,
``const``, ``anyOf``/``oneOf``/``allOf``, local ``$ref`` (``#/$defs/...``,
``#/definitions/...``, any JSON pointer; recursion is bounded), objects (every declared
property; ``required`` names without a declared schema too; ``minProperties`` when extra
properties are allowed), arrays (``items``, ``prefixItems``, ``minItems``/``maxItems``,
``uniqueItems``), strings (``format`` as Anthropic's structured outputs list them,
``minLength``/``maxLength``, a ``pattern`` when a plain candidate matches it), numbers and
integers (``minimum``/``maximum``, exclusive bounds in both drafts, ``multipleOf``),
booleans and null.

Deterministic: the same schema and seed give the same value in any process. A plain
string is ``"test"`` (the fakes have always answered that, and tests rely on it); other
choices (numbers, booleans, enum members, ``anyOf`` branches, array lengths) come from a
``random.Random`` seeded by the request (``request_seed``), so a test is repeatable and
two different requests still see different values.

Never raises on a malformed schema: clients (and the fuzz tests) send anything, and a
fake vendor that answered a 500 to a schema it did not understand would be blamed for
the proxy's translation.
"""

from __future__ import annotations

import math
import random
import re
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["object_for", "request_seed", "value_for"]

#: How deep ``$ref``s may nest before optional parts (non-required properties, optional
#: array items, non-null branches) are left out, so recursive schemas terminate.
_MAX_DEPTH = 8
#: A ``$ref`` chain this long is a cycle with no way out (``A -> B -> A``): give up.
_MAX_REF_HOPS = 32
#: Past this nesting a schema that still demands more (required self-references) gets
#: null: there is no finite valid value to find.
_HARD_DEPTH = 64
#: Bounds on what a schema may demand of one answer (a ``minItems`` of 10**9 is garbage, and
#: a fake must answer it without exhausting memory): items and properties per container,
#: characters per string, and values in all.
_MAX_ITEMS = 64
_MAX_STRING = 4096
_MAX_VALUES = 10_000

_PLAIN_STRING = "test"

#: Values for the string formats Anthropic's structured outputs accept (and pydantic
#: emits), each one pydantic's own validators accept.
_FORMATS: Mapping[str, str] = {
    "date-time": "2025-01-{day:02d}T12:00:00Z",
    "date": "2025-01-{day:02d}",
    "time": "12:{day:02d}:00",
    "duration": "P{day}D",
    "email": "test{day}@example.com",
    "idn-email": "test{day}@example.com",
    "hostname": "host{day}.example.com",
    "idn-hostname": "host{day}.example.com",
    "uri": "https://example.com/test/{day}",
    "iri": "https://example.com/test/{day}",
    "uri-reference": "/test/{day}",
    "iri-reference": "/test/{day}",
    "ipv4": "192.0.2.{day}",
    "ipv6": "2001:db8::{day}",
    "regex": "^test$",
    "json-pointer": "/test/{day}",
}

#: Strings tried, in order, against a ``pattern`` (a pattern none matches gets "test").
_PATTERN_CANDIDATES: tuple[str, ...] = (
    _PLAIN_STRING, "a", "A", "0", "1", "abc", "ABC", "a1", "A1", "test-1", "test_1",
    "2025-01-01", "12:00", "test@example.com", "https://example.com", "",
)  # fmt: skip


def request_seed(*parts: Any) -> int:
    """A stable 32-bit seed from JSON-able request parts (the conversation, a tool name)."""
    try:
        data = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = repr(parts).encode()
    return zlib.crc32(data)


def value_for(schema: Any, seed: int) -> Any:
    """A JSON value valid against ``schema`` (a dict; ``True``/``{}`` accept anything)."""
    return _Generator(schema, seed).value(schema, 0)


def object_for(schema: Any, seed: int) -> dict[str, Any]:
    """Like ``value_for`` but always an object: tool arguments are one, whatever the schema."""
    value = value_for(schema, seed)
    return value if isinstance(value, dict) else {}


class _Generator:
    """One generation: the root (for ``$ref``), the seeded RNG and the array position."""

    __slots__ = ("_budget", "_index", "_rng", "_root")

    def __init__(self, root: Any, seed: int) -> None:
        self._root = root
        self._rng = random.Random(seed)
        # Position within the innermost array being filled: items of an array of plain
        # strings differ ("test", "test 2"...), so ``uniqueItems`` holds.
        self._index = 0
        self._budget = _MAX_VALUES

    # ------------------------------------------------------------------ dispatch

    def value(self, schema: Any, depth: int) -> Any:
        self._budget -= 1
        if depth > _HARD_DEPTH or self._budget < 0:
            return None
        schema = self._resolve(schema)
        if not isinstance(schema, dict):
            return self._plain_string() if schema is not False else None
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self._rng.randrange(len(enum))]
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.value(self._merge(schema, all_of), depth + 1)
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in schema.items() if k not in (key, "title", "description")}
                branch = self._pick_branch(branches, depth)
                return self.value(self._merge(rest, [branch]) if rest else branch, depth + 1)
        kind = self._type_of(schema, depth)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _resolve(self, schema: Any) -> Any:
        """Follow ``$ref`` (local JSON pointers only) until a schema without one."""
        for _ in range(_MAX_REF_HOPS):
            if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
                return schema
            target = self._pointer(schema["$ref"])
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            if not siblings:
                schema = target
            elif isinstance(target, dict):
                schema = {**target, **siblings}  # 2020-12: $ref applies next to its siblings
            else:
                schema = siblings
        return {}

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}  # remote references: nothing to fetch, accept anything
        node: Any = self._root
        for raw in ref[1:].split("/")[1:]:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node

    def _merge(self, base: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
        """``allOf`` (or a branch with its parent's constraints) as one schema."""
        out = {k: v for k, v in base.items() if k != "allOf"}
        for part in parts:
            part = self._resolve(part)
            if not isinstance(part, dict):
                continue
            for key, value in part.items():
                if key == "properties" and isinstance(value, dict):
                    out["properties"] = {**(out.get("properties") or {}), **value}
                elif key == "required" and isinstance(value, list):
                    out["required"] = [*(out.get("required") or []), *value]
                else:
                    out[key] = value
        return out

    def _pick_branch(self, branches: list[Any], depth: int) -> Any:
        """A seeded branch; ``null`` only when it is the only one, or when nesting is deep
        (the way out of a recursive schema)."""
        nullable = [b for b in branches if self._is_null(b)]
        others = [b for b in branches if not self._is_null(b)]
        if depth >= _MAX_DEPTH:
            if nullable:
                return nullable[0]
            plain = [b for b in others if not (isinstance(b, dict) and "$ref" in b)]
            others = plain or others
        if not others:
            return branches[0]
        return others[self._rng.randrange(len(others))]

    def _is_null(self, schema: Any) -> bool:
        schema = self._resolve(schema)
        return isinstance(schema, dict) and schema.get("type") in ("null", "NULL")

    def _type_of(self, schema: dict[str, Any], depth: int) -> str:
        raw = schema.get("type")
        if isinstance(raw, list):
            names = [t.lower() for t in raw if isinstance(t, str)]
            useful = [t for t in names if t != "null"]
            if depth >= _MAX_DEPTH and "null" in names:
                return "null"
            return useful[0] if useful else "null" if names else self._implied_type(schema)
        if isinstance(raw, str):
            return raw.lower()
        return self._implied_type(schema)

    @staticmethod
    def _implied_type(schema: dict[str, Any]) -> str:
        if "properties" in schema or "required" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if "minimum" in schema or "maximum" in schema or "multipleOf" in schema:
            return "number"
        return "string"

    # ------------------------------------------------------------------ types

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        raw_required = schema.get("required")
        required = (
            [r for r in raw_required if isinstance(r, str)]
            if isinstance(raw_required, list)
            else []
        )
        deep = depth >= _MAX_DEPTH
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if deep and name not in required:
                continue
            out[name] = self.value(sub, depth + 1)
        for name in required:
            if name not in out:
                out[name] = self._plain_string()
        extra = schema.get("additionalProperties")
        wanted = schema.get("minProperties")
        if isinstance(wanted, int) and extra is not False:
            wanted = min(wanted, _MAX_ITEMS)
            n = 0
            while len(out) < wanted:
                n += 1
                out[f"extra_{n}"] = self.value(extra if isinstance(extra, dict) else {}, depth + 1)
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        lo = min(_int_or(schema.get("minItems"), 0), _MAX_ITEMS)
        hi = min(_int_or(schema.get("maxItems"), max(lo, 2)), _MAX_ITEMS)
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-2019 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        wanted = lo if depth >= _MAX_DEPTH else max(lo, min(hi, 1 + self._rng.randrange(2)))
        wanted = max(wanted, min(len(prefix), hi))
        if items is False:
            wanted = min(wanted, len(prefix))
        unique = schema.get("uniqueItems") is True
        outer = self._index
        out: list[Any] = []
        seen: set[bytes] = set()
        attempts = 0
        while len(out) < wanted and attempts < wanted + 8:
            position = len(out)
            sub = prefix[position] if position < len(prefix) else items
            self._index = attempts  # a retry after a duplicate gets other strings
            value = self.value(sub, depth + 1)
            attempts += 1
            if unique:
                key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
                if key in seen:
                    continue
                seen.add(key)
            out.append(value)
        self._index = outer
        return out

    def _plain_string(self) -> str:
        return _PLAIN_STRING if not self._index else f"{_PLAIN_STRING} {self._index + 1}"

    def _string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        day = 1 + (self._rng.randrange(28) + self._index) % 28
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt].format(day=day)
        if fmt == "uuid":
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        text = self._plain_string()
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = _matching(pattern, text)
        lo = min(_int_or(schema.get("minLength"), 0), _MAX_STRING)
        hi = schema.get("maxLength")
        if len(text) < lo:
            text = (text * (lo // max(1, len(text)) + 1))[:lo] if text else "x" * lo
        if isinstance(hi, int) and not isinstance(hi, bool) and 0 <= hi < len(text):
            text = text[:hi]
        return text

    def _integer(self, schema: dict[str, Any]) -> int:
        lo, hi = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first = math.ceil(lo / step) * step
            count = int((hi - first) // step)
            return int(first + step * self._rng.randint(0, count)) if count >= 0 else int(first)
        return self._rng.randint(int(lo), int(hi)) if lo <= hi else int(lo)

    def _number(self, schema: dict[str, Any]) -> float | int:
        lo, hi = _bounds(schema, integer=False)
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
            first = math.ceil(lo / step)
            count = math.floor(hi / step) - first
            k = first + (self._rng.randint(0, int(count)) if count >= 0 else 0)
            return k * step if isinstance(step, int) else round(k * step, 10)
        if lo > hi:
            return lo
        value = round(lo + (hi - lo) * self._rng.random(), 2)
        if not lo <= value <= hi:
            value = (lo + hi) / 2
        return value


def _int_or(value: Any, default: int) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
    )


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float, float]:
    """Inclusive ``(low, high)`` from minimum/maximum and both drafts' exclusive bounds;
    a missing side is 100 away from the other (0..100 when neither is given)."""
    gap = 1.0 if integer else 0.01

    def num(key: str) -> float | None:
        value = schema.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        return float(value) if math.isfinite(value) else None

    lo, hi = num("minimum"), num("maximum")
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_lo is True and lo is not None:  # draft 4: a boolean beside minimum
        lo += gap
    elif (value := num("exclusiveMinimum")) is not None:
        lo = max(lo, value + gap) if lo is not None else value + gap
    if ex_hi is True and hi is not None:
        hi -= gap
    elif (value := num("exclusiveMaximum")) is not None:
        hi = min(hi, value - gap) if hi is not None else value - gap
    if integer:
        lo = math.ceil(lo) if lo is not None else None
        hi = math.floor(hi) if hi is not None else None
    if lo is None and hi is None:
        return 0.0, 100.0
    if lo is None:
        assert hi is not None
        return min(0.0, hi), hi
    if hi is None:
        return lo, max(lo + 100, 100.0)
    return lo, hi


def _matching(pattern: str, default: str) -> str:
    """The first candidate the pattern finds (JSON Schema patterns search, unanchored)."""
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError):
        return default
    for candidate in (default, *_PATTERN_CANDIDATES):
        if compiled.search(candidate):
            return candidate
    return default
