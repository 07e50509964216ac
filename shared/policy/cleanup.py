"""Cache cleanup (DESIGN §5): which engines need a clean, the clean script, and reading its output.

An engine needs a clean when it is idle, not claimed, managed (external
engines are never cleaned) and has been used since its last clean. The clean
itself is one shell script run inside the engine: it measures the cache
(`du -sb`), empties the directory but keeps it, and prints one marker line
with the size, so the size is never guessed: no marker, no size.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from shared.policy.engines import effective_state, is_idle
from shared.schemas import EngineRecord

SIZE_MARKER = "ACEORCH_CACHE_BYTES="
DONE_MARKER = "ACEORCH_CACHE_EMPTIED"
_SIZE_LINE = re.compile(rf"^{SIZE_MARKER}(-?\d+)\s*$", re.MULTILINE)
_DONE_LINE = re.compile(rf"^{DONE_MARKER}\s*$", re.MULTILINE)
MAX_ERROR_CHARS = 500


def used_since_clean(record: EngineRecord) -> bool:
    """Used and never cleaned, or used again after the last clean."""
    used = record.last_stream_usage
    if used is None:
        return False
    cleaned = record.last_cache_cleanup
    return cleaned is None or cleaned < used


def can_clean_now(record: EngineRecord, now: datetime) -> bool:
    """Managed, no streams or live reservations, not claimed by anyone."""
    return record.runtime != "external" and is_idle(record, now) and effective_state(record, now) == "active"


def needs_clean(record: EngineRecord, now: datetime) -> bool:
    return can_clean_now(record, now) and used_since_clean(record)


def engines_to_clean(records: Iterable[EngineRecord], now: datetime) -> list[EngineRecord]:
    """The sweep's work list: longest-unused first, ties by id so replicas agree."""
    due = [r for r in records if needs_clean(r, now)]
    return sorted(due, key=lambda r: (r.last_stream_usage, r.container_id))


def clean_script(cache_dir: str) -> str:
    """A POSIX sh script: measure the cache's contents, empty it, keep the directory.

    `du -sb` of a directory includes the directory's own entry (4096 bytes on
    ext4), so its own size is subtracted: an empty cache measures 0 and a
    cache of files measures exactly their bytes. A missing directory is an
    error, not an empty cache: it usually means ENGINE_CACHE_DIR is wrong.
    """
    quoted = shlex.quote(cache_dir)
    return "\n".join(
        [
            f"d={quoted}",
            'if [ ! -d "$d" ]; then echo "cache dir $d does not exist (check ENGINE_CACHE_DIR)" >&2; exit 3; fi',
            'total=$(du -sb -- "$d") || exit 4',
            "set -f; set -- $total; total=$1",
            'own=$(stat -c %s -- "$d" 2>/dev/null || echo 0)',
            f'echo "{SIZE_MARKER}$((total - own))"',
            # A first pass may race with files the engine is still rotating; the second reports real errors.
            'find "$d" -mindepth 1 -delete 2>/dev/null || find "$d" -mindepth 1 -delete || exit 5',
            f"echo {DONE_MARKER}",
        ]
    )


@dataclass(frozen=True)
class CleanResult:
    ok: bool
    cache_size_bytes: int | None = None
    error: str | None = None


def parse_clean_output(exit_code: int, output: str) -> CleanResult:
    """Read the script's output; stderr noise around the markers is ignored."""
    size_match = _SIZE_LINE.search(output)
    size = max(int(size_match.group(1)), 0) if size_match else None
    if exit_code == 0 and size is not None and _DONE_LINE.search(output):
        return CleanResult(ok=True, cache_size_bytes=size)
    return CleanResult(ok=False, cache_size_bytes=size, error=_describe_failure(exit_code, output, size))


def _describe_failure(exit_code: int, output: str, size: int | None) -> str:
    noise = "\n".join(
        line for line in output.strip().splitlines() if not line.startswith((SIZE_MARKER, DONE_MARKER))
    ).strip()
    if exit_code == 0:
        what = "no size reported" if size is None else "cache not emptied"
        return f"clean script exited 0 but {what}: {noise[:MAX_ERROR_CHARS] or 'no output'}"
    return f"clean script exited {exit_code}: {noise[:MAX_ERROR_CHARS] or 'no output'}"


def format_bytes(size: int | None) -> str:
    """Human size for log lines, as in the seed: `12.3 MB`."""
    if size is None:
        return "size unknown"
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 999.95:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} TB"
