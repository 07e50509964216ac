"""Engine selection (DESIGN §5): sticky by content, then least load, then longest idle."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from shared.policy.engines import effective_state, live_reservations, load
from shared.schemas import EngineRecord

# Sorts never-used engines before any used one.
_NEVER = datetime.min.replace(tzinfo=None)


@dataclass(frozen=True)
class SelectionPolicy:
    max_streams_per_engine: int = 3
    share_content: bool = True
    reservation_ttl_s: float = 30.0


@dataclass(frozen=True)
class Selection:
    engine: EngineRecord
    shared: bool


def is_candidate(record: EngineRecord, now: datetime, policy: SelectionPolicy) -> bool:
    return (
        record.health_status == "healthy"
        and effective_state(record, now) == "active"
        and load(record, now) < policy.max_streams_per_engine
    )


def _idle_order(record: EngineRecord) -> datetime:
    used = record.last_stream_usage
    return _NEVER if used is None else used.replace(tzinfo=None)


def select_engine(
    engines: Iterable[EngineRecord],
    now: datetime,
    policy: SelectionPolicy,
    content_key: str | None = None,
    playing: Mapping[str, set[str]] | None = None,
) -> Selection | None:
    """Pick an engine, or None when there is no capacity.

    `playing` maps a content key to the container ids it currently plays on
    (from the stream records); it makes viewers of one channel share an engine.
    """
    candidates = [r for r in engines if is_candidate(r, now, policy)]
    if not candidates:
        return None
    if policy.share_content and content_key and playing:
        hosts = playing.get(content_key, set())
        sharing = [r for r in candidates if r.container_id in hosts]
        if sharing:
            return Selection(min(sharing, key=lambda r: (load(r, now), r.container_id)), shared=True)
    best = min(candidates, key=lambda r: (load(r, now), _idle_order(r), r.container_id))
    return Selection(best, shared=False)


def reserve(record: EngineRecord, reservation_id: str, now: datetime, ttl_s: float) -> EngineRecord:
    reservations = live_reservations(record, now)
    reservations[reservation_id] = now + timedelta(seconds=ttl_s)
    return msgspec.structs.replace(record, reservations=reservations)


def retry_after_s(engines: Iterable[EngineRecord], now: datetime, default: float = 5.0) -> float:
    """When capacity is likeliest to return: the soonest reservation expiry on a usable engine."""
    expiries = [
        expires
        for r in engines
        if r.health_status == "healthy" and effective_state(r, now) == "active"
        for expires in live_reservations(r, now).values()
    ]
    if not expiries:
        return default
    return round(min(max((min(expiries) - now).total_seconds(), 1.0), 30.0), 1)
