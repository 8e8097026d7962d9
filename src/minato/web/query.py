"""Reading query strings: one msgspec conversion per generation route, and the rule every route shares.

The generation routes take about 25 query parameters and most requests send two: :func:`parse_query`
converts the whole query into one Struct instead of letting Litestar validate each parameter it
declares (the measured cost: docs/benchmarks.md, "one msgspec convert" and the callgrind counts).
The price is documenting those parameters by hand: :func:`minato.web.openapi_msgspec.query_parameters`.

A single-value parameter may be given only once: Litestar would silently keep one of
``message=a&message=b``; a request that says two things is refused instead. Parameters a route
declares as lists (``stop``, ``image_url``) may repeat.
"""

from __future__ import annotations

import functools
from typing import Any, Final, NamedTuple, TypeVar

import msgspec
from litestar import Request
from litestar.handlers import HTTPRouteHandler

from minato.errors import ErrorItem, InvalidInputError
from minato.web.hints import unknown_name_sentence
from minato.web.params import GenerationFields
from minato.web.rendering import validation_sentence

Q = TypeVar("Q", bound=GenerationFields)
#: Route ``opt`` key: the Struct a route reads its query into with :func:`parse_query` (which also tells
#: the repeated-parameter check its lists, and the OpenAPI document its parameters).
QUERY_OPT: Final = "query"


class _QueryShape(NamedTuple):
    """What parsing a query type needs to know of it, worked out once per type."""

    names: frozenset[str]
    lists: frozenset[str]
    known: str
    literals: dict[str, tuple[Any, ...]]


def _shape(query_type: type[GenerationFields]) -> _QueryShape:
    shape = _SHAPES.get(query_type)
    if shape is None:
        info = msgspec.inspect.type_info(query_type)
        if not isinstance(info, msgspec.inspect.StructType):
            raise TypeError(f"{query_type!r} is not a Struct")
        names, lists, literals = set(), set(), {}
        for field in info.fields:
            names.add(field.name)
            for kind in _branches(field.type):
                if isinstance(kind, msgspec.inspect.ListType):
                    lists.add(field.name)
                elif isinstance(kind, msgspec.inspect.LiteralType):
                    literals[field.name] = kind.values
        shape = _SHAPES[query_type] = _QueryShape(
            frozenset(names), frozenset(lists), ", ".join(sorted(names)), literals
        )
    return shape


_SHAPES: Final[dict[type[GenerationFields], _QueryShape]] = {}


def list_fields(query_type: type[GenerationFields]) -> frozenset[str]:
    """The fields of ``query_type`` that a query may repeat (its lists)."""
    return _shape(query_type).lists


def _branches(kind: msgspec.inspect.Type) -> list[msgspec.inspect.Type]:
    """The non-null types of a field (``int | None`` is ``int``; metadata is looked through)."""
    if isinstance(kind, msgspec.inspect.Metadata):
        return _branches(kind.type)
    if isinstance(kind, msgspec.inspect.UnionType):
        return [branch for member in kind.types for branch in _branches(member)]
    return [] if isinstance(kind, msgspec.inspect.NoneType) else [kind]


def parse_query(request: Request[Any, Any, Any], query_type: type[Q]) -> Q:
    """The query string as ``query_type``: unknown names, wrong types and bounds are one 422 listing each.

    One conversion of the whole query, instead of a validated parameter per name: the generation
    routes take about 25 and most requests send two.
    """
    shape = _shape(query_type)
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in request.query_params.items():  # every occurrence, in the query's order
        if key in shape.lists:
            values.setdefault(key, []).append(value)
        elif key in shape.names:
            values[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise InvalidInputError(
            [
                ErrorItem(loc=["query", key], msg=unknown_name_sentence(key, shape.known), type="extra_forbidden")
                for key in unknown
            ]
        )
    try:
        return msgspec.convert(values, query_type, strict=False)
    except msgspec.ValidationError:
        raise _query_errors(values, query_type, shape) from None


def _query_errors(values: dict[str, Any], query_type: type[GenerationFields], shape: _QueryShape) -> InvalidInputError:
    """Every invalid parameter of a query that failed to convert, each in Minato's words (the slow path)."""
    items = []
    for key, value in values.items():
        try:
            msgspec.convert({key: value}, query_type, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc).rsplit(" - at `", 1)[0]
            sentence = validation_sentence(message, shape.literals.get(key, ()))
            items.append(ErrorItem(loc=["query", key], msg=sentence, type="value_error"))
    return InvalidInputError(items or [ErrorItem(loc=["query"], msg="is not valid", type="value_error")])


# Bounded: an app registers its own copy of each handler (a couple of dozen), tests build many apps.
@functools.lru_cache(maxsize=256)
def repeatable_parameters(handler: HTTPRouteHandler) -> frozenset[str]:
    """The query parameters a registered ``handler`` (and the dependencies it uses) declares as lists."""
    # The kwargs model is how Litestar itself decides which parameters it reads as lists.
    model = handler.create_kwargs_model(path_parameters={})
    query_type = handler.opt.get(QUERY_OPT)  # a query read in one conversion declares its lists there
    declared = list_fields(query_type) if query_type is not None else frozenset()
    return frozenset(model.sequence_query_parameter_names) | declared


async def reject_repeated_parameters(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: a 422 naming every single-value parameter given more than once."""
    raw = [part.partition(b"=")[0] for part in request.scope["query_string"].split(b"&") if part]
    if len(set(raw)) == len(raw) and not any(b"%" in key or b"+" in key for key in raw):
        return  # the common case, told from the raw bytes: no key repeats, none is escaped
    keys = [key for key, _ in request.query_params.multi_items()]  # one entry per occurrence
    unique = dict.fromkeys(keys)
    if len(unique) == len(keys):
        return  # the common case: no key repeats
    allowed = repeatable_parameters(request.route_handler)
    repeated = sorted(key for key in unique if key not in allowed and keys.count(key) > 1)
    if repeated:
        raise InvalidInputError(
            [ErrorItem(loc=["query", key], msg="was given more than once", type="value_error") for key in repeated]
        )
