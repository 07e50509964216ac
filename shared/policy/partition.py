"""Which prober replica probes which engine, and when (pure; `now` is passed in).

Partition: rendezvous (highest-random-weight) hashing of engine ids onto the
live prober members. Every replica sees the same member list (heartbeats in
the leases bucket, `shared.membership`) and computes the same owner for each
engine on its own, so:

- each engine has one owner, and is probed about once per interval in total,
  with no coordinator, no per-engine lease and no per-probe message to hand
  out work (1,000 engines would otherwise mean 1,000 leases to renew, or a
  work-queue message and ack per probe);
- when a member dies only *its* engines move, spread evenly over the
  survivors; when one joins it takes an even share and nobody else's engines
  move (modulo hashing with N replicas would reshuffle nearly everything);
- two replicas that briefly disagree about membership only double-probe or
  skip the engines of the member in question, for at most one heartbeat TTL.

A killed member stops renewing its heartbeat; the others drop it after the
heartbeat TTL (1.5 intervals) and probe its engines that are overdue within a
quarter interval (`catch_up_s`), so its share is probed again within two
intervals.

Schedule: Envoy/HAProxy vocabulary. A settled engine (healthy and passing, or
unhealthy and failing) is probed every `interval_s` with jitter; an engine in
transition (a failure while not yet unhealthy, a success while not yet
healthy again) is re-checked after `recheck_s` (HAProxy's `fastinter`), which
is what takes a hung engine out of selection within about
interval + 2 × timeout + recheck. The prober mirrors the state-keeper's
hysteresis (`shared.policy.health.next_status`) to know which case applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Literal

from shared.policy.health import HealthPolicy, next_status
from shared.schemas import EngineRecord, HealthStatus

# ---------------------------------------------------------------- partition


def weight(member: str, key: str) -> int:
    """A stable pseudo-random weight of (member, key); the same in every process.

    Python's hash() is salted per process, so it can't be used: replicas must agree.
    """
    digest = blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, members: Iterable[str]) -> str | None:
    """The member that probes `key`: the highest weight wins (ties: the larger id)."""
    return max(members, key=lambda member: (weight(member, key), member), default=None)


def owned_keys(keys: Iterable[str], members: Sequence[str], me: str) -> set[str]:
    """The keys `me` owns among `members` (`me` counts as a member even if not listed)."""
    everyone = set(members) | {me}
    return {key for key in keys if owner(key, everyone) == me}


# ---------------------------------------------------------------- schedule


@dataclass(frozen=True)
class ProbeSchedule:
    interval_s: float = 30.0  # a settled engine is probed this often
    recheck_s: float = 5.0  # an engine in transition is probed again this soon after a probe
    jitter: float = 0.1  # each interval varies by ±jitter/2 of itself, so phases drift apart
    new_engine_window_s: float = 1.0  # a newly registered engine is probed within this
    fall: int = 2
    rise: int = 2

    @property
    def catch_up_s(self) -> float:
        """Overdue engines (a dead member's share, a restart) are probed within this."""
        return self.interval_s / 4

    @property
    def batch_s(self) -> float:
        """Probes due this close together start together.

        Waking the event loop once per probe costs about twice the CPU of waking
        once per handful (measured with httpx: 1.9 vs 0.9 ms per probe); starting
        a probe this early stays well inside the jitter.
        """
        return min(0.5, self.interval_s * self.jitter / 4)

    @property
    def policy(self) -> HealthPolicy:
        return HealthPolicy(fall=self.fall, rise=self.rise)


@dataclass(frozen=True)
class Streak:
    """The prober's own copy of an engine's hysteresis state (mirrors the record's)."""

    status: HealthStatus = "unknown"
    failures: int = 0
    successes: int = 0


def streak_of(record: EngineRecord | None) -> Streak:
    if record is None:
        return Streak()
    return Streak(record.health_status, record.consecutive_failures, record.consecutive_successes)


def after_probe(streak: Streak, ok: bool, schedule: ProbeSchedule) -> Streak:
    failures = 0 if ok else streak.failures + 1
    successes = streak.successes + 1 if ok else 0
    return Streak(next_status(streak.status, ok, failures, successes, schedule.policy), failures, successes)


def settled(streak: Streak, ok: bool) -> bool:
    """The last result agrees with the status it led to: nothing to confirm quickly."""
    return streak.status == ("healthy" if ok else "unhealthy")


def jittered(base_s: float, jitter: float, u: float) -> float:
    """`base_s` scaled by a factor in [1 - jitter/2, 1 + jitter/2); `u` is uniform in [0, 1)."""
    return base_s * (1 + jitter * (u - 0.5))


def next_due(due: float, finished: float, ok: bool, streak: Streak, schedule: ProbeSchedule, u: float) -> float:
    """When to probe again, given when this probe was due, when it finished, and the streak it ended.

    Settled engines keep their cadence from the due time, so neither a slow probe
    nor a busy event loop makes the period drift past the interval (after a long
    stall, probes stay at least half an interval apart instead of catching up
    back to back); transitions are re-checked `recheck_s` after the result.
    """
    if settled(streak, ok):
        return max(due + jittered(schedule.interval_s, schedule.jitter, u), finished + schedule.interval_s / 2)
    return finished + jittered(schedule.recheck_s, schedule.jitter, u)


Arrival = Literal["startup", "registered", "adopted"]


def first_due(now: float, age_s: float | None, arrival: Arrival, schedule: ProbeSchedule, u: float) -> float:
    """When to first probe an engine this replica just took on.

    `age_s` is the time since its last probe (from the record, by whichever
    replica), None if never probed. A recently probed engine keeps its phase;
    an overdue one is caught up within `catch_up_s`; a never-probed one is
    probed within `new_engine_window_s`, except at start-up, where the whole
    fleet is spread over one interval instead of arriving at once.
    """
    interval = schedule.interval_s
    if age_s is None:
        window = interval if arrival == "startup" else min(schedule.new_engine_window_s, interval)
        return now + u * window
    if age_s < interval:
        return now + interval - max(age_s, 0.0)
    return now + u * schedule.catch_up_s


# ---------------------------------------------------------------- rescue

RESCUE_SLACK_S = 1.0  # a report's way to the record: publish, state-keeper, KV, our view


def rescue_position(key: str, members: Iterable[str], me: str) -> int:
    """`me`'s place in `key`'s rendezvous order: 0 is its owner, 1 its first rescuer, and so on.

    Every replica computes the same order, so rescuers take turns instead of
    probing all at once, and a dead member's share spreads over the others."""
    mine = (weight(me, key), me)
    return sum(1 for member in set(members) if member != me and (weight(member, key), member) > mine)


def overdue(
    age_s: float | None,
    known_for_s: float,
    arrival: Arrival,
    position: int,
    schedule: ProbeSchedule,
    timeout_s: float,
    health_max_age_s: float,
) -> bool:
    """The rescuer at `position` should probe the engine now: its owner (and the rescuers before) did not.

    A member killed moments ago keeps its share until its heartbeat's TTL
    (1.5 intervals); its new engines would wait that long for a first probe and
    its old ones would go stale. So: never probed although known for longer than
    its owner takes to probe it first (`new_engine_window_s`, or a whole interval
    for engines known at start-up, which `first_due` spreads), plus one probe-and-report time
    (timeout + the report's way) per rescuer before this one; or a stale verdict
    (`shared.policy.freshness`), likewise, once known for longer than an owner
    takes to catch an overdue engine up.
    """
    if position <= 0:
        return False  # the owner probes on its schedule
    step = timeout_s + RESCUE_SLACK_S
    if age_s is None:
        window = schedule.interval_s if arrival == "startup" else schedule.new_engine_window_s
        return known_for_s >= window + position * step
    return age_s >= health_max_age_s + (position - 1) * step and known_for_s >= schedule.catch_up_s + step
