"""Multiplexed, prefixed output of `aceorch up`: `state-keeper | <line>`.

Colors only when stdout is a terminal (and NO_COLOR is unset): one color per
process for the prefix, yellow/red for warning/error lines.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

RESET = "\033[0m"
PALETTE = ("36", "32", "35", "34", "33", "96", "92", "95")  # cyan green magenta blue yellow, bright variants
SUPERVISOR = "aceorch"
LEVEL_COLORS = ((" ERROR ", "31"), ("[ERR]", "31"), ("[FTL]", "31"), (" WARNING ", "33"), ("[WRN]", "33"))


def use_color(stream: TextIO, environ: dict[str, str] | os._Environ = os.environ) -> bool:
    return stream.isatty() and "NO_COLOR" not in environ and environ.get("TERM") != "dumb"


def prefix_line(name: str, line: str, width: int, color: str | None = None) -> str:
    """'prober       | line' — the name padded to `width`, colored when `color` is given."""
    label = name.ljust(width)
    if color is None:
        return f"{label} | {line}"
    for marker, level_color in LEVEL_COLORS:
        if marker in line:
            line = f"\033[{level_color}m{line}{RESET}"
            break
    return f"\033[{color}m{label} |{RESET} {line}"


class Output:
    """Writes prefixed lines for a fixed set of names to one stream."""

    def __init__(self, names: list[str], stream: TextIO | None = None, color: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.width = max(len(name) for name in [SUPERVISOR, *names])
        colored = use_color(self.stream) if color is None else color
        self.colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)} if colored else {}
        if colored:
            self.colors[SUPERVISOR] = "1"  # bold
        self.closed = False

    def emit(self, name: str, line: str) -> None:
        if self.closed:
            return
        try:
            self.stream.write(prefix_line(name, line, self.width, self.colors.get(name)) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # `aceorch up | head`: the reader left; keep running, stop writing
            self.closed = True

    def say(self, line: str) -> None:
        self.emit(SUPERVISOR, line)
