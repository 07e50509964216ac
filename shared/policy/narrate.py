"""What happened to the fleet, in words an operator reads at a glance (issue 14).

Pure: an event or a record change, the engine's name and the probe timeout in;
a `FleetEvent` out. `GET /api/events`, the dashboard and `aceorch events` show
these texts as they are.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeAlias

from shared.schemas import (
    EngineCleaned,
    EngineDemand,
    EngineRecord,
    EngineRegistered,
    EngineRemoved,
    Event,
    FleetEvent,
    StreamEnded,
    StreamStarted,
)

# engine.removed reasons, as the reaper, the provisioner and the API give them.
REMOVAL_WORDS = {
    "idle": "reaped: idle",
    "unhealthy": "replaced: unhealthy for too long",
    "died": "died",
    "gone": "gone from its runtime",
}
# stream.ended reasons that mean the viewers moved on or the proxy switched engines.
FAILOVER_REASONS = {"failover": "failed over to another engine", "failover_exhausted": "failovers exhausted"}
MISSING = "unknown"
Level: TypeAlias = Literal["info", "warning", "error"]


def size(n: int | None) -> str:
    """Bytes as the dashboard shows them: 1024-based, one decimal under 10."""
    if n is None:
        return "an unknown size"
    value, unit = float(n), 0
    units = ("B", "KB", "MB", "GB", "TB")
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{round(value) if value >= 10 or unit == 0 else f'{value:.1f}'} {units[unit]}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def error_words(error: str | None, timeout_s: float) -> str:
    """A probe's error code as a phrase: `timeout` says how long the probe waited."""
    if not error:
        return "no answer"
    if error == "timeout":
        return f"timeout after {timeout_s:.1f} s"
    return {"refused": "connection refused", "disconnected": "connection closed without an answer"}.get(
        error, error.replace("_", " ")
    )


def health_flip(record: EngineRecord, at: datetime, timeout_s: float) -> FleetEvent:
    """An engine's health changed to what `record` says (`acestream-3 unhealthy: timeout after 5.0 s,
    2 failures in a row`)."""
    name = record.container_name or record.container_id
    status = record.health_status
    level: Level
    if status == "unhealthy":
        failures = plural(record.consecutive_failures, "failure")
        text = f"{name} unhealthy: {error_words(record.last_error, timeout_s)}, {failures} in a row"
        level = "error"
    elif status == "healthy":
        text = f"{name} healthy again" if record.last_error else f"{name} healthy"
        level = "info"
    else:
        text, level = f"{name} health unknown: no recent probe", "warning"
    return FleetEvent(
        id=f"health.{record.container_id}.{status}.{at.isoformat()}",
        at=at,
        kind=f"health.{status}",
        text=text,
        container_id=record.container_id,
        level=level,
    )


def describe_event(subject: str, event: Event, at: datetime, name: str | None, event_id: str) -> FleetEvent | None:
    """A stored ACE_EVENTS event as a FleetEvent; None for kinds not shown (health observations:
    their flips come from the records, see `health_flip`)."""
    container_id = getattr(event, "container_id", None)
    who = name or container_id or "an engine"
    stream_id = getattr(event, "stream_id", None)
    text, level, kind = _words(event, who)
    if text is None:
        return None
    return FleetEvent(
        id=event_id, at=at, kind=kind, text=text, container_id=container_id, stream_id=stream_id, level=level
    )


def _words(event: Event, who: str) -> tuple[str | None, Level, str]:
    match event:
        case EngineCleaned(ok=True, cache_size_bytes=cache):
            return f"{who} cache cleaned: {size(cache)} removed", "info", "engine.cleaned"
        case EngineCleaned(error=error):
            return f"{who} cache clean failed: {error or MISSING}", "warning", "engine.clean_failed"
        case EngineRemoved(reason=reason):
            words = REMOVAL_WORDS.get(reason or "", f"removed: {reason}" if reason else "removed")
            level: Level = "info" if reason in (None, "idle") or "API" in (reason or "") else "warning"
            return f"{who} {words}", level, "engine.removed"
        case EngineRegistered(runtime=runtime, host=host, port=port):
            how = "registered" if runtime == "external" else f"started ({runtime})"
            return f"{who} {how} at {host}:{port}", "info", "engine.registered"
        case StreamStarted(content_key=content):
            return f"stream of {content or MISSING} started on {who}", "info", "stream.started"
        case StreamEnded(reason=reason):
            if reason in FAILOVER_REASONS:
                return f"stream on {who} {FAILOVER_REASONS[reason]}", "warning", "stream.failover"
            ending = f": {reason.replace('_', ' ')}" if reason else ""
            return f"stream on {who} ended{ending}", "info", "stream.ended"
    return None, "info", ""


def demand(notice: EngineDemand, at: datetime, event_id: str) -> FleetEvent:
    """`engine.demand`: a selection found no free engine (or the reaper wants a replacement)."""
    what = f"for {notice.content_key}" if notice.content_key else "for a new engine"
    return FleetEvent(
        id=event_id,
        at=at,
        kind="engine.demand",
        text=f"demand {what}: no free engine, asking the provisioner",
        level="warning",
    )
