"""Event application (DESIGN §2): records + event + now → new records + notifications.

Every function here is idempotent and tolerant of reordering:
- a stream's record is the source of truth for its status; once `ended` it
  stays ended (a tombstone), so a late or duplicated `stream.started` is ignored;
- an engine's `streams` list is reconciled against that status, never
  incremented blindly, so duplicates cannot double-count;
- an engine's registrations and removal are ordered by their events' sequence
  in ACE_EVENTS (`seq`), and a removal leaves a tombstone (`EngineRemoval`), so
  a redelivered or concurrently applied registration cannot bring it back;
- an engine record lists at most `MAX_RECORD_STREAMS` streams, so no record
  nears NATS's max_payload (1 MB) however many starts proxies report.

Timestamps from proxies' clocks are bounded by the state-keeper's
(`shared.policy.clock`); nothing is ordered or expired by them alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from shared.policy.clock import end_time, start_time
from shared.policy.engines import effective_state, load, tidy
from shared.schemas import (
    Claim,
    ClaimRequest,
    EngineCleaned,
    EngineIdle,
    EngineRecord,
    EngineRegistered,
    EngineRemoval,
    StreamEnded,
    StreamRecord,
    StreamStarted,
)

replace = msgspec.structs.replace

# Far above what an engine plays (MAX_STREAMS_PER_ENGINE, default 3) yet small enough that the
# ids alone (at most 255 ASCII bytes each, `Key`) stay near 64 KB: a record of every field at its
# largest remains far below NATS's default max_payload of 1 MB, whose breach closes the connection.
MAX_RECORD_STREAMS = 256


class EngineFull(Exception):
    """A stream start that would make an engine record list more than MAX_RECORD_STREAMS streams."""


@dataclass(frozen=True)
class EngineChange:
    record: EngineRecord
    notifications: tuple[EngineIdle, ...] = field(default=())


def apply_engine_registered(
    record: EngineRecord | None, event: EngineRegistered, now: datetime, seq: int, removed_seq: int = 0
) -> EngineRecord | None:
    """Create the record, or refresh its address (a re-registration after a restart keeps usage).

    `seq` is the registration's sequence in ACE_EVENTS, `removed_seq` the sequence of the
    engine's last removal (from its tombstone; 0 if none). The rule: the later event wins.
    - A registration older than the removal is a redelivery or was applied concurrently
      with it: it changes nothing, so a removed engine stays removed.
    - A registration newer than the removal is genuine (a container restarted with the same
      id, an external engine registered again on purpose): it creates the record again.
    - A registration older than the one the record already reflects changes nothing either
      (the newer address wins).
    """
    if seq <= removed_seq or (record is not None and seq <= record.registered_seq):
        return record
    name = event.container_name or event.container_id
    if record is None:
        return EngineRecord(
            container_id=event.container_id,
            container_name=name,
            host=event.host,
            port=event.port,
            runtime=event.runtime,
            labels=dict(event.labels),
            host_id=event.host_id,
            created_at=now,
            idle_since=now,
            registered_seq=seq,
            # Reports older than the registration belong to an earlier life of this id.
            health_seq=seq,
        )
    return replace(
        record,
        container_name=name,
        host=event.host,
        port=event.port,
        runtime=event.runtime,
        labels=dict(event.labels),
        host_id=event.host_id,
        registered_seq=seq,
    )


def removal_applies(record: EngineRecord | None, seq: int) -> bool:
    """A removal (at `seq`) deletes the record unless a newer registration already made it again."""
    return record is not None and record.registered_seq < seq


def later_removal(existing: EngineRemoval | None, removal: EngineRemoval) -> EngineRemoval:
    """The tombstone after a removal: the latest removal (by sequence) is the one kept."""
    if existing is not None and existing.removed_seq >= removal.removed_seq:
        return existing
    return removal


def forget_sequences_beyond(record: EngineRecord, last_seq: int) -> EngineRecord:
    """The record without sequences ACE_EVENTS never reached (`last_seq` is its last one).

    Such sequences come from an earlier events stream (deleted and made again, so numbering
    restarted): kept, they would make every new registration and health report look stale.
    """
    if record.registered_seq <= last_seq and record.health_seq <= last_seq:
        return record
    return replace(
        record,
        registered_seq=record.registered_seq if record.registered_seq <= last_seq else 0,
        health_seq=record.health_seq if record.health_seq <= last_seq else 0,
    )


def removal_expired(removal: EngineRemoval, now: datetime, ttl_s: float) -> bool:
    """A tombstone has served its purpose: redeliveries of older registrations are long past.

    `removed_at` is the state-keeper's own clock (when it applied the removal)."""
    return (now - removal.removed_at).total_seconds() >= ttl_s


def apply_stream_started_to_stream(
    existing: StreamRecord | None, event: StreamStarted, container_id: str, now: datetime
) -> StreamRecord:
    """The stream record after a start: created once; an ended tombstone wins, and learns the start's details.

    An end can be applied before its start (a redelivered start, replicas in parallel): the
    stream stays ended, but its record must read the same as if the start had come first,
    or the order of delivery would decide what history shows.
    """
    if existing is not None and (existing.status == "started" or existing.started_at is not None):
        return existing
    started = StreamRecord(
        stream_id=event.stream_id,
        container_id=container_id,
        content_key=event.content_key,
        key_type=event.key_type,
        playback_session_id=event.playback_session_id,
        stat_url=event.stat_url,
        command_url=event.command_url,
        is_live=event.is_live,
        status="started",
        started_at=start_time(event.started_at, now),
        proxy=event.proxy,
    )
    if existing is None:
        return started
    return replace(
        started,
        container_id=existing.container_id or container_id,
        status="ended",
        ended_at=existing.ended_at,
        reason=existing.reason,
    )


def apply_stream_ended_to_stream(
    existing: StreamRecord | None, event: StreamEnded, now: datetime, max_skew_s: float
) -> StreamRecord:
    """The stream record after an end: always a tombstone; the first end wins.

    `ended_at` is the proxy's stamp bounded to [now - max_skew_s, now], so the tombstone
    lives about STREAM_TTL_S from when the end was applied, whatever the proxy's clock says.
    """
    ended_at = end_time(event.ended_at, now, max_skew_s)
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
    """Make the engine's `streams` agree with the stream record's status.

    Raises `EngineFull` rather than list more than MAX_RECORD_STREAMS streams.
    """
    record = tidy(record, now)
    present = stream.stream_id in record.streams
    if stream.status == "started":
        reservations = {k: v for k, v in record.reservations.items() if k != reservation_id}
        if present and reservations == record.reservations:
            return EngineChange(record)
        if not present and len(record.streams) >= MAX_RECORD_STREAMS:
            raise EngineFull(
                f"engine {record.container_id} already lists {len(record.streams)} streams, the most a record "
                f"holds ({MAX_RECORD_STREAMS}); stream {stream.stream_id} refused (are its proxies' ends lost?)"
            )
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
