"""A strict reading of a ``Content-Type`` value, as strict as the scrapers that read Minato's answers.

Python's own readers (``email.message``, ``cgi``-style splitting) take almost anything: a parameter
twice, a parameter without a value. Prometheus reads a scrape's ``Content-Type`` with Go's
``mime.ParseMediaType``, and since Prometheus 3 a value Go refuses fails the scrape
("mime: duplicate parameter name"). So this reader refuses the union of both rules:

- RFC 9110 §8.3.1 (``media-type = type "/" subtype parameters``, parameters of ``token "="
  ( token / quoted-string )``), checked by the RFC's own ABNF grammar from the ``abnf`` package;
- what Go adds on top of that grammar: a parameter name twice, compared case-insensitively, and an
  empty parameter (``;;``) anywhere but a single trailing ``;``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from abnf import Node, ParseError
from abnf.grammars import rfc9110

_MEDIA_TYPE = rfc9110.Rule("media-type")


class MediaTypeError(ValueError):
    """A value a strict reader (Go's ``mime.ParseMediaType``, RFC 9110) refuses."""


@dataclass(frozen=True)
class MediaType:
    """A parsed media type: ``type/subtype`` and parameter names lower-cased, values as sent."""

    essence: str
    params: dict[str, str] = field(default_factory=dict)


def parse_media_type(value: str) -> MediaType:
    """Parse ``value`` or raise :class:`MediaTypeError` saying why a strict reader would refuse it."""
    try:
        tree = _MEDIA_TYPE.parse_all(value)
    except ParseError as exc:
        raise MediaTypeError(f"not an RFC 9110 media type: {value!r} ({exc})") from None
    kind = _child(tree, "type").value.lower()
    subtype = _child(tree, "subtype").value.lower()
    params: dict[str, str] = {}
    for parameter in _parameters(_child(tree, "parameters"), value):
        name = _child(parameter, "parameter-name").value.lower()
        if name in params:
            raise MediaTypeError(f"duplicate parameter name {name!r} in {value!r}")
        params[name] = _unquote(_child(parameter, "parameter-value"))
    return MediaType(f"{kind}/{subtype}", params)


def _child(node: Node, name: str) -> Node:
    found = [child for child in node.children if child.name == name]
    assert len(found) == 1, f"{node.name} has {len(found)} {name}"
    return found[0]


def _parameters(parameters: Node, value: str) -> list[Node]:
    """The ``parameter`` nodes, refusing a ``;`` without a parameter unless it is the last one."""
    found: list[Node] = []
    empty_before_end = False
    pending = False  # a ";" seen and no parameter after it yet
    for child in parameters.children:
        if child.name == "literal" and child.value == ";":
            empty_before_end = empty_before_end or pending
            pending = True
        elif child.name == "parameter":
            found.append(child)
            pending = False
    if empty_before_end:
        raise MediaTypeError(f"an empty parameter before the end: {value!r}")
    return found


def _unquote(node: Node) -> str:
    (inner,) = node.children
    if inner.name != "quoted-string":
        return str(inner.value)
    # qdtext as is; a quoted-pair stands for the character after its backslash.
    return "".join(part.value[-1] if part.name == "quoted-pair" else part.value for part in inner.children[1:-1])
