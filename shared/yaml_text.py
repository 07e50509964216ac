"""Block-style YAML for JSON-compatible data, written the same way every time.

The AsyncAPI document is generated at run time (the gateway serves it) and
committed (a test compares); PyYAML is only a test dependency here, and a
structure of dicts, lists, strings, numbers, booleans and None needs no more
than this. Strings that could read as anything but a string are written as JSON
strings, whose escapes YAML's double-quoted style shares.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Plain (unquoted) scalars: names and sentences without YAML indicators; never a word that
# YAML 1.1 readers take for a boolean or null, never anything number-like.
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")
_RESERVED = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
# Characters YAML forbids in a document or reads as line breaks (NEL, LS, PS) or a BOM: escaped.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")


def dumps(value: Any) -> str:
    """`value` as a YAML document (block style, keys in the given order), ending in a newline."""
    lines: list[str] = []
    if isinstance(value, dict) and value:
        _mapping(value, 0, lines)
    elif isinstance(value, list) and value:
        _sequence(value, 0, lines)
    else:
        lines.append(_scalar(value))
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not JSON-compatible: {value}")
        mantissa, e, exponent = repr(value).partition("e")
        # YAML 1.1 readers (PyYAML) take `1e-07` for a string: they want a dot in the mantissa.
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}{e}{exponent}"
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))
    if value == {}:
        return "{}"
    if value == []:
        return "[]"
    raise TypeError(f"not JSON-compatible: {type(value).__name__}")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"mapping keys must be strings, not {type(key).__name__}")
    return _scalar(key)


def _nested(value: Any) -> bool:
    return isinstance(value, (dict, list)) and bool(value)


def _mapping(mapping: dict[Any, Any], indent: int, lines: list[str], first_prefix: str | None = None) -> None:
    pad = " " * indent
    for i, (key, value) in enumerate(mapping.items()):
        prefix = first_prefix if (i == 0 and first_prefix is not None) else pad
        if _nested(value):
            lines.append(f"{prefix}{_key(key)}:")
            if isinstance(value, dict):
                _mapping(value, indent + 2, lines)
            else:
                _sequence(value, indent + 2, lines)
        else:
            lines.append(f"{prefix}{_key(key)}: {_scalar(value)}")


def _sequence(items: list[Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, dict) and item:
            _mapping(item, indent + 2, lines, first_prefix=f"{pad}- ")
        elif isinstance(item, list) and item:
            lines.append(f"{pad}-")
            _sequence(item, indent + 2, lines)
        else:
            lines.append(f"{pad}- {_scalar(item)}")
