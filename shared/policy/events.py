"""Event application (DESIGN §2): records + event + now → new records + notifications.

Every function here is idempotent and tolerant of reordering:
- a stream's record is the source of truth for its status; once `ended` it
  stays ended (a tombstone), so a late or duplicated `stream.started` is ignored;
- an engine's `streams` list is reconciled against that status, never
  incremented blindly, so duplicates cannot double-count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from shared.policy.engines import effective_state, load, tidy
from shared.schemas import (
    Claim,
    ClaimRequest,
    EngineCleaned,
    EngineIdle,
    EngineRecord,
    EngineRegistered,
    StreamEnded,
    StreamRecord,
    StreamStarted,
)

replace = msgspec.structs.replace


@dataclass(frozen=True)
class EngineChange:
    record: EngineRecord
    notifications: tuple[EngineIdle, ...] = field(default=())


def apply_engine_registered(record: EngineRecord | None, event: EngineRegistered, now: datetime) -> EngineRecord:
    """Create the record, or refresh its address (a re-registration after a restart keeps usage)."""
    name = event.container_name or event.container_id
    if record is None:
        return EngineRecord(
            container_id=event.container_id,
            container_name=name,
            host=event.host,
            port=event.port,
            runtime=event.runtime,
            labels=dict(event.labels),
            created_at=now,
            idle_since=now,
        )
    return replace(
        record,
        container_name=name,
        host=event.host,
        port=event.port,
        runtime=event.runtime,
        labels=dict(event.labels),
    )


def apply_stream_started_to_stream(
    existing: StreamRecord | None, event: StreamStarted, container_id: str, now: datetime
) -> StreamRecord:
    """The stream record after a start: created once; an ended tombstone wins."""
    if existing is not None:
        return existing
    return StreamRecord(
        stream_id=event.stream_id,
        container_id=container_id,
        content_key=event.content_key,
        key_type=event.key_type,
        playback_session_id=event.playback_session_id,
        stat_url=event.stat_url,
        command_url=event.command_url,
        is_live=event.is_live,
        status="started",
        started_at=event.started_at or now,
    )


def apply_stream_ended_to_stream(existing: StreamRecord | None, event: StreamEnded, now: datetime) -> StreamRecord:
    """The stream record after an end: always a tombstone; the first end wins."""
    ended_at = event.ended_at or now
    if existing is None:
        return StreamRecord(
            stream_id=event.stream_id,
            container_id=event.container_id,
            status="ended",
            ended_at=ended_at,
            reason=event.reason,
        )
    if existing.status == "ended":
        return existing
    return replace(existing, status="ended", ended_at=ended_at, reason=event.reason)


def stream_expired(stream: StreamRecord, now: datetime, ttl_s: float) -> bool:
    """An ended stream's tombstone has served its purpose (late duplicates are long past)."""
    return stream.status == "ended" and (stream.ended_at is None or (now - stream.ended_at).total_seconds() >= ttl_s)


def reconcile_stream(
    record: EngineRecord, stream: StreamRecord, now: datetime, reservation_id: str | None = None
) -> EngineChange:
    """Make the engine's `streams` agree with the stream record's status."""
    record = tidy(record, now)
    present = stream.stream_id in record.streams
    if stream.status == "started":
        reservations = {k: v for k, v in record.reservations.items() if k != reservation_id}
        if present and reservations == record.reservations:
            return EngineChange(record)
        started = stream.started_at or now
        usage = record.last_stream_usage
        # A stream that lands on an engine being reaped (its proxy's reservation lapsed) wins:
        # the reap claim is dropped, so the reaper's last check before stopping sees it lost.
        keep_claim = record.claim is None or record.claim.purpose != "reap"
        return EngineChange(
            replace(
                record,
                streams=record.streams if present else [*record.streams, stream.stream_id],
                reservations=reservations,
                last_stream_usage=started if usage is None or started > usage else usage,
                idle_since=None,
                claim=record.claim if keep_claim else None,
                state=record.state if keep_claim else "active",
            )
        )
    if not present:
        return EngineChange(record)
    streams = [s for s in record.streams if s != stream.stream_id]
    if streams:
        return EngineChange(replace(record, streams=streams))
    return EngineChange(
        replace(record, streams=streams, idle_since=now),
        (EngineIdle(container_id=record.container_id),),
    )


def apply_engine_cleaned(record: EngineRecord, event: EngineCleaned, now: datetime) -> EngineRecord:
    cleaned_at = event.cleaned_at or now
    if not event.ok:
        return replace(record, last_error=f"cache clean failed: {event.error or 'unknown error'}")
    if record.last_cache_cleanup is not None and cleaned_at <= record.last_cache_cleanup:
        return record
    return replace(record, last_cache_cleanup=cleaned_at, cache_size_bytes=event.cache_size_bytes)


# ---------------------------------------------------------------- claims


class ClaimRefused(Exception):
    """A claim or release that cannot be granted; `code` is the reply's error code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def apply_claim(
    record: EngineRecord, request: ClaimRequest, claim_id: str, now: datetime, ttl_s: float
) -> EngineRecord:
    """Take the engine out of selection for a clean or a reap; refuse while it is in use.

    A holder asking again for what it already holds gets its claim back unchanged: its first
    request may have been applied although the reply was lost (a timed-out write, DESIGN §9).
    """
    record = tidy(record, now)
    if record.runtime == "external":
        raise ClaimRefused(f"engine {record.container_id} is external: it is never cleaned or removed", 409)
    if record.claim is not None and (record.claim.holder, record.claim.purpose) == (request.holder, request.purpose):
        return record
    if record.claim is not None:
        raise ClaimRefused(
            f"engine {record.container_id} is busy: claimed for {record.claim.purpose} by {record.claim.holder}",
            409,
        )
    busy = load(record, now)
    if busy:
        raise ClaimRefused(f"engine {record.container_id} is busy: {busy} streams or reservations", 409)
    claim = Claim(
        claim_id=claim_id,
        purpose=request.purpose,
        holder=request.holder,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    return replace(record, claim=claim, state=effective_state(replace(record, claim=claim), now))


def apply_release(record: EngineRecord, claim_id: str, now: datetime) -> EngineRecord:
    """Release a claim. Releasing a claim that already lapsed is fine; someone else's is not."""
    record = tidy(record, now)
    if record.claim is None:
        return record
    if record.claim.claim_id != claim_id:
        raise ClaimRefused(
            f"engine {record.container_id} is claimed by {record.claim.holder}, not by claim {claim_id}", 409
        )
    return replace(record, claim=None, state="active")
