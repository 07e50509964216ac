"""The reaper's body: once per interval across replicas, remove idle engines above the floors and
replace one engine that has been unhealthy too long.

Every decision is `shared.policy.pool` on the current records. Engines this
sweep already took count as gone even before the state-keeper deletes their
records, and each victim is claimed (`purpose=reap`, out of selection) and
re-checked against fresh records before it is stopped, so streams that start
meanwhile and other reapers working at once never take the pool below the
floors or an engine from under a stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from prometheus_client import Counter

from shared import names
from shared.bus import Bus
from shared.config import Config
from shared.keeper_client import KeeperClient, KeeperError
from shared.kv import KvView
from shared.lease import claim_epoch, sleep_to_next_epoch
from shared.policy.claims import claim_covers_removal
from shared.policy.engines import is_idle
from shared.policy.hosts import key_token
from shared.policy.pool import (
    PoolPolicy,
    above_floors_without,
    idle_for_s,
    is_outage,
    managed,
    next_to_reap,
    next_to_replace,
    unhealthy_for_s,
)
from shared.runtime import Runtime, RuntimeFailure, make_runtime
from shared.schemas import EngineDemand, EngineRecord, EngineRemoved, decode_engine, encode, utcnow

log = logging.getLogger("reaper")

REAPED = Counter("aceorch_reaper_engines_reaped_total", "Idle engines removed")
REPLACED = Counter("aceorch_reaper_engines_replaced_total", "Unhealthy engines replaced")
REMOVE_FAILURES = Counter("aceorch_reaper_remove_failures_total", "Removals that failed in the runtime")
OUTAGES = Counter("aceorch_reaper_outage_sweeps_total", "Sweeps that found more than half the pool unhealthy")

REMOVE_CONCURRENCY = 4  # docker stop can take seconds: remove claimed engines in parallel
SUCCESSOR_POLL_S = 0.2


@dataclass
class Sweep:
    """What one sweep has done so far."""

    removed: set[str] = field(default_factory=set)  # claimed for removal or removed: count as gone
    skipped: set[str] = field(default_factory=set)  # busy or not ours: not candidates, still counted


class Reaper:
    def __init__(self, config: Config, bus: Bus, runtime: Runtime) -> None:
        self.config = config
        self.bus = bus
        self.runtime = runtime
        self.policy = PoolPolicy.from_config(config)
        self.holder = f"reaper-{socket.gethostname()}-{os.getpid()}"
        self.keeper = KeeperClient(bus.nc, bus.js)
        self.view: KvView[EngineRecord] = KvView(bus.engines, decode_engine, bus)
        self.interval_s = config.autoscale_interval_s
        # Per host: each host's agent acts on its own engines only, so each must get its sweeps.
        self.sweep_job = f"reaper-sweep.{key_token(config.host_id)}"
        self._removals = asyncio.Semaphore(REMOVE_CONCURRENCY)
        self.counts = {"reaped": 0, "replaced": 0, "failed": 0}

    async def run(self, stop: asyncio.Event) -> None:
        await self.view.start()
        self.runtime.owns({})  # docker: starts learning the daemon's id now, without blocking, for is_ours
        log.info(
            "started with %gs interval: auto delete %s after %gs idle, floors %d engines / %d free, "
            "unhealthy engines replaced after %gs (%s runtime, holder %s)",
            self.interval_s,
            "on" if self.config.auto_delete else "off",
            self.policy.grace_period_s,
            self.policy.min_replicas,
            self.policy.min_free_replicas,
            self.policy.unhealthy_replace_after_s,
            self.runtime.kind,
            self.holder,
        )
        try:
            while await sleep_to_next_epoch(self.interval_s, stop):
                if await self._won_epoch():
                    await self.sweep(stop)
        finally:
            await self.view.stop()
            log.info("stopping: reaped %(reaped)d, replaced %(replaced)d, failed removals %(failed)d", self.counts)

    async def _won_epoch(self) -> bool:
        try:
            return await claim_epoch(self.bus.leases, self.sweep_job, self.interval_s, self.holder)
        except Exception as exc:  # NATS down: the next interval tries again
            log.warning("sweep skipped: %s", exc)
            return False

    async def sweep(self, stop: asyncio.Event) -> None:
        sweep = Sweep()
        try:
            if self.config.auto_delete:
                await self.reap_idle(sweep, stop)
            await self.replace_unhealthy(sweep, stop)
        except KeeperError as exc:  # the state-keeper did not answer: the next interval tries again
            log.warning("sweep stopped: %s", exc)

    def is_ours(self, record: EngineRecord) -> bool:
        """Only engines of this runtime on this host; external ones are never removed."""
        return (
            record.runtime == self.runtime.kind
            and record.host_id in (None, self.config.host_id)  # None: recorded before hosts were (one host)
            and self.runtime.owns(record.labels)
        )

    def current(self, sweep: Sweep) -> list[EngineRecord]:
        """The records as they are now, minus what this sweep already took."""
        return [r for r in self.view.values() if r.container_id not in sweep.removed]

    # ------------------------------------------------------------ idle engines

    async def reap_idle(self, sweep: Sweep, stop: asyncio.Event) -> None:
        """Claim one victim at a time, recounting after each; remove the claimed ones in parallel."""
        async with asyncio.TaskGroup() as removals:  # leaving it waits for the removals under way
            while not stop.is_set():
                records = self.current(sweep)
                skip = sweep.skipped | {r.container_id for r in records if not self.is_ours(r)}
                victim = next_to_reap(records, utcnow(), self.policy, skip=skip)
                if victim is None:
                    return
                try:
                    claim_id = await self._claim_idle(victim, sweep)
                except KeeperError as exc:
                    log.warning("sweep stopped: %s", exc)
                    return
                if claim_id is not None:
                    removals.create_task(self._remove(victim, claim_id, "idle"))

    async def _claim_idle(self, victim: EngineRecord, sweep: Sweep) -> str | None:
        claim_id = await self._claim(victim, sweep)
        if claim_id is None:
            return None
        try:
            ok = await self._still_reapable(victim, sweep)
        except BaseException:
            await self._release(victim, claim_id)
            raise
        if not ok:
            sweep.skipped.add(victim.container_id)
            await self._release(victim, claim_id)
            return None
        sweep.removed.add(victim.container_id)
        return claim_id

    async def _still_reapable(self, victim: EngineRecord, sweep: Sweep) -> bool:
        """With our claim in place, re-check on fresh records: still idle, floors still kept."""
        current = await self.keeper.get(victim.container_id)
        now = utcnow()
        if current is None or not is_idle(current, now):
            log.info("not reaping %s: it is in use again", victim.container_name)
            return False
        fresh = [r for r in await self.keeper.engines() if r.container_id not in sweep.removed]
        if not above_floors_without(fresh, current, now, self.policy):
            log.debug("not reaping %s: the pool is at its floors", victim.container_name)
            return False
        return True

    # ------------------------------------------------------------ unhealthy engines

    async def replace_unhealthy(self, sweep: Sweep, stop: asyncio.Event) -> None:
        """At most one per sweep: a successor first (unless the pool can spare it), then the removal."""
        records = self.current(sweep)
        now = utcnow()
        if is_outage(records):
            pool = managed(records)
            unhealthy = sum(r.health_status == "unhealthy" for r in pool)
            OUTAGES.inc()
            log.error(
                "%d of %d engines unhealthy — not replacing any (shared cause? network outage?)", unhealthy, len(pool)
            )
            return
        victim = next_to_replace(records, now, self.policy)
        if victim is None or not self.is_ours(victim):
            return
        log.warning(
            "engine %s unhealthy for %.0fs (%s): replacing it",
            victim.container_name,
            unhealthy_for_s(victim, now),
            victim.last_error or "no error recorded",
        )
        if not await self._successor_ready(victim, sweep, stop):
            return
        claim_id = await self._claim(victim, sweep)
        if claim_id is None:
            return
        sweep.removed.add(victim.container_id)
        if await self._remove(victim, claim_id, "unhealthy"):
            self.counts["replaced"] += 1
            REPLACED.inc()

    async def _successor_ready(self, victim: EngineRecord, sweep: Sweep, stop: asyncio.Event) -> bool:
        """True once the pool can lose `victim`: it keeps its floors without it, or a new engine is up."""
        before = {r.container_id for r in self.view.values()}

        def ready() -> bool:
            records = self.current(sweep)
            fresh = [r for r in managed(records) if r.container_id not in before and r.health_status == "healthy"]
            return bool(fresh) or above_floors_without(records, victim, utcnow(), self.policy)

        if ready():
            return True
        await self.bus.nc.publish(names.ENGINE_DEMAND, encode(EngineDemand(content_key=None)))
        bound_s = self.config.engine_start_timeout_s + 2 * self.interval_s
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline and not stop.is_set():
            await asyncio.sleep(SUCCESSOR_POLL_S)
            latest = self.view.get(victim.container_id)
            if latest is None or latest.value.health_status != "unhealthy":
                log.info("engine %s recovered or went away while waiting for its successor", victim.container_name)
                return False
            if ready():
                return True
        log.warning("no successor for %s came up within %.0fs; keeping it for now", victim.container_name, bound_s)
        return False

    # ------------------------------------------------------------ claim, remove, report

    async def _claim(self, victim: EngineRecord, sweep: Sweep) -> str | None:
        try:
            return await self.keeper.claim(victim.container_id, "reap", self.holder)
        except KeeperError as exc:
            if exc.code not in (404, 409):
                raise
            log.debug("skipping %s: %s", victim.container_name, exc)
            sweep.skipped.add(victim.container_id)
            return None

    async def _release(self, victim: EngineRecord, claim_id: str) -> None:
        try:
            await self.keeper.release(victim.container_id, claim_id)
        except KeeperError as exc:  # the claim lapses by itself after CLAIM_TTL_S
            log.warning(
                "release of %s failed (claim lapses in %gs): %s", victim.container_name, self.config.claim_ttl_s, exc
            )

    async def _claim_still_ours(self, victim: EngineRecord, claim_id: str) -> bool:
        """Last look before stopping: a stream that started meanwhile cancels our claim (state-keeper),
        and a claim that lapsed (a slow runtime) let selections reserve the engine again."""
        try:
            current = await self.keeper.get(victim.container_id)
        except KeeperError as exc:
            log.warning("not removing %s: cannot re-check it (%s)", victim.container_name, exc)
            return False
        reason = claim_covers_removal(current, claim_id, utcnow())
        if reason is not None:
            log.info("not removing %s: %s", victim.container_name, reason)
            return False
        return True

    async def _remove(self, victim: EngineRecord, claim_id: str, reason: str) -> bool:
        """Stop and remove the claimed engine, then report it; on failure give the engine back. Never raises."""
        async with self._removals:
            try:
                spec = await self.runtime.get(victim.container_id)  # may be slow: the claim is checked after it
                if not await self._claim_still_ours(victim, claim_id):
                    await self._release(victim, claim_id)
                    return False
                if spec is not None:  # already gone from the runtime: only the record is left
                    await self.runtime.remove(spec)
            except Exception as exc:
                self.counts["failed"] += 1
                REMOVE_FAILURES.inc()
                if isinstance(exc, RuntimeFailure):
                    log.warning("could not remove %s: %s", victim.container_name, exc)
                else:
                    log.exception("could not remove %s", victim.container_name)
                await self._release(victim, claim_id)
                return False
        event = EngineRemoved(container_id=victim.container_id, reason=reason)
        if not await self.keeper.report(
            names.ENGINE_REMOVED, event, msg_id=f"removed.{victim.container_id}.{claim_id}"
        ):
            log.error("engine %s was removed but engine.removed could not be published", victim.container_name)
        if reason == "idle":
            self.counts["reaped"] += 1
            REAPED.inc()
            log.info("removed idle engine %s (idle %.0fs)", victim.container_name, idle_for_s(victim, utcnow()))
        else:
            log.info("removed %s engine %s", reason, victim.container_name)
        return True


async def serve(config: Config, bus: Bus, stop: asyncio.Event) -> None:
    if config.engine_runtime == "external":
        log.info("ENGINE_RUNTIME=external, nothing to remove (external engines are never removed)")
        await stop.wait()
        return
    runtime = make_runtime(config)
    try:
        await Reaper(config, bus, runtime).run(stop)
    finally:
        await runtime.close()
