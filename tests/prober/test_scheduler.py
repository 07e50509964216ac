"""The probe scheduler on its own: cadence, bounded concurrency, hung targets, removal.

The check function here is a stand-in for the HTTP probe (the integration
tests use real engines); time is real but short.
"""

import asyncio
import time
from collections import defaultdict
from itertools import pairwise

from support import wait_until

from services.prober.scheduler import ProbeScheduler
from shared.engine_client import ProbeResult
from shared.policy.partition import ProbeSchedule, Streak

SCHEDULE = ProbeSchedule(interval_s=0.2, recheck_s=0.1, jitter=0.1)


class Fleet:
    """Fake engines: `hung` ones answer after `hang_s` with a timeout, the rest at once."""

    def __init__(self, hung=(), hang_s=0.3):
        self.hung = set(hung)
        self.hang_s = hang_s
        self.probes: dict[str, list[float]] = defaultdict(list)
        self.reported: list[str] = []
        self.running = self.most_running = 0

    async def check(self, key):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.probes[key].append(time.monotonic())
        try:
            if key in self.hung:
                await asyncio.sleep(self.hang_s)
                return ProbeResult(ok=False, latency_ms=self.hang_s * 1000, error="timeout")
            await asyncio.sleep(0.001)
            return ProbeResult(ok=True, latency_ms=1.0)
        finally:
            self.running -= 1

    async def report(self, key, result):
        self.reported.append(key)


async def run_for(scheduler, seconds):
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


def gaps(times):
    return [b - a for a, b in pairwise(times)]


async def test_hung_targets_do_not_delay_the_others():
    # Three targets hang for 3 intervals each: probed one after another, the
    # others would wait 9 intervals per round.
    fleet = Fleet(hung={"h0", "h1", "h2"}, hang_s=3 * SCHEDULE.interval_s)
    scheduler = ProbeScheduler(SCHEDULE, fleet.check, fleet.report, concurrency=10)
    now = time.monotonic()
    for i in range(3):
        scheduler.add(f"h{i}", Streak("healthy"), now)
    for i in range(5):
        scheduler.add(f"e{i}", Streak("healthy"), now + i * 0.01)
    await run_for(scheduler, 2.0)
    for i in range(5):
        times = fleet.probes[f"e{i}"]
        assert len(times) >= 8, times  # ~10 in 2 s; the loop may lag on a busy machine
        assert sum(gaps(times)) / len(gaps(times)) < SCHEDULE.interval_s * 1.25, gaps(times)
    # hung: fail (0.6 s) → recheck 0.1 s later, fail (0.6 s) → settled unhealthy → an interval later
    assert 2 <= len(fleet.probes["h0"]) <= 3


async def test_concurrency_is_bounded():
    fleet = Fleet(hung={f"h{i}" for i in range(20)}, hang_s=0.2)
    scheduler = ProbeScheduler(SCHEDULE, fleet.check, fleet.report, concurrency=4)
    now = time.monotonic()
    for i in range(20):
        scheduler.add(f"h{i}", Streak("healthy"), now)
    await run_for(scheduler, 0.5)
    assert fleet.most_running == 4


async def test_removed_targets_are_neither_probed_nor_reported():
    fleet = Fleet()
    scheduler = ProbeScheduler(SCHEDULE, fleet.check, fleet.report, concurrency=4)
    now = time.monotonic()
    scheduler.add("stay", Streak("healthy"), now)
    scheduler.add("gone", Streak("healthy"), now + 0.1)
    scheduler.remove("gone")
    await run_for(scheduler, 0.5)
    assert "gone" not in fleet.probes and "gone" not in fleet.reported
    assert len(fleet.probes["stay"]) >= 2 and "gone" not in scheduler


async def test_an_earlier_arrival_wakes_the_sleeping_loop():
    fleet = Fleet()
    scheduler = ProbeScheduler(SCHEDULE, fleet.check, fleet.report, concurrency=4)
    scheduler.add("late", Streak("healthy"), time.monotonic() + 60)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(0.05)
    added = time.monotonic()
    scheduler.add("new", Streak(), added)
    await wait_until(lambda: fleet.probes["new"], timeout=5, what="the new target's first probe")
    stop.set()
    await task
    assert fleet.probes["new"] and fleet.probes["new"][0] - added < 0.05
