"""Process trees from /proc: which processes descend from a pid, and are they gone.

A process is identified by (pid, start time), so a pid the kernel reuses
later is never mistaken for one we saw.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

Identity = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a pid, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[1].split()  # the command name may contain spaces and ')'
    return fields[0].decode(), int(fields[1]), int(fields[19])


def descendants(root: int) -> set[Identity]:
    """Every live process below `root` (not root itself)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[1], []).append(int(entry))
            starts[int(entry)] = stat[2]
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add((child, starts[child]))
            todo.append(child)
    return found


def alive(identity: Identity) -> bool:
    stat = _stat(identity[0])
    return stat is not None and stat[0] not in ("Z", "X") and stat[2] == identity[1]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


class TreeWatcher:
    """Collects every descendant of a pid, every 0.1 s, in a thread, until stopped."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: set[Identity] = set()
        self.commands: dict[Identity, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-watcher", daemon=True)

    def __enter__(self) -> TreeWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.scan()

    def scan(self) -> None:
        for identity in descendants(self.root) - self.seen:
            self.seen.add(identity)
            self.commands[identity] = command_line(identity[0])

    def survivors(self) -> dict[Identity, str]:
        return {identity: self.commands[identity] for identity in self.seen if alive(identity)}
