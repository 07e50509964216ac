"""When each engine this replica owns is probed next: a min-heap of due times.

The loop sleeps until the earliest due time (or until an earlier one is
added), then starts every probe due within `batch_s`, so between batches it
costs nothing and each probe costs O(log n) — never a scan over the fleet.
Each probe runs in its own task holding one of `concurrency` slots: a hung
engine holds a slot until its timeout and delays nobody else as long as free
slots remain (`PROBE_CONCURRENCY` above the number of engines hanging at once).

Removal is lazy: a removed or rescheduled target's old heap entry is skipped
when it surfaces.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.engine_client import ProbeResult
from shared.policy.partition import ProbeSchedule, Streak, after_probe, next_due

log = logging.getLogger("prober.scheduler")

Check = Callable[[str], Awaitable[ProbeResult | None]]  # None: the engine is gone
Report = Callable[[str, ProbeResult], Awaitable[None]]
_RETRY = ProbeResult(ok=False, latency_ms=0.0, error="internal")  # marker: our bug, not the engine's


@dataclass(eq=False)
class Target:
    key: str
    streak: Streak
    due: float = 0.0
    in_flight: bool = False


@dataclass
class RoundStats:
    probes: int = 0
    ok: int = 0
    slowest_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, result: ProbeResult) -> None:
        self.probes += 1
        self.slowest_ms = max(self.slowest_ms, result.latency_ms)
        if result.ok:
            self.ok += 1
        else:
            self.errors[result.error or "unknown"] = self.errors.get(result.error or "unknown", 0) + 1


class ProbeScheduler:
    def __init__(
        self,
        schedule: ProbeSchedule,
        check: Check,
        report: Report,
        concurrency: int,
        drain_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.schedule = schedule
        self._check = check
        self._report = report
        self._slots = asyncio.Semaphore(concurrency)
        self._drain_s = drain_s
        self._clock = clock
        self._rng = rng
        self._targets: dict[str, Target] = {}
        self._heap: list[tuple[float, int, Target]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.round = RoundStats()

    # ------------------------------------------------------------ membership of the schedule

    def __contains__(self, key: str) -> bool:
        return key in self._targets

    def __len__(self) -> int:
        return len(self._targets)

    def add(self, key: str, streak: Streak, due: float) -> None:
        """Start probing `key` at `due` (replaces any earlier schedule for it)."""
        target = Target(key, streak)
        self._targets[key] = target
        self._push(target, due)

    def remove(self, key: str) -> None:
        """Stop probing `key`; a probe in flight finishes but is not reported."""
        self._targets.pop(key, None)

    def take_round(self) -> RoundStats:
        stats, self.round = self.round, RoundStats()
        return stats

    # ------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        stopper = asyncio.get_running_loop().create_task(self._wake_on(stop))
        try:
            while (target := await self._next_due(stop)) is not None:
                await self._slots.acquire()
                if stop.is_set() or self._targets.get(target.key) is not target:
                    self._slots.release()  # stopped, or removed while we waited for a slot
                    continue
                target.in_flight = True
                task = asyncio.get_running_loop().create_task(self._probe(target))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            stopper.cancel()
            await self._drain()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _next_due(self, stop: asyncio.Event) -> Target | None:
        while not stop.is_set():
            delay = None
            while self._heap:
                due, _, target = self._heap[0]
                if self._targets.get(target.key) is not target or target.due != due or target.in_flight:
                    heapq.heappop(self._heap)  # stale entry
                    continue
                delay = due - self._clock()
                if delay <= self.schedule.batch_s:  # due, or close enough to join this batch
                    heapq.heappop(self._heap)
                    return target
                break
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
        return None

    async def _probe(self, target: Target) -> None:
        due = target.due
        try:
            result = await self._check(target.key)
        except Exception:  # a bug in a probe must not end this engine's schedule, nor blame the engine
            log.exception("probe of %s failed unexpectedly; trying again in one interval", target.key)
            result = _RETRY
        finally:
            self._slots.release()
            target.in_flight = False
        if self._targets.get(target.key) is not target:
            return  # removed while the probe ran
        if result is None:
            del self._targets[target.key]  # the engine left the view before we reached it
        elif result is _RETRY:
            self._push(target, self._clock() + self.schedule.interval_s)
        else:
            self.round.count(result)
            target.streak = after_probe(target.streak, result.ok, self.schedule)
            self._push(target, next_due(due, self._clock(), result.ok, target.streak, self.schedule, self._rng()))
            await self._report(target.key, result)

    def _push(self, target: Target, due: float) -> None:
        target.due = due
        entry = (due, next(self._seq), target)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()  # earlier than what the loop sleeps for

    async def _drain(self) -> None:
        """Let probes in flight finish (bounded), then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
