"""Pool sizing, shared by the provisioner (adds) and the reaper (removes), so they never fight.

The pool is the engines this system manages (runtime `docker` or `local`);
external engines are selected but neither counted, created nor removed.
Floors: at least `min_replicas` engines and `min_free_replicas` free ones
(healthy, active, no streams or live reservations). Ceiling: `max_replicas`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.config import Config
from shared.policy.engines import effective_state, is_idle
from shared.policy.hosts import host_floor_deficit, keeps_host_floor, place
from shared.schemas import EngineRecord


@dataclass(frozen=True)
class PoolPolicy:
    min_replicas: int = 2
    min_free_replicas: int = 1
    max_replicas: int = 10
    grace_period_s: float = 30.0
    unhealthy_replace_after_s: float = 120.0
    min_replicas_per_host: int = 0

    @classmethod
    def from_config(cls, config: Config) -> PoolPolicy:
        return cls(
            min_replicas=config.min_replicas,
            min_free_replicas=config.min_free_replicas,
            max_replicas=config.max_replicas,
            grace_period_s=config.engine_grace_period_s,
            unhealthy_replace_after_s=config.unhealthy_replace_after_s,
            min_replicas_per_host=config.min_replicas_per_host,
        )


def managed(records: Iterable[EngineRecord]) -> list[EngineRecord]:
    return [r for r in records if r.runtime != "external"]


def is_free(record: EngineRecord, now: datetime) -> bool:
    # A cache clean takes seconds and leaves the engine free: counting it as busy would make
    # the provisioner start an engine every time the janitor works.
    return (
        record.health_status == "healthy"
        and effective_state(record, now) in ("active", "cleaning")
        and is_idle(record, now)
    )


def counted(records: Iterable[EngineRecord], now: datetime, policy: PoolPolicy) -> list[EngineRecord]:
    """The managed engines that will stay: not being reaped (draining), not due for replacement.

    Both floors and additions count these, so two reapers working at once never
    take the pool below the floors, and engines due for replacement make room
    for their successors instead of blocking them. All of them, not only the
    next one the reapers remove: only an engine's own host removes it, so with
    two sick engines on a host cut off the second kept counting and the fleet
    stayed below its floors for as long as the cut lasted.
    """
    records = list(records)
    due = {r.container_id for r in due_for_replacement(records, now, policy)}
    return [r for r in managed(records) if effective_state(r, now) != "draining" and r.container_id not in due]


def engines_to_add(
    records: Iterable[EngineRecord],
    now: datetime,
    policy: PoolPolicy,
    starting: int = 0,
    demand: bool = False,
    host_deficit: int = 0,
) -> int:
    """How many engines to start now. Engines still `starting` count as free ones to come.

    `host_deficit`: engines live hosts lack below MIN_REPLICAS_PER_HOST (`hosts.host_floor_deficit`).
    """
    records = list(records)
    pool = counted(records, now, policy)
    total = len(pool) + starting
    free = sum(is_free(r, now) for r in pool) + starting
    need = max(
        policy.min_replicas - total,
        policy.min_free_replicas - free,
        1 if demand and free == 0 else 0,
        # Engines still starting may be the ones a short host is waiting for: count them as such.
        host_deficit - starting,
    )
    # The ceiling counts every engine that still exists, even one on its way out.
    return max(0, min(need, policy.max_replicas - len(managed(records)) - starting))


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


def above_floors_without(
    records: Iterable[EngineRecord], victim: EngineRecord, now: datetime, policy: PoolPolicy
) -> bool:
    """Would the pool still meet both floors, and the victim's host its own, if `victim` were gone?"""
    pool = counted(records, now, policy)
    rest = [r for r in pool if r.container_id != victim.container_id]
    return (
        len(rest) >= policy.min_replicas
        and sum(is_free(r, now) for r in rest) >= policy.min_free_replicas
        and keeps_host_floor(pool, victim, policy.min_replicas_per_host)
    )


