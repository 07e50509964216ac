"""Multiplexed, prefixed output of `aceorch up`: `state-keeper | <line>`.

Colors only when stdout is a terminal (and NO_COLOR is unset): one color per
process for the prefix, yellow/red for warning/error lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Mapping
from typing import TextIO

RESET = "\033[0m"
PALETTE = ("36", "32", "35", "34", "33", "96", "92", "95")  # cyan green magenta blue yellow, bright variants
SUPERVISOR = "aceorch"
MAX_PENDING_LINES = 10_000  # ~1-2 MB of log lines held for a slow reader before dropping
FLUSH_TIMEOUT_S = 2.0  # at exit: how long the last lines may wait for a reader
LEVEL_COLORS = ((" ERROR ", "31"), ("[ERR]", "31"), ("[FTL]", "31"), (" WARNING ", "33"), ("[WRN]", "33"))


def use_color(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
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
    """Writes prefixed lines for a fixed set of names to one stream, never blocking the caller.

    Lines go to a bounded queue that a writer thread empties into the stream:
    a reader that stops reading (`aceorch up | less` at a prompt, Ctrl-S, a
    stopped pager) only stalls that thread. When the queue is full, new lines
    are dropped and counted; once the reader catches up, one line says how many
    were lost. `emit` is called from the event loop and only takes a lock that
    is never held across a write.
    """

    def __init__(
        self,
        names: list[str],
        stream: TextIO | None = None,
        color: bool | None = None,
        max_pending: int = MAX_PENDING_LINES,
    ) -> None:
        self.stream = stream or sys.stdout
        self.width = max(len(name) for name in [SUPERVISOR, *names])
        colored = use_color(self.stream) if color is None else color
        self.colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)} if colored else {}
        if colored:
            self.colors[SUPERVISOR] = "1"  # bold
        self.max_pending = max_pending
        self.closed = False  # the reader left (broken pipe): stop writing, keep running
        self.dropped = 0  # lines dropped since the last report of it
        self.dropped_total = 0
        self._pending: deque[str] = deque()
        self._writing = False
        self._changed = threading.Condition()
        self._fd = _fileno(self.stream)
        self._writer = threading.Thread(target=self._write_loop, name="aceorch-output", daemon=True)
        self._writer.start()

    def emit(self, name: str, line: str) -> None:
        text = prefix_line(name, line, self.width, self.colors.get(name)) + "\n"
        with self._changed:
            if self.closed:
                return
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                self.dropped_total += 1
                return
            self._pending.append(text)
            self._changed.notify()

    def say(self, line: str) -> None:
        self.emit(SUPERVISOR, line)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait (bounded) until every queued line is written; False if the reader is still not reading."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self.closed or (not self._pending and not self._writing and not self.dropped), timeout_s
            )

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self.dropped)
                batch = list(self._pending)
                self._pending.clear()
                if self.dropped:
                    notice = f"dropped {self.dropped} log lines: stdout not keeping up"
                    batch.append(prefix_line(SUPERVISOR, notice, self.width, self.colors.get(SUPERVISOR)) + "\n")
                    self.dropped = 0
                self._writing = True
            try:
                self._write("".join(batch))
            except (BrokenPipeError, ValueError, OSError):  # `aceorch up | head`: the reader left
                with self._changed:
                    self.closed = True
                    self._pending.clear()
                    self._writing = False
                    self._changed.notify_all()
                return
            with self._changed:
                self._writing = False
                self._changed.notify_all()

    def _write(self, text: str) -> None:
        if self._fd is None:
            self.stream.write(text)
            self.stream.flush()
            return
        # Straight to the descriptor: a thread stuck here holds no lock of sys.stdout's buffer,
        # so the interpreter can still exit while the reader is stopped.
        data = memoryview(text.encode(errors="replace"))
        while data:
            data = data[os.write(self._fd, data) :]


def _fileno(stream: TextIO) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO and friends
        return None
    with contextlib.suppress(AttributeError, OSError, ValueError):
        stream.flush()  # whatever print() left in its buffer goes first
    return fd
