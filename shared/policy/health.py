"""Health hysteresis (DESIGN §5), in HAProxy's rise/fall vocabulary.

The prober reports observations; this decides the status. A new engine's
first success makes it healthy at once, so fresh engines enter selection
without waiting for `rise` probes.

Observations are ordered by their event's sequence in ACE_EVENTS, never by
the prober's `checked_at`: that clock is not ours, and one report stamped
in the future would otherwise make every later report look stale (a hung
engine would stay healthy). A report stamped beyond MAX_CLOCK_SKEW_S ahead
is refused outright (`check_report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

from shared.policy.clock import check_not_ahead
from shared.schemas import EngineHealth, EngineRecord, HealthStatus


@dataclass(frozen=True)
class HealthPolicy:
    fall: int = 2  # consecutive failures before `unhealthy`
    rise: int = 2  # consecutive successes before an unhealthy engine is `healthy` again


def next_status(current: HealthStatus, ok: bool, failures: int, successes: int, policy: HealthPolicy) -> HealthStatus:
    """The status after an observation, given the streak counts that include it."""
    if ok:
        if current == "unknown" or (current == "unhealthy" and successes >= policy.rise):
            return "healthy"
        return current
    if failures >= policy.fall:
        return "unhealthy"
    return current


def check_report(obs: EngineHealth, now: datetime, max_skew_s: float) -> None:
    """Raise `ClockSkewed` for a report stamped further ahead of `now` than the skew allows."""
    check_not_ahead(obs.checked_at, now, max_skew_s, "checked_at")


def observe(record: EngineRecord, obs: EngineHealth, policy: HealthPolicy, now: datetime, seq: int) -> EngineRecord:
    """Apply one probe observation, `seq` being its event's sequence in ACE_EVENTS.

    A report not newer (by sequence) than the last one applied is a duplicate or
    was overtaken by a later report: it changes nothing.
    """
    if seq <= record.health_seq:
        return record
    failures = 0 if obs.ok else record.consecutive_failures + 1
    successes = record.consecutive_successes + 1 if obs.ok else 0
    status = next_status(record.health_status, obs.ok, failures, successes, policy)
    return msgspec.structs.replace(
        record,
        health_status=status,
        health_since=now if status != record.health_status else record.health_since,
        last_health_check=obs.checked_at,
        consecutive_failures=failures,
        consecutive_successes=successes,
        last_error=record.last_error if obs.ok else (obs.error or "unknown error"),
        version=obs.version or record.version,
        health_seq=seq,
    )
