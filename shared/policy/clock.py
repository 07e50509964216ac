"""Timestamps from other machines' clocks, held to the state-keeper's own (MAX_CLOCK_SKEW_S).

Probers and proxies stamp their events with their own clocks. Nothing the
state-keeper orders or expires may depend on such a stamp alone: one report
from a clock set to 2099 would otherwise outrank every later one, and an end
stamped in 1970 would expire its stream's tombstone at once. Order comes from
the event's sequence in ACE_EVENTS; stamps are only checked or bounded here.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class ClockSkewed(ValueError):
    """A reported timestamp lies further ahead of the state-keeper's clock than the skew allows."""


def check_not_ahead(stamp: datetime, now: datetime, max_skew_s: float, what: str) -> None:
    """Raise `ClockSkewed` when `stamp` is more than `max_skew_s` after `now`."""
    ahead = (stamp - now).total_seconds()
    if ahead > max_skew_s:
        raise ClockSkewed(
            f"{what} {stamp.isoformat()} is {ahead:.0f}s ahead of the state-keeper's clock "
            f"(MAX_CLOCK_SKEW_S={max_skew_s:g}); is the reporter's clock wrong?"
        )


def start_time(stamp: datetime | None, now: datetime) -> datetime:
    """When a stream started: the proxy's stamp, but never later than when the state-keeper hears of it."""
    return now if stamp is None or stamp > now else stamp


def end_time(stamp: datetime | None, now: datetime, max_skew_s: float) -> datetime:
    """When a stream ended: the proxy's stamp within [now - max_skew_s, now].

    The lower bound is what keeps a tombstone for STREAM_TTL_S (less the skew) after the
    state-keeper applied the end, whatever the proxy's clock said; the upper bound keeps a
    fast clock from holding the tombstone (and its record) for ever.
    """
    if stamp is None or stamp > now:
        return now
    earliest = now - timedelta(seconds=max_skew_s)
    return earliest if stamp < earliest else stamp


def off_by(stamp: datetime | None, now: datetime, max_skew_s: float) -> float | None:
    """Seconds `stamp` lies outside now ± max_skew_s (positive: ahead), or None when within (for logs)."""
    if stamp is None:
        return None
    delta = (stamp - now).total_seconds()
    return delta if abs(delta) > max_skew_s else None