def next_to_reap(
    records: Iterable[EngineRecord], now: datetime, policy: PoolPolicy, skip: Collection[str] = ()
) -> EngineRecord | None:
    """The longest-idle reapable engine whose removal keeps the floors; recount after each removal.

    `skip`: engines the caller cannot take this time (busy, another runtime's);
    they are not candidates but still count towards the floors.
    """
    records = list(records)
    candidates = sorted(
        (r for r in records if r.container_id not in skip and reapable(r, now, policy)),
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


def due_for_replacement(records: Iterable[EngineRecord], now: datetime, policy: PoolPolicy) -> list[EngineRecord]:
    """Engines unhealthy beyond the limit and without streams; none while the fleet looks like an outage."""
    records = list(records)
    if is_outage(records):
        return []
    return [r for r in managed(records) if unhealthy_for_s(r, now) > policy.unhealthy_replace_after_s and not r.streams]


def next_to_replace(records: Iterable[EngineRecord], now: datetime, policy: PoolPolicy) -> EngineRecord | None:
    """The engine due for replacement that has been unhealthy the longest: reapers remove one at a time."""
    due = due_for_replacement(records, now, policy)
    return max(due, key=lambda r: (unhealthy_for_s(r, now), r.container_id), default=None)


# ---------------------------------------------------------------- provisioner (added for services/provisioner)


def is_pending(record: EngineRecord, now: datetime) -> bool:
    """Registered but never probed yet: a free engine to come, not a missing one."""
    return record.health_status == "unknown" and effective_state(record, now) == "active" and is_idle(record, now)


def engines_to_start(
    records: Iterable[EngineRecord],
    now: datetime,
    policy: PoolPolicy,
    unregistered: int = 0,
    demand: bool = False,
    host_deficit: int = 0,
) -> int:
    """`engines_to_add`, counting engines that exist but do not answer yet as free ones to come.

    `unregistered`: engines the runtime runs that have no record yet (being
    started, by this replica or another). Registered engines the prober has
    not reached yet count the same way, so a demand in that short window does
    not start one engine too many.
    """
    pool = managed(records)
    settled = [r for r in pool if not is_pending(r, now)]
    pending = len(pool) - len(settled)
    return engines_to_add(
        settled, now, policy, starting=unregistered + pending, demand=demand, host_deficit=host_deficit
    )


def plan_starts(
    records: Iterable[EngineRecord],
    now: datetime,
    policy: PoolPolicy,
    live_hosts: Collection[str],
    starting: Mapping[str, int],
    host_max: int = 0,
    demand: bool = False,
) -> list[str]:
    """The host of each engine to start now, fleet-wide: how many as `engines_to_start`, counting the
    engines `starting` on every host (per host, created there without a record yet), then where as
    `hosts.place` over the hosts whose provisioner is alive, at most `host_max` each (0: no cap).

    Each host's provisioner starts only the entries naming its own host; every holder of the
    scaling lock reaches the same plan from the same records and starts, so the others' entries
    are what they will start when they hold it.
    """
    pool = managed(records)
    deficit = host_floor_deficit(pool, live_hosts, policy.min_replicas_per_host)
    count = engines_to_start(
        pool, now, policy, unregistered=sum(starting.values()), demand=demand, host_deficit=deficit
    )
    return place(pool, live_hosts, count, host_max, starting)


START_BACKOFF_BASE_S = 1.0
START_BACKOFF_MAX_S = 60.0


def start_backoff_s(
    consecutive_failures: int, base_s: float = START_BACKOFF_BASE_S, cap_s: float = START_BACKOFF_MAX_S
) -> float:
    """How long to wait before the next start after `consecutive_failures` failed ones (0: none)."""
    if consecutive_failures <= 0:
        return 0.0
    return min(cap_s, base_s * 2.0 ** (consecutive_failures - 1))
