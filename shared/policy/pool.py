"""Pool sizing, shared by the provisioner (adds) and the reaper (removes), so they never fight.

The pool is the engines this system manages (runtime `docker` or `local`);
external engines are selected but neither counted, created nor removed.
Floors: at least `min_replicas` engines and `min_free_replicas` free ones
(healthy, active, no streams or live reservations). Ceiling: `max_replicas`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from shared.policy.engines import effective_state, is_idle
from shared.schemas import EngineRecord


@dataclass(frozen=True)
class PoolPolicy:
    min_replicas: int = 2
    min_free_replicas: int = 1
    max_replicas: int = 10
    grace_period_s: float = 30.0
    unhealthy_replace_after_s: float = 120.0


def managed(records: Iterable[EngineRecord]) -> list[EngineRecord]:
    return [r for r in records if r.runtime != "external"]


def is_free(record: EngineRecord, now: datetime) -> bool:
    return record.health_status == "healthy" and effective_state(record, now) == "active" and is_idle(record, now)


def engines_to_add(
    records: Iterable[EngineRecord], now: datetime, policy: PoolPolicy, starting: int = 0, demand: bool = False
) -> int:
    """How many engines to start now. Engines still `starting` count as free ones to come."""
    pool = managed(records)
    total = len(pool) + starting
    free = sum(is_free(r, now) for r in pool) + starting
    need = max(
        policy.min_replicas - total,
        policy.min_free_replicas - free,
        1 if demand and free == 0 else 0,
    )
    return max(0, min(need, policy.max_replicas - total))


def idle_for_s(record: EngineRecord, now: datetime) -> float:
    since = record.idle_since or record.created_at
    return 0.0 if since is None else (now - since).total_seconds()


def reapable(record: EngineRecord, now: datetime, policy: PoolPolicy) -> bool:
    """Idle long enough, not in use, not claimed. A stream or live reservation always protects."""
    return (
        record.runtime != "external"
        and is_idle(record, now)
        and effective_state(record, now) == "active"
        and idle_for_s(record, now) >= policy.grace_period_s
    )


def above_floors_without(records: Iterable[EngineRecord], victim: EngineRecord, now: datetime, policy: PoolPolicy) -> bool:
    """Would the pool still meet both floors if `victim` were gone?"""
    rest = [r for r in managed(records) if r.container_id != victim.container_id]
    return len(rest) >= policy.min_replicas and sum(is_free(r, now) for r in rest) >= policy.min_free_replicas


def next_to_reap(records: Iterable[EngineRecord], now: datetime, policy: PoolPolicy) -> EngineRecord | None:
    """The longest-idle reapable engine whose removal keeps the floors; recount after each removal."""
    records = list(records)
    candidates = sorted(
        (r for r in records if reapable(r, now, policy)),
        key=lambda r: (-idle_for_s(r, now), r.container_id),
    )
    for candidate in candidates:
        if above_floors_without(records, candidate, now, policy):
            return candidate
    return None


def unhealthy_for_s(record: EngineRecord, now: datetime) -> float:
    if record.health_status != "unhealthy" or record.health_since is None:
        return 0.0
    return (now - record.health_since).total_seconds()


def is_outage(records: Iterable[EngineRecord]) -> bool:
    """More than half the pool unhealthy: a shared cause (network, host), not bad engines."""
    pool = managed(records)
    return bool(pool) and 2 * sum(r.health_status == "unhealthy" for r in pool) > len(pool)


def next_to_replace(records: Iterable[EngineRecord], now: datetime, policy: PoolPolicy) -> EngineRecord | None:
    """The engine unhealthy the longest beyond the limit, unless the fleet looks like an outage."""
    records = list(records)
    if is_outage(records):
        return None
    overdue = [
        r
        for r in managed(records)
        if unhealthy_for_s(r, now) > policy.unhealthy_replace_after_s and not r.streams
    ]
    return max(overdue, key=lambda r: (unhealthy_for_s(r, now), r.container_id), default=None)
