"""Engine selection (DESIGN §5): sticky by content, then least load, then longest idle."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec

from shared.policy.engines import effective_state, live_reservations, load
from shared.schemas import EngineRecord

# Sorts never-used engines before any used one.
_NEVER = datetime.min.replace(tzinfo=timezone.utc)
LoadFunction = Callable[[EngineRecord, datetime], int]


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
    return _free_load(record, now, policy, load) is not None


def _free_load(record: EngineRecord, now: datetime, policy: SelectionPolicy, load_of: LoadFunction) -> int | None:
    """The engine's load if it can take another stream now, else None."""
    if record.health_status != "healthy" or (record.claim is not None and effective_state(record, now) != "active"):
        return None
    busy = load_of(record, now)
    return busy if busy < policy.max_streams_per_engine else None


def select_engine(
    engines: Iterable[EngineRecord],
    now: datetime,
    policy: SelectionPolicy,
    content_key: str | None = None,
    playing: Mapping[str, set[str]] | None = None,
    tiebreak: Callable[[str], object] = str,
    load_of: LoadFunction = load,
) -> Selection | None:
    """Pick an engine, or None when there is no capacity.

    `playing` maps a content key to the container ids it currently plays on
    (from the stream records); it makes viewers of one channel share an engine.
    `tiebreak` orders engines that are equal on load and idle time; replicas
    that rank them differently spread their picks instead of racing for one.
    `load_of` computes an engine's load (a `LoadMemo` on the hot path).
    """
    # (load, record) of every candidate: each load is computed once (this runs per request).
    candidates = []
    for record in engines:
        busy = _free_load(record, now, policy, load_of)
        if busy is not None:
            candidates.append((busy, record))
    if not candidates:
        return None
    if policy.share_content and content_key and playing:
        hosts = playing.get(content_key, set())
        sharing = [c for c in candidates if c[1].container_id in hosts]
        if sharing:
            return Selection(min(sharing, key=lambda c: (c[0], tiebreak(c[1].container_id)))[1], shared=True)
    best = min(candidates, key=lambda c: (c[0], c[1].last_stream_usage or _NEVER, tiebreak(c[1].container_id)))
    return Selection(best[1], shared=False)


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
