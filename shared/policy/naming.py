"""Choosing a new engine's name and port (pure: what is taken comes in, the choice goes out).

Names are `acestream-N` with the lowest free N, so a fleet reads 1..N after
removals are refilled. Ports come from `ENGINE_PORT_RANGE`, skipping every
port a managed engine already holds — including engines adopted after a
restart, whose ports are read back from their labels or state files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

NAME_PREFIX = "acestream-"
_NAME = re.compile(rf"^{re.escape(NAME_PREFIX)}(\d+)$")


def name_number(name: str) -> int | None:
    """N of `acestream-N`; None for any other name."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def lowest_free_name(taken: Iterable[str]) -> str:
    """`acestream-N` with the smallest N >= 1 that no name in `taken` uses."""
    used = {n for n in map(name_number, taken) if n is not None}
    number = 1
    while number in used:
        number += 1
    return f"{NAME_PREFIX}{number}"


def free_ports(port_range: tuple[int, int], taken: Iterable[int]) -> Iterator[int]:
    """Ports of the inclusive range not in `taken`, lowest first."""
    used = set(taken)
    first, last = port_range
    return (port for port in range(first, last + 1) if port not in used)


def free_port(port_range: tuple[int, int], taken: Iterable[int]) -> int | None:
    """The lowest port of the range not in `taken`; None when the range is exhausted."""
    return next(free_ports(port_range, taken), None)


def render_command(template: str, **values: object) -> str:
    """Fill `{port}`, `{cache_dir}`, `{name}` in a command template; unknown fields name themselves."""
    try:
        return template.format(**values)
    except (KeyError, IndexError) as exc:
        known = ", ".join("{" + key + "}" for key in values)
        raise ValueError(f"ENGINE_COMMAND {template!r} uses unknown field {exc}; known fields: {known}") from None
