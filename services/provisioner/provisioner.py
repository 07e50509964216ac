"""The provisioner's body: keep the pool between its floors and MAX_REPLICAS (DESIGN §5 Pool).

- At start-up it adopts every live engine of its runtime (publishes
  `engine.registered`, never destroys one) and reports records whose engine
  is gone (`engine.removed reason=gone`).
- It scales up at once on `engine.demand` and on its sweep (once per
  `AUTOSCALE_INTERVAL_S` across replicas), by `engines_to_start` — the pure
  sizing the reaper shares — starting engines in parallel
  (`PROVISION_CONCURRENCY`). A new engine is registered only once it answers
  `get_status`; one that does not within `ENGINE_START_TIMEOUT_S` is removed,
  counted, and further starts back off exponentially.
- An engine that dies is reported `engine.removed reason=died`; the next
  scaling round replaces it.

Why a lock and not a reservation counter: two replicas must never create
more than MAX_REPLICAS, and each counts engines as records + engines still
starting. A replica cannot see another's starts in the KV records (an engine
is registered only once it answers), but it can see them in the runtime: a
created engine is listed there at once. So "count + create" runs under a
short KV lease (`provisioner.lock` in ace_leases, TTL LOCK_TTL_S), and the
count takes every live engine of the runtime without a record as starting.
The next holder therefore sees everything the previous one created. A
reservation counter would have to be decremented on every failed start,
death and reap, by every service, and drifts for good when a replica
crashes between increment and create; the lock holds no state that can
drift — a crashed holder's lease simply expires.

Many hosts (issue 15): the lock stays fleet-wide and the decision too —
`plan_starts` sizes the pool from all records and every host's starts, then
places the engines over the hosts whose provisioner is alive (membership
group `provisioner`), at most HOST_MAX_ENGINES each. The holder starts only
the engines placed on its own host (HOST_ID); the others start theirs when
they hold the lock (every demand and sweep reaches each host's provisioner)
and reach the same plan. Another host's starts are not in this runtime, so a
holder writes its own to ace_leases before releasing the lock
(services/provisioner/starts.py) and counts the others' from there. The sweep
(adopting, forgetting gone engines) is per host: each runs its own runtime.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any

import httpx
import msgspec
import nats.errors
from nats.aio.msg import Msg

from services.provisioner import metrics
from services.provisioner.endpoint import BUSY_RETRY_S, Elsewhere, ProvisionEndpoint, Refused
from services.provisioner.lock import KvLock
from services.provisioner.starts import RENEW_S, StartsBoard
from shared import names
from shared.bus import Bus
from shared.config import Config
from shared.engine_client import new_client, probe
from shared.errors import describe
from shared.kv import KvView, wait_for_value
from shared.lease import claim_epoch, sleep_to_next_epoch
from shared.membership import Membership, new_member_id
from shared.policy.engines import effective_state
from shared.policy.hosts import key_token, place
from shared.policy.pool import PoolPolicy, managed, plan_starts, start_backoff_s
from shared.policy.provisioning import HEALTHY_WAIT_S, max_replicas_eta_s
from shared.runtime import EngineSpec, Runtime, RuntimeFailure, make_runtime, placeholder
from shared.schemas import (
    EngineDemand,
    EngineRecord,
    EngineRegistered,
    EngineRemoved,
    decode_engine,
    decoder,
    encode,
    utcnow,
)

log = logging.getLogger("provisioner")

LOCK_KEY = "provisioner.lock"
LOCK_TTL_S = 30.0
LOCK_WAIT_S = 30.0
CREATE_BUDGET_S = 20.0  # creating must end well inside the lock's TTL
READY_POLL_S = 0.25
PUBLISH_ATTEMPTS = 3
ADOPT_RETRY_S = 5.0
EVENTS_RETRY_S = 1.0
RECENT_S = 30.0  # longer than a registration or a removal takes to show in the records

decode_demand = decoder(EngineDemand)


class Provisioner:
    def __init__(
        self,
        config: Config,
        bus: Bus,
        runtime: Runtime,
        engines: KvView[EngineRecord],
        http: httpx.AsyncClient,
        members: Membership | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.runtime = runtime
        self.engines = engines
        self.http = http
        self.policy = PoolPolicy.from_config(config)
        self.holder = f"{socket.gethostname()}-{os.getpid()}"
        self.lock = KvLock(bus.leases, LOCK_KEY, self.holder, LOCK_TTL_S)
        self.host_id = config.host_id
        self.members = members  # the live provisioners, so the hosts engines may be placed on
        self.starts = StartsBoard(bus, config.host_id, self.holder, config.max_clock_skew_s)
        self.announced: dict[str, float] = {}  # our starts registered lately → when (monotonic): still listed
        self.starts_written = asyncio.Lock()
        self.starting: dict[str, asyncio.Event] = {}  # our starts not registered yet → set when it died
        self.tasks: set[asyncio.Task[bool]] = set()  # readiness waits, one per start
        # Creates that outlived CREATE_BUDGET_S: the runtime may still make each engine (a docker call
        # runs on in its thread), so each counts as starting until it ends, or MAX_REPLICAS could be passed.
        self.late_creates: set[asyncio.Task[tuple[EngineSpec, float]]] = set()
        self.registered: dict[str, float] = {}  # container_id → when we last registered it (monotonic)
        self.removed: dict[str, float] = {}  # container_id → when we last reported it removed (monotonic)
        self.wake = asyncio.Event()
        self.demand = False
        self.failures = 0  # consecutive failed starts
        self.not_before = 0.0  # monotonic time before which no start is attempted (backoff)
        self.counts = {"started": 0, "failed": 0, "adopted": 0, "died": 0, "gone": 0}

    # ------------------------------------------------------------ start-up

    async def adopt(self, stop: asyncio.Event) -> bool:
        """Register every live engine of the runtime; report records whose engine is gone.

        Retries until the runtime answers (dockerd may start after us); False if stopped first.
        """
        while not stop.is_set():
            try:
                records = self.engines.values()
                # What died while no provisioner watched is cleaned up here, and reported below.
                exited = await self.runtime.remove_exited()
                live = await self.runtime.list_managed()
                break
            except RuntimeFailure as exc:
                log.error("cannot list engines: %s; retrying in %.0fs", exc, ADOPT_RETRY_S)
                if await _stopped_within(stop, ADOPT_RETRY_S):
                    return False
        else:
            return False
        known = {r.container_id for r in records}
        adopted = [spec for spec in live if spec.container_id in known]
        for spec in adopted:  # refresh the address: a restarted engine may have moved
            await self.publish_registered(spec)
        adopted += await self.adopt_unrecorded(records, live)
        self._count("adopted", len(adopted))
        listed = ", ".join(f"{s.container_name}:{s.port}" for s in sorted(adopted, key=lambda s: s.port))
        log.info("adopted %d engines%s", len(adopted), f" ({listed})" if adopted else "")
        await self.forget_gone(records, live, exited)
        return True

    # ------------------------------------------------------------ loops

    async def run(self, stop: asyncio.Event) -> None:
        subscription = await self.bus.nc.subscribe(names.ENGINE_DEMAND, cb=self.on_demand)
        log.info(
            "pool %d..%d engines (%d free), sweep every %gs, %s runtime, holder %s",
            self.policy.min_replicas,
            self.policy.max_replicas,
            self.policy.min_free_replicas,
            self.config.autoscale_interval_s,
            self.runtime.kind,
            self.holder,
        )
        self.request_scale()  # reach the floors now, not at the first sweep
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.scaler(stop))
                group.create_task(self.sweeper(stop))
                group.create_task(self.renew_starts(stop))
                watcher = group.create_task(self.watch_runtime())
                await stop.wait()
                self.wake.set()  # lets the scaler see `stop`
                watcher.cancel()
        finally:
            await subscription.unsubscribe()
            for task in self.tasks | self.late_creates:
                task.cancel()  # those engines keep starting; the next provisioner adopts them
            await asyncio.gather(*self.tasks, *self.late_creates, return_exceptions=True)

    async def on_demand(self, msg: Msg) -> None:
        try:
            demand = decode_demand(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("ignoring malformed engine.demand: %s", exc)
            return
        log.debug("demand for %s", demand.content_key or "any engine")
        self.request_scale(demand=True)

    def request_scale(self, demand: bool = False) -> None:
        self.demand = self.demand or demand
        self.wake.set()

    async def scaler(self, stop: asyncio.Event) -> None:
        """One scaling round at a time; requests arriving meanwhile fold into the next round."""
        while True:
            await self.wake.wait()
            if stop.is_set():
                return
            self.wake.clear()
            demand, self.demand = self.demand, False
            if await _stopped_within(stop, self.not_before - time.monotonic()):
                return
            try:
                await self.scale(demand)
            except Exception as exc:  # NATS or runtime trouble: the next request or sweep tries again
                log.warning("scaling failed: %s", describe(exc))

    async def sweeper(self, stop: asyncio.Event) -> None:
        interval = self.config.autoscale_interval_s
        while await sleep_to_next_epoch(interval, stop):
            try:
                # Per host: each sweeps its own runtime, and every host's scaling round must follow.
                if not await claim_epoch(
                    self.bus.leases, f"provisioner.{key_token(self.host_id)}", interval, self.holder
                ):
                    continue
                await self.reconcile()
            except Exception as exc:  # the next interval tries again
                log.warning("sweep failed: %s", describe(exc))
            self.request_scale()

    async def watch_runtime(self) -> None:
        while True:
            try:
                async for event in self.runtime.events():
                    await self.on_died(event.container_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("runtime events failed (%s); watching again", describe(exc))
            await asyncio.sleep(EVENTS_RETRY_S)

    # ------------------------------------------------------------ scaling

    async def scale(self, demand: bool) -> None:
        async with self.lock.hold(LOCK_WAIT_S) as held:
            if not held:
                log.warning("%s held by another replica for %.0fs; trying again later", LOCK_KEY, LOCK_WAIT_S)
                return
            records = self.engines.values()
            live = await self.runtime.list_managed()
            pool, unregistered = self.census(records, live)
            elsewhere, failing = await self.starts.elsewhere({r.container_id for r in records})
            starting = {**elsewhere, self.host_id: unregistered}
            hosts = self.live_hosts() - failing  # (never ours: this round waited out our own backoff)
            plan = plan_starts(pool, utcnow(), self.policy, hosts, starting, self.config.host_max_engines, demand)
            count = plan.count(self.host_id)
            if count < len(plan):
                log.info(
                    "%d engine(s) placed on other hosts: %s",
                    len(plan) - count,
                    ", ".join(sorted(set(plan) - {self.host_id})),
                )
            if count == 0:
                return
            log.info(
                "starting %d engine(s) for %s (%d managed, %d starting, max %d)",
                count,
                "demand" if demand else "the pool floors",
                len(managed(pool)),
                sum(starting.values()),
                self.policy.max_replicas,
            )
            try:
                created = await self.create(count)
            finally:
                await self.announce_starts()  # before the lock goes: its next holder counts them
        for spec, started in created:
            self.spawn(self.await_ready(spec, started))

    async def provision_one(self, here_only: bool = False) -> tuple[EngineSpec, bool]:
        """One engine now, on a proxy's request (`engine.provision`): (its spec, healthy yet).

        Started under the scaling lock like any other, so the ceiling holds across
        replicas; refused (`Refused`) at MAX_REPLICAS, during a start backoff, or when
        it does not start. Returns once the engine answered get_status, is registered
        and (within HEALTHY_WAIT_S) healthy in the records.

        Where it goes is decided fleet-wide, as for the sweep's starts (`hosts.place`): when
        that is another host, `Elsewhere` names it and the caller passes the request on
        there. `here_only`: the request was passed on to this host; start it here or refuse.
        """
        backoff = self.not_before - time.monotonic()
        if backoff > 0 and (here_only or self.live_hosts() == {self.host_id}):
            raise self.backing_off(backoff)
        async with self.lock.hold(min(LOCK_WAIT_S, self.config.engine_start_timeout_s)) as held:
            if not held:
                raise Refused("busy", f"{LOCK_KEY} stayed held by another scaling round; ask again", BUSY_RETRY_S)
            records = self.engines.values()
            pool, unregistered = self.census(records, await self.runtime.list_managed())
            elsewhere, failing = await self.starts.elsewhere({r.container_id for r in records})
            starting = {**elsewhere, self.host_id: unregistered}
            existing = len(managed(pool)) + sum(starting.values())
            if existing >= self.policy.max_replicas:
                eta = max_replicas_eta_s(
                    pool, utcnow(), self.policy, self.config.max_streams_per_engine, self.config.autoscale_interval_s
                )
                raise Refused(
                    "max_replicas_reached",
                    f"the pool holds {existing} engines ({sum(starting.values())} starting), "
                    f"MAX_REPLICAS is {self.policy.max_replicas}",
                    eta,
                )
            hosts = {self.host_id} if here_only else self.live_hosts() - failing
            backoff = self.not_before - time.monotonic()
            if backoff > 0:  # our own starts are failing: another host may still take it
                hosts -= {self.host_id}
            target = place(managed(pool), hosts, 1, self.config.host_max_engines, starting)
            if not target:
                if backoff > 0:
                    raise self.backing_off(backoff)
                full = f"this host ({self.host_id})" if here_only else f"every live host ({', '.join(sorted(hosts))})"
                raise Refused(
                    "max_replicas_reached",
                    f"{full} runs HOST_MAX_ENGINES ({self.config.host_max_engines}) engines, starts included",
                    max(self.config.autoscale_interval_s, 1.0),
                )
            if target[0] != self.host_id:
                raise Elsewhere(target[0])  # (leaving the lock: that host's provisioner takes it next)
            log.info(
                "starting 1 engine on request (%d managed, %d starting, max %d)",
                len(managed(pool)),
                unregistered,
                self.policy.max_replicas,
            )
            try:
                created = await self.create(1)
            finally:
                await self.announce_starts()
        if not created:
            raise Refused(
                "start_failed",
                "could not create an engine (the provisioner's log says why)",
                max(self.not_before - time.monotonic(), 1.0),
            )
        spec, started = created[0]
        if not await self.await_ready(spec, started):
            raise Refused(
                "start_failed",
                f"{spec.container_name} did not answer get_status within {self.config.engine_start_timeout_s:g}s",
                max(self.not_before - time.monotonic(), 1.0),
            )
        healthy = await wait_for_value(self.engines, spec.container_id, _is_healthy, HEALTHY_WAIT_S)
        return spec, healthy is not None

    def backing_off(self, backoff: float) -> Refused:
        return Refused(
            "backoff",
            f"{self.failures} engine start(s) failed in a row; the next may start in {backoff:.0f}s",
            backoff,
        )

    def census(self, records: Iterable[EngineRecord], live: list[EngineSpec]) -> tuple[list[EngineRecord], int]:
        """(records that stand for an engine, engines that exist without a record yet)."""
        live_ids = {spec.container_id for spec in live}
        records = [r for r in records if not self.is_gone(r, live_ids)]
        known = {r.container_id for r in records}
        return records, len((live_ids | set(self.starting)) - known) + len(self.late_creates)

    def is_gone(self, record: EngineRecord, live_ids: set[str]) -> bool:
        """A record of our runtime whose engine the runtime no longer runs."""
        return (
            record.runtime == self.runtime.kind
            and record.host_id in (None, self.host_id)
            and self.runtime.owns(record.labels)
            and record.container_id not in live_ids
            and record.container_id not in self.starting
        )

    def live_hosts(self) -> frozenset[str]:
        """Hosts whose provisioner is alive (this one's always): where engines may be placed."""
        hosts = self.members.host_ids() if self.members is not None else frozenset()
        return hosts | {self.host_id}

    async def publish_starts(self) -> None:
        """Our starts for the other hosts' holders: those under way, and those registered lately.

        One write at a time, each of the set as it is when written: an older snapshot landing
        after the one written under the lock would hide an engine just created.
        """
        async with self.starts_written:
            _lately(self.announced, "")  # forgets the ones registered more than RECENT_S ago
            backoff = self.not_before - time.monotonic()
            await self.starts.publish(
                set(self.starting) | set(self.announced),
                len(self.late_creates),
                time.time() + backoff if backoff > 0 else None,
            )

    async def announce_starts(self) -> None:
        """`publish_starts` under the scaling lock; if it cannot be written, the lock is kept until
        its TTL ends, so no holder on another host counts without the engines just created."""
        try:
            await self.publish_starts()
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            self.lock.keep()
            log.warning(
                "could not write our starts (%s); keeping %s until it expires (%.0fs)",
                describe(exc),
                LOCK_KEY,
                LOCK_TTL_S,
            )

    async def publish_starts_quietly(self) -> None:
        try:
            await self.publish_starts()
        except (TimeoutError, nats.errors.Error, OSError) as exc:  # renewed within RENEW_S; its TTL ends it
            log.warning("could not update our starts entry: %s", describe(exc))

    async def renew_starts(self, stop: asyncio.Event) -> None:
        """Keep our starts entry alive while it lists anything (and drop registrations RECENT_S old)."""
        while not await _stopped_within(stop, RENEW_S / 2):
            if self.starts.due():
                await self.publish_starts_quietly()

    async def create(self, count: int) -> list[tuple[EngineSpec, float]]:
        """Create `count` engines, at most PROVISION_CONCURRENCY at a time; failures are counted."""
        slots = asyncio.Semaphore(self.config.provision_concurrency)

        async def one() -> tuple[EngineSpec, float]:
            async with slots:
                started = time.monotonic()
                spec = await self.runtime.create()
                self.starting[spec.container_id] = asyncio.Event()
                metrics.STARTING.set(len(self.starting))
                return spec, started

        tasks = [asyncio.get_running_loop().create_task(one()) for _ in range(count)]
        done, late = await asyncio.wait(tasks, timeout=CREATE_BUDGET_S)
        if late:  # the lock's TTL is near: stop waiting, not creating (cancelling would not stop the runtime)
            log.warning(
                "%d engine creation(s) took over %.0fs; still counted as starting until they end",
                len(late),
                CREATE_BUDGET_S,
            )
        for task in late:
            self.late_creates.add(task)
            task.add_done_callback(self._late_create_done)
        created = []
        for task in done:
            if task.exception() is not None:
                self.start_failed(f"cannot create an engine: {task.exception()}")
            else:
                created.append(task.result())
        return created

    def _late_create_done(self, task: asyncio.Task[tuple[EngineSpec, float]]) -> None:
        self.late_creates.discard(task)
        self.spawn(self._publish_starts_task())
        if task.cancelled():
            return
        if task.exception() is not None:
            self.start_failed(f"cannot create an engine (late): {task.exception()}")
            return
        spec, started = task.result()
        log.info("%s created late (%.0fs); waiting for it to answer", spec.container_name, time.monotonic() - started)
        self.spawn(self.await_ready(spec, started))

    async def _publish_starts_task(self) -> bool:
        await self.publish_starts_quietly()
        return True

    def spawn(self, coroutine: Coroutine[Any, Any, bool]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def await_ready(self, spec: EngineSpec, started: float) -> bool:
        """Register the engine once it answers get_status (True); remove it if it dies or stays silent."""
        died = self.starting[spec.container_id]
        deadline = started + self.config.engine_start_timeout_s
        last_error = "no answer"
        try:
            while not died.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    await self.discard(
                        spec,
                        f"no answer to get_status within {self.config.engine_start_timeout_s:g}s (last: {last_error})",
                    )
                    return False
                timeout_s = min(self.config.health_check_timeout_s, remaining)
                result = await probe(self.http, spec.host, spec.port, timeout_s)
                if result.ok:
                    await self.publish_registered(spec)
                    self.announced[spec.container_id] = time.monotonic()
                    self.failures = 0
                    self._count("started")
                    log.info(
                        "started %s on port %d (%s, %.1fs)",
                        spec.container_name,
                        spec.port,
                        spec.runtime,
                        time.monotonic() - started,
                    )
                    return True
                last_error = result.error or "no answer"
                await _stopped_within(died, min(READY_POLL_S, max(remaining, 0)))
            await self.discard(spec, "exited before answering get_status")
        except (TimeoutError, RuntimeFailure, OSError, nats.errors.Error) as exc:
            log.warning(
                "%s started but could not be registered (%s); the sweep adopts it", spec.container_name, describe(exc)
            )
        finally:
            self.starting.pop(spec.container_id, None)
            metrics.STARTING.set(len(self.starting))
            task = asyncio.current_task()
            if task is None or not task.cancelling():  # stopping: the entry keeps them until its TTL
                await self.publish_starts_quietly()
        return False

    async def discard(self, spec: EngineSpec, reason: str) -> None:
        self.start_failed(f"{spec.container_name} on port {spec.port}: {reason}")
        try:
            await self.runtime.remove(spec)
        except RuntimeFailure as exc:
            log.warning("cannot remove failed engine %s: %s", spec.container_name, exc)
        if self.engines.get(spec.container_id) is not None:  # another replica's sweep adopted it meanwhile
            await self.publish_removed(spec.container_id, "failed_start")
        self.request_scale()  # try again once the backoff has passed

    def start_failed(self, reason: str) -> None:
        self.failures += 1
        backoff = start_backoff_s(self.failures)
        self.not_before = time.monotonic() + backoff
        self._count("failed")
        self.spawn(self._publish_starts_task())  # the other hosts place nothing here meanwhile
        log.warning(
            "start failed: %s; next start in %.0fs (%d consecutive failures)",
            reason,
            backoff,
            self.failures,
        )

    # ------------------------------------------------------------ reconciling

    async def reconcile(self) -> None:
        """Clean up engines that exited unseen, forget records without an engine, adopt orphans."""
        records = self.engines.values()  # before the runtime: a record implies its engine existed earlier
        exited = await self.runtime.remove_exited()
        live = await self.runtime.list_managed()
        await self.forget_gone(records, live, exited)
        for spec in await self.adopt_unrecorded(records, live):
            self._count("adopted")
            log.info("adopted %s on port %d (running without a record)", spec.container_name, spec.port)

    async def forget_gone(self, records: Iterable[EngineRecord], live: list[EngineSpec], exited: list[str]) -> None:
        """Report records whose engine no longer runs: `died` if it exited (and was just cleaned up),
        `gone` if the runtime has no trace of it (removed behind our back)."""
        live_ids = {spec.container_id for spec in live}
        for record in records:
            if not self.is_gone(record, live_ids) or _lately(self.removed, record.container_id):
                continue  # (reported moments ago: the records we read may just not show it yet)
            if record.container_id in exited:
                log.warning("engine %s died unwatched; reporting it removed", record.container_name)
                await self.publish_removed(record.container_id, "died")
            else:
                log.info(
                    "engine %s is gone from the %s runtime; removing its record",
                    record.container_name,
                    record.runtime,
                )
                await self.publish_removed(record.container_id, "gone")

    async def adopt_unrecorded(self, records: Iterable[EngineRecord], live: list[EngineSpec]) -> list[EngineSpec]:
        """Register engines that run without a record and are not ours to start: those that answer,
        and those silent for longer than any start takes (their starter crashed; the prober and
        the reaper deal with them). A young silent one is someone's start in progress: left alone."""
        known = {r.container_id for r in records}
        oldest_start = time.time() - 2 * self.config.engine_start_timeout_s
        adopted = []
        for spec in live:
            if (
                spec.container_id in known
                or spec.container_id in self.starting
                or _lately(self.registered, spec.container_id)
            ):
                continue
            old = spec.created_at is None or spec.created_at < oldest_start
            if not old and not (await probe(self.http, spec.host, spec.port, self.config.health_check_timeout_s)).ok:
                continue
            await self.publish_registered(spec)
            adopted.append(spec)
        return adopted

    async def on_died(self, container_id: str) -> None:
        died = self.starting.get(container_id)
        if died is not None:
            died.set()  # await_ready counts and removes it
            return
        found = self.engines.get(container_id)
        record = found.value if found else None
        if record is not None and effective_state(record, utcnow()) == "draining":
            return  # the reaper is removing it: not a death
        if record is not None:
            log.warning("engine %s died; reporting it removed", record.container_name)
            await self.publish_removed(container_id, "died")
        try:
            await self.runtime.remove(
                placeholder(container_id, self.runtime.kind, record.container_name if record else None)
            )
        except RuntimeFailure as exc:
            log.warning("cannot clean up dead engine %s: %s", container_id[:12], exc)
        self.request_scale()

    # ------------------------------------------------------------ events

    async def publish_registered(self, spec: EngineSpec) -> None:
        event = EngineRegistered(
            container_id=spec.container_id,
            host=spec.host,
            port=spec.port,
            container_name=spec.container_name,
            runtime=spec.runtime,
            labels=spec.labels,
            host_id=self.config.host_id,
        )
        await self._publish(names.ENGINE_REGISTERED, event, spec.container_id)
        self.registered[spec.container_id] = time.monotonic()
        self.removed.pop(spec.container_id, None)  # a local id (its port) is reused by a later engine

    async def publish_removed(self, container_id: str, reason: str) -> None:
        self.removed[container_id] = time.monotonic()
        await self._publish(names.ENGINE_REMOVED, EngineRemoved(container_id=container_id, reason=reason), container_id)
        self._count(reason)

    async def _publish(self, subject: str, event: object, container_id: str) -> None:
        """JetStream publish with a fixed Nats-Msg-Id, so a retry after a timeout is not applied twice."""
        headers = {"Nats-Msg-Id": f"{subject}.{container_id}.{uuid.uuid4().hex}"}
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self.bus.js.publish(subject, encode(event), headers=headers)
                return
            except Exception as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                log.warning(
                    "publishing %s for %s failed (%s); %d retries remaining",
                    subject,
                    container_id[:12],
                    describe(exc),
                    PUBLISH_ATTEMPTS - attempt,
                )
                await asyncio.sleep(0.5 * attempt)

    def _count(self, what: str, amount: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + amount
        if what == "started":
            metrics.STARTED.inc(amount)
        elif what == "failed":
            metrics.FAILED.inc(amount)
        elif what == "adopted":
            metrics.ADOPTED.inc(amount)
        else:
            metrics.REMOVED.labels(what).inc(amount)


def _is_healthy(record: EngineRecord) -> bool:
    return record.health_status == "healthy"


def _lately(memory: dict[str, float], container_id: str) -> bool:
    """Whether `memory` (container_id → monotonic time) holds it from the last RECENT_S; older entries go."""
    now = time.monotonic()
    for old in [c for c, at in memory.items() if now - at > RECENT_S]:
        del memory[old]
    return container_id in memory


async def _stopped_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `event`; True if it is set."""
    if timeout_s > 0 and not event.is_set():
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass
    return event.is_set()


async def serve(config: Config, bus: Bus, stop: asyncio.Event) -> None:
    if config.engine_runtime == "external":
        log.info("ENGINE_RUNTIME=external: engines are registered by address, nothing to provision")
        await stop.wait()
        return
    runtime = make_runtime(config)
    engines: KvView[EngineRecord] = KvView(bus.engines, decode_engine, bus)
    await engines.start()
    http = new_client(max_connections=max(config.provision_concurrency * 2, 8))
    members = Membership(
        bus,
        names.PROVISIONER_GROUP,
        new_member_id("provisioner-"),
        config.autoscale_interval_s,
        host_id=config.host_id,
    )
    provisioner = Provisioner(config, bus, runtime, engines, http, members)
    endpoint = ProvisionEndpoint(provisioner)
    membership: asyncio.Task[None] | None = None
    try:
        await members.start()
        membership = asyncio.get_running_loop().create_task(members.run(stop))
        if await provisioner.adopt(stop):
            await endpoint.start()  # after adoption: a request's census must see the adopted engines
            await provisioner.run(stop)
    finally:
        if membership is not None:
            if not stop.is_set():  # failed rather than stopped: no goodbye, the heartbeat expires
                membership.cancel()
            # Stopped: it says goodbye, so the others stop placing engines here at once.
            await asyncio.gather(membership, return_exceptions=True)
        await members.stop()
        await endpoint.stop()
        await http.aclose()
        await engines.stop()
        await runtime.close()
        log.info("engines: %s", ", ".join(f"{k} {v}" for k, v in provisioner.counts.items()))
