"""The fakes' schema-driven value generator: valid, deterministic, never crashing.

Validity is checked by ``jsonschema`` and by pydantic itself (the schemas are the ones
``chat.completions.parse``, ``responses.parse`` and Anthropic's ``messages.parse`` send),
over many seeds so seeded choices (enum members, ``anyOf`` branches, array lengths,
numbers) are all exercised.
"""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Any, Literal

import hypothesis
import jsonschema
import pydantic
import pytest
from anthropic.lib._parse._transform import transform_schema
from hypothesis import strategies as st
from openai.lib._pydantic import to_strict_json_schema

from proxy.fakes.schema_values import object_for, request_seed, value_for


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    street: str
    zip: int | None


class Node(pydantic.BaseModel):
    name: str
    children: list[Node]


class Everything(pydantic.BaseModel):
    name: str
    age: int
    score: float
    ok: bool
    color: Color
    kind: Literal["a", "b"]
    tags: list[str]
    unique: set[str]
    home: Address
    work: Address | None
    when: datetime.datetime
    day: datetime.date
    uid: uuid.UUID
    tree: Node
    either: int | str
    counts: dict[str, int]
    bounded: int = pydantic.Field(ge=3, le=9)
    ratio: float = pydantic.Field(gt=0, lt=1)


SCHEMAS = {
    "pydantic": Everything.model_json_schema(),
    "openai-strict": to_strict_json_schema(Everything),
    "anthropic": transform_schema(Everything),
}


@pytest.mark.parametrize("flavour", sorted(SCHEMAS))
def test_values_validate_for_every_seed(flavour: str) -> None:
    schema = SCHEMAS[flavour]
    for seed in range(60):
        value = value_for(schema, seed)
        jsonschema.validate(value, schema)
        if flavour != "anthropic":  # Anthropic's transform moves ge/le into descriptions
            Everything.model_validate(value)


def test_deterministic_and_seeded() -> None:
    schema = SCHEMAS["openai-strict"]
    assert value_for(schema, 7) == value_for(schema, 7)
    assert len({repr(value_for(schema, seed)) for seed in range(10)}) > 1
    assert request_seed([{"role": "user", "content": "x"}]) == request_seed(
        [{"content": "x", "role": "user"}]
    )


def test_plain_strings_are_test_and_array_items_differ() -> None:
    """The fakes always answered ``{"city": "test"}``; tests elsewhere rely on it."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    assert value_for(schema, 123) == {"city": "test"}
    unique = {"type": "array", "items": {"type": "string"}, "minItems": 4, "uniqueItems": True}
    assert value_for(unique, 0) == ["test", "test 2", "test 3", "test 4"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "maximum": 5},
        {"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 6},
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "integer",
            "minimum": 4,
            "exclusiveMinimum": True,
            "maximum": 5,
        },
        {"type": "integer", "multipleOf": 7, "minimum": 10, "maximum": 30},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5},
        {"type": "number", "multipleOf": 0.25, "minimum": 1.1, "maximum": 2},
        {"type": "string", "minLength": 10, "maxLength": 12},
        {"type": "string", "maxLength": 2},
        {"type": "string", "pattern": "^[0-9]+$"},
        {"type": "string", "format": "uuid"},
        {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "boolean"}],
            "items": False,
        },
        {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3},
        {"type": "object", "minProperties": 2},
        {"type": ["null", "integer"]},
        {"const": {"fixed": [1, 2]}},
        {"enum": ["x", 3, None]},
        {
            "allOf": [
                {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
            ]
        },
        {"oneOf": [{"type": "null"}, {"type": "object", "properties": {"x": {"type": "string"}}}]},
        {"$defs": {"n": {"type": "integer", "minimum": 1}}, "$ref": "#/$defs/n"},
        {"definitions": {"n": {"type": "boolean"}}, "items": {"$ref": "#/definitions/n"}},
    ],
)
def test_keywords(schema: dict[str, Any]) -> None:
    for seed in range(20):
        jsonschema.validate(value_for(schema, seed), schema)


def test_recursion_is_bounded() -> None:
    recursive = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["next", "kids"],
            }
        },
        "$ref": "#/$defs/node",
    }
    value = value_for(recursive, 1)
    jsonschema.validate(value, recursive)
    assert value_for({"$ref": "#"}, 0) == "test"  # a ref to itself and nothing else
    assert value_for({"allOf": [{"$ref": "#"}]}, 0) is None  # no finite value: give up


def test_gemini_upper_case_types() -> None:
    schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}, "s": {"type": "STRING"}}}
    value = object_for(schema, 0)
    assert isinstance(value["n"], int) and value["s"] == "test"


def test_tool_arguments_are_always_an_object() -> None:
    assert object_for({"type": "string"}, 0) == {}
    assert object_for({}, 0) == {}
    assert object_for(None, 0) == {}


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "type",
                        "properties",
                        "items",
                        "required",
                        "anyOf",
                        "allOf",
                        "oneOf",
                        "enum",
                        "const",
                        "$ref",
                        "minimum",
                        "maximum",
                        "minItems",
                        "maxItems",
                        "minLength",
                        "pattern",
                        "format",
                        "multipleOf",
                        "additionalProperties",
                        "prefixItems",
                        "exclusiveMinimum",
                        "uniqueItems",
                        "minProperties",
                        "$defs",
                        "x",
                    ]
                ),
                inner,
                max_size=5,
            )
        ),
        max_leaves=20,
    ),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_never_raises_on_garbage(schema: Any, seed: int) -> None:
    value_for(schema, seed)
    object_for(schema, seed)
