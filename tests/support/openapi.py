"""Checks a JSON value against the subset of JSON Schema our OpenAPI document uses."""

from __future__ import annotations

from typing import Any

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}
KNOWN = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "$ref"}


def conforms(value: Any, schema: dict, document: dict, at: str = "$") -> list[str]:
    """Every way `value` breaks `schema` ($ref resolved in `document`); [] when it conforms."""
    unknown = set(schema) - KNOWN
    assert not unknown, f"{at}: the checker does not know {sorted(unknown)}"
    if "$ref" in schema:
        target = document
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return conforms(value, target, document, at)
    problems = _scalar(value, schema, at)
    if problems:
        return problems
    if isinstance(value, dict):
        return _object(value, schema, document, at)
    if isinstance(value, list) and "items" in schema:
        return [
            p
            for i, v in enumerate(value)
            for p in conforms(v, schema["items"], document, f"{at}[{i}]")
        ]
    return []


def _scalar(value: Any, schema: dict, at: str) -> list[str]:
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[name](value) for name in types):
            return [f"{at}: expected {types}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: expected one of {schema['enum']}, got {value!r}"]
    if "const" in schema and value != schema["const"]:
        return [f"{at}: expected {schema['const']!r}, got {value!r}"]
    return []


def _object(value: dict, schema: dict, document: dict, at: str) -> list[str]:
    problems = [f"{at}: missing {key!r}" for key in schema.get("required", ()) if key not in value]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            problems += conforms(item, properties[key], document, f"{at}.{key}")
        elif extra is False:
            problems.append(f"{at}: unexpected {key!r}")
        elif isinstance(extra, dict):
            problems += conforms(item, extra, document, f"{at}.{key}")
    return problems
