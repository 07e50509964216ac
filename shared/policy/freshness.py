"""How long a health verdict holds (DESIGN §5): no older than one probe cycle allows.

A record's `health_status` is what the last probe led to, and it stays in the
KV after the probes stop: a restarted system (or a fleet whose probers all
died) would otherwise go on showing and selecting engines as `healthy` on the
strength of a check from before, though their processes may be gone. A live
prober re-checks every engine within `HEALTH_CHECK_INTERVAL_S`, and a failing
one within 2 × `HEALTH_CHECK_TIMEOUT_S` + `HEALTH_RECHECK_S` more, so a verdict
older than that sum is not being maintained by anybody: it reads `unknown`
until the next probe. Every reader applies the same rule (selection, the
CandidateIndex, the gateway's records, `engine.list`/`engine.get`), measured
from `last_health_check`, so no writer has to expire anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from shared.schemas import EngineRecord, HealthStatus

if TYPE_CHECKING:
    from shared.config import Config


def health_max_age_s(interval_s: float, timeout_s: float, recheck_s: float) -> float:
    """interval + 2 × timeout + recheck: the longest a maintained verdict goes without a new probe."""
    return interval_s + 2 * timeout_s + recheck_s


DEFAULT_HEALTH_MAX_AGE_S = health_max_age_s(30.0, 5.0, 5.0)  # DESIGN §6 defaults: 45 s


def health_max_age_of(config: Config) -> float:
    """The bound for a `shared.config.Config`."""
    return health_max_age_s(config.health_check_interval_s, config.health_check_timeout_s, config.health_recheck_s)


def stale_at(record: EngineRecord, max_age_s: float) -> datetime | None:
    """When the record's verdict stops holding; None when it never had one (no probe yet)."""
    checked = record.last_health_check
    return None if checked is None else checked + timedelta(seconds=max_age_s)


def is_health_fresh(record: EngineRecord, now: datetime, max_age_s: float) -> bool:
    """True while the last probe is younger than `max_age_s` (a record never probed has no fresh verdict)."""
    until = stale_at(record, max_age_s)
    return until is not None and now < until


def effective_health(record: EngineRecord, now: datetime, max_age_s: float) -> HealthStatus:
    """The status a reader may rely on now: the stored one while fresh, else `unknown`."""
    if record.health_status == "unknown" or is_health_fresh(record, now, max_age_s):
        return record.health_status
    return "unknown"


def with_effective_health(record: EngineRecord, now: datetime, max_age_s: float) -> EngineRecord:
    """The record as readers should see it: a stale verdict shown as `unknown`.

    `last_health_check` is kept as stored, so whoever reads the record sees why."""
    status = effective_health(record, now, max_age_s)
    if status == record.health_status:
        return record
    return msgspec.structs.replace(record, health_status=status)
