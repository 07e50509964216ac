"""Why a body, event or request did not decode, in our own words: where (a JSON path) and what is expected.

msgspec's messages change between releases (0.23 reworded bad UTF-8), so what
we answer must not be their text: the place comes from the error's JSON path,
what is expected from our own type (msgspec.inspect), and msgspec's text is
only appended in parentheses as a detail for whoever reads a log. Every
service decoding JSON from outside (gateway bodies, state-keeper events and
requests) says it through `describe_decode_error`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
import msgspec.inspect as mi

# msgspec ends a validation message with the place: "... - at `$.engine.port`".
_AT = re.compile(r" - at `(?P<path>\$[^`]*)`$")
# A missing or unknown field is named in the message, its object is the path.
_FIELD = re.compile(r"(?P<kind>missing required|unknown) field `(?P<name>[^`]+)`")
_STEP = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")
# Inspecting a type takes milliseconds: once per type, not once per bad request in a flood.
_type_info = functools.lru_cache(maxsize=128)(mi.type_info)


def describe_decode_error(exc: BaseException, data: bytes | None = None, kind: Any = None, what: str = "body") -> str:
    """Our message for `exc`, raised decoding `data` (as `kind`, when known); `what` names the input ("event", ...).

    - bytes that are not UTF-8: "<what> is not valid UTF-8";
    - not JSON: "<what> is not valid JSON";
    - JSON of the wrong shape: "invalid <what>: field `$.x`: expected ..." (or "is required" / "is not accepted").
    """
    detail = str(exc)
    if isinstance(exc, UnicodeDecodeError) or not _is_utf8(data):
        return f"{what} is not valid UTF-8"
    if isinstance(exc, msgspec.ValidationError):
        return describe_invalid(kind, detail, what=what)
    return f"{what} is not valid JSON ({detail})"


def describe_invalid(kind: Any, detail: str, where: str | None = None, what: str = "body") -> str:
    """Our message for JSON that parsed but does not fit `kind`, as msgspec's `detail` says.

    The place is the path in `detail`, else `where` (a JSON path another layer
    reported, e.g. Litestar's key), else "$": the whole input.
    """
    match = _AT.search(detail)
    path = match["path"] if match else where or "$"
    field = _FIELD.search(detail)
    if field:
        name = f"{path}.{field['name']}"
        problem = "is required" if field["kind"].startswith("missing") else "is not accepted (unknown field)"
        return f"invalid {what}: field `{name}` {problem} ({detail})"
    place = "" if path == "$" else f"field `{path}`: "
    expected = _expected_at(kind, path)
    return f"invalid {what}: {place}expected {expected} ({detail})" if expected else f"invalid {what}: {place}{detail}"


def _is_utf8(data: bytes | None) -> bool:
    try:
        bytes(data or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _expected_at(kind: Any, path: str) -> str | None:
    """What our type `kind` accepts at `path`, described in words; None when the path cannot be followed."""
    if kind is None:
        return None
    try:
        node: mi.Type | None = _type_info(kind)
    except TypeError:  # an unhashable annotation cannot be cached
        node = mi.type_info(kind)
    for name, _index in _STEP.findall(path[1:]):
        node = _step(node, name if name else None)
        if node is None:
            return None
    return None if node is None else _describe(node)


def _step(node: mi.Type | None, field: str | None) -> mi.Type | None:
    """The type one step further: into an object's field (`field`) or a container's items (`[...]`)."""
    if isinstance(node, mi.Metadata):
        node = node.type
    if isinstance(node, mi.UnionType):
        for option in node.types:
            found = _step(option, field)
            if found is not None:
                return found
        return None
    if field is not None:
        if isinstance(node, mi.StructType):
            return next((f.type for f in node.fields if f.encode_name == field), None)
        return None
    if isinstance(node, mi.DictType):
        return node.value_type
    if isinstance(node, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return node.item_type
    return None


def _describe(node: mi.Type) -> str:
    if isinstance(node, mi.Metadata):
        return _describe(node.type)
    if isinstance(node, mi.UnionType):
        return " or ".join(_describe(t) for t in node.types)
    if isinstance(node, mi.NoneType):
        return "null"
    if isinstance(node, mi.BoolType):
        return "true or false"
    if isinstance(node, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in node.values)
    if isinstance(node, mi.IntType):
        return "an integer" + _bounds(node.ge, node.le)
    if isinstance(node, mi.FloatType):
        return "a number" + _bounds(node.ge, node.le)
    if isinstance(node, mi.StrType):
        limits = []
        if node.min_length and node.max_length is not None:
            limits.append(f"of {node.min_length} to {node.max_length} characters")
        elif node.min_length:
            limits.append(f"of at least {node.min_length} characters")
        elif node.max_length is not None:
            limits.append(f"of at most {node.max_length} characters")
        if node.pattern is not None:
            limits.append(f"matching {node.pattern}")
        return " ".join(["a string", *limits])
    if isinstance(node, mi.DateTimeType):
        return "an RFC 3339 date-time" + (" with a timezone" if node.tz else "")
    if isinstance(node, (mi.StructType, mi.TypedDictType, mi.DataclassType)):
        return "an object"
    if isinstance(node, mi.DictType):
        return "an object" + (f" of at most {node.max_length} entries" if node.max_length is not None else "")
    if isinstance(node, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType, mi.TupleType)):
        return "a list"
    if isinstance(node, mi.AnyType):
        return "any JSON value"
    return f"a {type(node).__name__.removesuffix('Type').lower()}"


def _bounds(ge: float | None, le: float | None) -> str:
    if ge is not None and le is not None:
        return f" from {ge} to {le}"
    if ge is not None:
        return f" of at least {ge}"
    if le is not None:
        return f" of at most {le}"
    return ""
