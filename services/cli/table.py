"""Pure rendering for the CLI: relative times, byte sizes, the engines and streams tables.

No I/O and no clock of its own: callers pass `now`, so every branch is a
table test.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime

from shared.policy.engines import effective_state, live_reservations
from shared.policy.naming import name_number
from shared.schemas import EngineRecord, PlaybackStats, StreamRecord

ENGINE_COLUMNS = ("NAME", "ID", "ADDRESS", "HEALTH", "STATE", "STREAMS", "LAST USED", "CACHE")
STREAM_COLUMNS = ("STREAM", "ENGINE", "CONTENT", "STATUS", "PEERS", "DOWN/UP", "PROXY", "STARTED")
CONTENT_WIDTH = 24
ID_WIDTH = 12  # docker's short id length


def ago(when: datetime | None, now: datetime) -> str:
    """'Never', 'just now', '42s ago', '5m ago', '3h ago', '2d ago' (future times count as now)."""
    if when is None:
        return "Never"
    seconds = int((now - when).total_seconds())
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def human_bytes(size: int | None) -> str:
    """'-' when unknown, else 0 B, 512 B, 1.5 KiB, 64.0 MiB, ..."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_id(container_id: str) -> str:
    return container_id[:ID_WIDTH]


def streams_cell(record: EngineRecord, now: datetime) -> str:
    """Stream count, with live reservations shown as '+N reserved'."""
    reserved = len(live_reservations(record, now))
    count = str(len(record.streams))
    return f"{count} (+{reserved} reserved)" if reserved else count


def engine_row(record: EngineRecord, now: datetime) -> tuple[str, ...]:
    return (
        record.container_name or record.container_id,
        short_id(record.container_id),
        f"{record.host}:{record.port}",
        record.health_status,
        effective_state(record, now),
        streams_cell(record, now),
        ago(record.last_stream_usage, now),
        human_bytes(record.cache_size_bytes),
    )


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, no trailing blanks."""
    widths = [len(title) for title in header]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (header, *rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def by_name(record: EngineRecord) -> tuple[int, str]:
    """acestream-2 before acestream-10; other names after, alphabetically."""
    number = name_number(record.container_name)
    return (number if number is not None else sys.maxsize, record.container_name)


def on_host(records: Sequence[EngineRecord], host: str | None) -> list[EngineRecord]:
    """The engines on `host` (a HOST_ID); all of them for None."""
    return [r for r in records if host is None or r.host_id == host]


def engines_table(records: Sequence[EngineRecord], now: datetime, host: str | None = None) -> str:
    """One row per engine; with engines on more than one host, a HOST column first and rows grouped by it."""
    records = on_host(records, host)
    if not records:
        return "no engines registered" if host is None else f"no engines on host {host}"
    if len({r.host_id for r in records}) < 2:
        return render_table(ENGINE_COLUMNS, [engine_row(record, now) for record in sorted(records, key=by_name)])
    grouped = sorted(records, key=lambda r: (r.host_id or "", by_name(r)))
    return render_table(("HOST", *ENGINE_COLUMNS), [(r.host_id or "-", *engine_row(r, now)) for r in grouped])


def speed_cell(stats: PlaybackStats | None) -> str:
    """'640/12 KiB/s' (down/up, as the engine reports them), '-' before any figures."""
    if stats is None or (stats.speed_down is None and stats.speed_up is None):
        return "-"
    down = "?" if stats.speed_down is None else str(stats.speed_down)
    up = "?" if stats.speed_up is None else str(stats.speed_up)
    return f"{down}/{up} KiB/s"


def stream_row(record: StreamRecord, now: datetime) -> tuple[str, ...]:
    stats = record.stats
    status = record.status if record.status == "started" else f"ended ({record.reason or 'no reason'})"
    content = record.content_key or "-"
    return (
        record.stream_id,
        short_id(record.container_id) if record.container_id else "-",
        content if len(content) <= CONTENT_WIDTH else content[: CONTENT_WIDTH - 3] + "...",
        status,
        "-" if stats is None or stats.peers is None else str(stats.peers),
        speed_cell(stats),
        record.proxy or "-",
        ago(record.started_at, now),
    )


def streams_table(records: Sequence[StreamRecord], now: datetime) -> str:
    if not records:
        return "no streams"
    return render_table(STREAM_COLUMNS, [stream_row(r, now) for r in sorted(records, key=lambda r: r.stream_id)])
