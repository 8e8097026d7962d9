"""msgspec's JSON Schema as Litestar's OpenAPI objects, where Litestar's own translation falls short.

Litestar documents a msgspec Struct's fields, but loses what this module restores (its gaps are
known upstream: litestar#4575, "OpenAPI schema generation for msgspec.Structs is woefully lacking",
and litestar#3999). Delete each workaround the day Litestar's translation covers it:

- :func:`option_meta` writes every option's bounds twice, because Litestar copies a bound into the
  document only when it is truthy (``ge=0`` would be enforced but not documented);
- :func:`query_parameters` documents a query Struct that routes read in one conversion
  (:mod:`minato.web.query`) instead of through Litestar's parameters: there is no Litestar
  parameter to document it from.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar.openapi.spec import OpenAPIType, Parameter, Schema

from minato.ollama.options import MAX_STOP_SEQUENCES, OPTIONS, OptionSpec


def documented_bounds(spec: OptionSpec) -> dict[str, float] | None:
    """The bounds, once more for the OpenAPI document: Litestar copies a msgspec field's bounds into it
    only when they are truthy, so a bound of 0 (``temperature``, ``top_p``, ...) would be enforced but
    not documented; and the most ``stop`` values, which :func:`check_stop` enforces."""
    bounds = {key: value for key, value in (("minimum", spec.ge), ("maximum", spec.le)) if value is not None}
    if spec.kind is list:
        bounds["maxItems"] = MAX_STOP_SEQUENCES
    return bounds or None


def option_meta(name: str) -> msgspec.Meta:
    """The msgspec metadata of the option ``name``: its bounds, checked, and documented whatever their value."""
    spec = OPTIONS[name]
    bounds = documented_bounds(spec)
    if bounds is None:
        return msgspec.Meta(description=spec.description)
    # Litestar documents a msgspec field's ``extra_json_schema["extra"]`` as is.
    extra = {"description": spec.description, "extra": bounds}
    return msgspec.Meta(ge=spec.ge, le=spec.le, description=spec.description, extra_json_schema=extra)


#: JSON Schema keywords msgspec writes for these fields, by the name Litestar's ``Schema`` gives them.
_SCHEMA_KEYWORDS: Final = {
    "description": "description",
    "minimum": "minimum",
    "maximum": "maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_items",
    "maxItems": "max_items",
    "enum": "enum",
}


def _openapi_schema(schema: dict[str, Any]) -> Schema:
    """msgspec's JSON Schema of one field as Litestar's OpenAPI ``Schema`` (an unknown keyword is an error,
    so a bound msgspec learns to write cannot go undocumented silently)."""
    values: dict[str, Any] = {}
    for keyword, value in schema.items():
        if keyword == "type":
            values["type"] = OpenAPIType(value)
        elif keyword == "items":
            values["items"] = _openapi_schema(value)
        elif keyword == "extra":
            # What Litestar is told besides msgspec's own keywords (see option_meta): the same bounds, and more.
            for name, bound in value.items():
                values[_SCHEMA_KEYWORDS[name]] = bound
        elif keyword == "anyOf":
            values["one_of"] = [_openapi_schema(branch) for branch in value]
        elif keyword in _SCHEMA_KEYWORDS:
            values[_SCHEMA_KEYWORDS[keyword]] = value
        else:
            raise ValueError(f"no OpenAPI translation for the JSON Schema keyword {keyword!r}")
    if "enum" in values and "type" not in values and all(isinstance(v, str) for v in values["enum"]):
        values["type"] = OpenAPIType.STRING  # msgspec writes a Literal's values only
    return Schema(**values)


def query_parameters(query_type: type[msgspec.Struct], required: frozenset[str]) -> list[Parameter]:
    """The OpenAPI description of ``query_type`` as query parameters: the same bounds the conversion checks."""
    document = msgspec.json.schema(query_type)
    properties: dict[str, dict[str, Any]] = document["$defs"][query_type.__name__]["properties"]
    parameters = []
    for name, prop in properties.items():
        branches = [branch for branch in prop.get("anyOf", [prop]) if branch.get("type") != "null"]
        field = branches[0] if len(branches) == 1 else {"anyOf": branches}
        schema = _openapi_schema({key: value for key, value in field.items() if key != "default"})
        description, schema.description = schema.description, None
        parameters.append(
            Parameter(name=name, param_in="query", schema=schema, description=description, required=name in required)
        )
    return parameters


__all__ = ["documented_bounds", "option_meta", "query_parameters"]
