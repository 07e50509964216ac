"""The prober's body: follow `ace_engines`, probe this replica's share, report `engine.health`.

Wiring: a KvView of `ace_engines` says which engines exist (and their
address, read at probe time); `Membership` says which prober replicas are
alive; rendezvous hashing (`shared.policy.partition`) says which engines are
ours; the `ProbeScheduler` says when each is due. An engine whose owner is
silent (killed moments ago, still within its heartbeat's TTL) is probed once
by the next replica in its rendezvous order (`shared.policy.partition.overdue`), so a new engine is probed
within seconds whatever the membership says. Observations go to
JetStream with a `Nats-Msg-Id`; each probe task awaits its own ack after
releasing its probe slot, so a slow ack never holds up other probes.
The state-keeper decides healthy/unhealthy and logs the transitions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time

import httpx
import nats.errors
from nats.js.errors import APIError

from services.prober import metrics
from services.prober.scheduler import ProbeScheduler
from shared import names
from shared.bus import Bus
from shared.config import Config
from shared.engine_client import ProbeResult, new_client, probe
from shared.errors import describe
from shared.kv import KvView
from shared.membership import Membership, new_member_id
from shared.policy.freshness import health_max_age_of
from shared.policy.partition import Arrival, ProbeSchedule, first_due, overdue, owner, rescue_position, streak_of
from shared.schemas import EngineHealth, EngineRecord, decode_engine, encode, utcnow

log = logging.getLogger("prober")

GROUP = "prober"
RESCUE_EVERY_S = 1.0


def schedule_from(config: Config) -> ProbeSchedule:
    return ProbeSchedule(
        interval_s=config.health_check_interval_s,
        recheck_s=config.health_recheck_s,
        fall=config.health_fail_threshold,
        rise=config.health_rise_threshold,
    )


class Prober:
    def __init__(
        self, config: Config, bus: Bus, view: KvView[EngineRecord], membership: Membership, client: httpx.AsyncClient
    ) -> None:
        self.config = config
        self.bus = bus
        self.view = view
        self.membership = membership
        self.client = client
        self.schedule = schedule_from(config)
        self.scheduler = ProbeScheduler(
            self.schedule,
            self.check,
            self.report,
            config.probe_concurrency,
            drain_s=config.health_check_timeout_s + 1,
        )
        self._owners: dict[str, str | None] = {}  # every known engine → the member that probes it
        # Every known engine → since when (monotonic) and how (start-up or later) its current owner has it.
        self._known: dict[str, tuple[float, Arrival]] = {}
        self._rescues: dict[str, asyncio.Task[None]] = {}  # one-off probes of engines whose owner is silent
        # When each engine was last rescued: at most once an interval, so reports that do not land
        # (NATS overloaded) never turn rescues into back-to-back probing that overloads it further.
        self._rescued_at: dict[str, float] = {}
        self._rescue_slots = asyncio.Semaphore(config.probe_concurrency)
        self.health_max_age_s = health_max_age_of(config)
        self._publish_errors = 0

    @property
    def me(self) -> str:
        return self.membership.me

    # ------------------------------------------------------------ who probes what

    def bootstrap(self) -> None:
        """Take this replica's share of the engines known now, then follow changes."""
        self.rebalance(self.membership.members, "startup")
        self.view.listeners.append(self.on_engine)
        self.membership.listeners.append(self.on_members)

    def on_engine(self, key: str, record: EngineRecord | None) -> None:
        """A record changed: only arrivals and removals matter (addresses are read at probe time)."""
        if record is None:
            self._owners.pop(key, None)
            self._known.pop(key, None)
            self._rescued_at.pop(key, None)
            self.scheduler.remove(key)
        else:
            self._known.setdefault(key, (time.monotonic(), "registered"))
            if key not in self._owners:  # hashed once; `rebalance` redoes all on membership changes
                self._owners[key] = owner(key, self.membership.members)
            if self._owners[key] != self.me or key in self.scheduler:
                return
            self._take(key, record, "registered")
        metrics.ENGINES_OWNED.set(len(self.scheduler))

    def on_members(self, members: tuple[str, ...]) -> None:
        before = len(self.scheduler)
        self.rebalance(members, "adopted")
        log.info(
            "%d prober replica(s) now; this one (%s) probes %d of %d engines (was %d)",
            len(members),
            self.me,
            len(self.scheduler),
            len(self._owners),
            before,
        )

    def rebalance(self, members: tuple[str, ...], arrival: Arrival) -> None:
        """Recompute every engine's owner; take what became ours, drop what did not."""
        owners: dict[str, str | None] = {}
        now = time.monotonic()
        for key, item in self.view.items().items():
            owners[key] = who = owner(key, members)
            if key not in self._known or self._owners.get(key, who) != who:
                self._known[key] = (now, arrival)  # a new owner gets its catch-up time before any rescue
            if who == self.me and key not in self.scheduler:
                self._take(key, item.value, arrival)
            elif who != self.me and key in self.scheduler:
                self.scheduler.remove(key)
        self._owners = owners
        metrics.MEMBERS.set(len(members))
        metrics.ENGINES_OWNED.set(len(self.scheduler))

    def _take(self, key: str, record: EngineRecord, arrival: Arrival) -> None:
        checked = record.last_health_check
        age = (utcnow() - checked).total_seconds() if checked is not None else None
        due = first_due(time.monotonic(), age, arrival, self.schedule, random.random())
        self.scheduler.add(key, streak_of(record), due)

    # ------------------------------------------------------------ rescue

    def rescue(self) -> list[str]:
        """Start a one-off probe of every overdue engine this replica is the rescuer of; the keys started."""
        now, wall = time.monotonic(), utcnow()
        members = self.membership.members
        started = []
        for key, item in self.view.items().items():
            if key in self.scheduler or key in self._rescues:
                continue
            if now - self._rescued_at.get(key, -math.inf) < self.schedule.interval_s:
                continue
            checked = item.value.last_health_check
            age = None if checked is None else (wall - checked).total_seconds()
            if age is not None and age < self.health_max_age_s:
                continue  # the cheap test first: most engines are fresh
            since, arrival = self._known.setdefault(key, (now, "registered"))
            position = rescue_position(key, members, self.me)
            timeout = self.config.health_check_timeout_s
            if not overdue(age, now - since, arrival, position, self.schedule, timeout, self.health_max_age_s):
                continue
            primary = owner(key, members)
            log.info(
                "probing %s for %s, which has not (%s)",
                item.value.container_name,
                primary,
                "never probed" if age is None else f"last probe {age:.0f}s ago",
            )
            task = asyncio.get_running_loop().create_task(self._rescue_probe(key))
            self._rescues[key] = task
            self._rescued_at[key] = now
            task.add_done_callback(functools.partial(self._forget_rescue, key))
            started.append(key)
        metrics.RESCUES.inc(len(started))
        return started

    def _forget_rescue(self, key: str, _task: asyncio.Task[None]) -> None:
        self._rescues.pop(key, None)

    async def _rescue_probe(self, key: str) -> None:
        async with self._rescue_slots:
            try:
                result = await self.check(key)
            except Exception:  # a bug in a probe must not end the rescue loop
                log.exception("rescue probe of %s failed unexpectedly", key)
                return
        if result is not None and key not in self.scheduler:  # became ours meanwhile: the schedule reports
            await self.report(key, result)

    async def rescue_loop(self, stop: asyncio.Event) -> None:
        try:
            while not await _wait(stop, RESCUE_EVERY_S):
                self.rescue()
        finally:
            tasks = list(self._rescues.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ probe and report

    async def check(self, key: str) -> ProbeResult | None:
        item = self.view.get(key)
        if item is None:
            return None
        engine = item.value
        result = await probe(self.client, engine.host, engine.port, self.config.health_check_timeout_s)
        metrics.PROBES.labels(result="ok" if result.ok else result.error or "unknown").inc()
        metrics.PROBE_LATENCY.observe(result.latency_ms / 1000)
        if not result.ok:
            log.debug(
                "probe of %s (%s:%d) failed: %s after %.0f ms",
                engine.container_name,
                engine.host,
                engine.port,
                result.error,
                result.latency_ms,
            )
        return result

    async def report(self, key: str, result: ProbeResult) -> None:
        checked_at = utcnow()
        event = EngineHealth(
            container_id=key,
            ok=result.ok,
            checked_at=checked_at,
            latency_ms=result.latency_ms,
            error=result.error,
            version=result.version,
        )
        try:
            await self.bus.js.publish(
                names.ENGINE_HEALTH,
                encode(event),
                headers={"Nats-Msg-Id": f"health-{key}-{checked_at.isoformat()}"},
                timeout=min(self.schedule.interval_s, 5.0),
            )
        except (TimeoutError, nats.errors.Error, APIError, OSError) as exc:
            # The next probe reports again; say so once per outage, not once per engine.
            metrics.PUBLISH_FAILURES.inc()
            self._publish_errors += 1
            if self._publish_errors == 1:
                log.warning("cannot publish %s (%s); the next probes report again", names.ENGINE_HEALTH, describe(exc))
        else:
            if self._publish_errors:
                log.info(
                    "publishing %s again (%d observations unconfirmed meanwhile)",
                    names.ENGINE_HEALTH,
                    self._publish_errors,
                )
                self._publish_errors = 0

    # ------------------------------------------------------------ rounds

    async def log_rounds(self, stop: asyncio.Event) -> None:
        """One DEBUG summary per interval: what this replica probed and how it went."""
        while not await _wait(stop, self.schedule.interval_s):
            stats = self.scheduler.take_round()
            failed = stats.probes - stats.ok
            log.debug(
                "probe round: %d probes, %d ok, %d failed%s; slowest %.0f ms; %d of %d engines owned, %d replica(s)",
                stats.probes,
                stats.ok,
                failed,
                f" {stats.errors}" if failed else "",
                stats.slowest_ms,
                len(self.scheduler),
                len(self._owners),
                len(self.membership.members),
            )


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True


async def serve(config: Config, bus: Bus, stop: asyncio.Event) -> None:
    membership = Membership(bus, GROUP, new_member_id(), config.health_check_interval_s)
    view: KvView[EngineRecord] = KvView(bus.engines, decode_engine, bus)
    async with new_client(config.probe_concurrency) as client:
        prober = Prober(config, bus, view, membership, client)
        await view.start()
        await membership.start()
        prober.bootstrap()
        log.info("Health monitor started with %gs interval", config.health_check_interval_s)
        log.info(
            "prober %s: %d replica(s), probing %d of %d engines, at most %d at once, timeout %gs",
            membership.me,
            len(membership.members),
            len(prober.scheduler),
            len(view.items()),
            config.probe_concurrency,
            config.health_check_timeout_s,
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(prober.scheduler.run(stop))
                group.create_task(membership.run(stop))
                group.create_task(prober.log_rounds(stop))
                group.create_task(prober.rescue_loop(stop))
        finally:
            await membership.stop()
            await view.stop()
