"""describe_decode_error: why input did not decode, in our words (the place and what is expected), whatever msgspec says."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
import pytest

from shared.decode_errors import describe_decode_error, describe_invalid


class Address(msgspec.Struct, forbid_unknown_fields=True):
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    kind: Literal["a", "b"] | None = None
    engine: Address | None = None
    labels: dict[str, Annotated[str, msgspec.Meta(max_length=8)]] = {}
    items: list[int] = []
    live: bool = False


def describe(raw: bytes, kind=Body, what="body") -> str:
    with pytest.raises(msgspec.DecodeError) as caught:
        msgspec.json.decode(raw, type=kind)
    return describe_decode_error(caught.value, raw, kind, what)


@pytest.mark.parametrize(
    "raw, ours",
    [
        (b'{"name": "\xff"}', "body is not valid UTF-8"),
        (b"\xff\xfe", "body is not valid UTF-8"),
        (b"{nope", "body is not valid JSON"),
        (b"", "body is not valid JSON"),
        (b'{"name": "n"} trailing', "body is not valid JSON"),
        (b"[1, 2]", "invalid body: expected an object"),
        (b'{"name": 5}', "invalid body: field `$.name`: expected a string"),
        (b'{"name": "n", "kind": "c"}', "invalid body: field `$.kind`: expected one of 'a', 'b' or null"),
        (
            b'{"name": "n", "engine": {"host": "h", "port": 0}}',
            "invalid body: field `$.engine.port`: expected an integer from 1 to 65535",
        ),
        (
            b'{"name": "n", "engine": {"host": "", "port": 1}}',
            "invalid body: field `$.engine.host`: expected a string of 1 to 253 characters",
        ),
        (b'{"name": "n", "engine": {"host": "h"}}', "invalid body: field `$.engine.port` is required"),
        (
            b'{"name": "n", "engine": {"host": "h", "port": 1, "x": 1}}',
            "invalid body: field `$.engine.x` is not accepted",
        ),
        (b"{}", "invalid body: field `$.name` is required"),
        (b'{"name": "n", "surprise": 1}', "invalid body: field `$.surprise` is not accepted"),
        (
            b'{"name": "n", "labels": {"k": "much too long"}}',
            "invalid body: field `$.labels[...]`: expected a string of at most 8 characters",
        ),
        (b'{"name": "n", "items": [1, "2"]}', "invalid body: field `$.items[1]`: expected an integer"),
        (b'{"name": "n", "live": "yes"}', "invalid body: field `$.live`: expected true or false"),
    ],
)
def test_each_problem_is_said_in_our_words(raw, ours):
    assert describe(raw).startswith(ours)


def test_the_input_is_named_as_the_caller_says():
    assert describe(b'{"name": 5}', what="event").startswith("invalid event: field `$.name`: expected a string")
    assert describe(b"{", what="request").startswith("request is not valid JSON")


def test_dates_say_what_is_expected():
    class Event(msgspec.Struct):
        at: Annotated[datetime, msgspec.Meta(tz=True)]

    assert describe(b'{"at": "2024-01-01T00:00:00"}', Event).startswith(
        "invalid body: field `$.at`: expected an RFC 3339 date-time with a timezone"
    )
    assert describe(b'{"at": "yesterday"}', Event).startswith(
        "invalid body: field `$.at`: expected an RFC 3339 date-time with a timezone"
    )


def test_a_bad_utf8_error_from_python_itself_is_named():
    exc = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert describe_decode_error(exc) == "body is not valid UTF-8"


def test_without_our_type_the_place_is_still_named():
    # Another layer (Litestar) may report the place itself, and know no type.
    assert describe_invalid(None, "some text a dependency wrote", where="$.port").startswith(
        "invalid body: field `$.port`: "
    )
    assert describe_invalid(None, "some text a dependency wrote").startswith("invalid body: ")
    assert describe_invalid(Body, "some text", where="$.name").startswith(
        "invalid body: field `$.name`: expected a string"
    )
    # A place our type does not have: no guess at what is expected.
    assert (
        describe_invalid(Body, "some text", where="$.nowhere.deeper")
        == "invalid body: field `$.nowhere.deeper`: some text"
    )


def test_an_unhashable_type_is_still_described():
    unhashable = Annotated[int, msgspec.Meta(ge=1), ["a list: unhashable"]]
    with pytest.raises(TypeError):
        hash(unhashable)
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(b"0", type=unhashable)
    assert describe_decode_error(caught.value, b"0", unhashable).startswith(
        "invalid body: expected an integer of at least 1"
    )
