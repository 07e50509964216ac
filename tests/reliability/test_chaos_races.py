"""Scenario 5: races.

- Stream starts racing the reaper and the janitor, with reservations expiring while
  `stream.started` is on its way (a quarter of the starts are sent around or after the
  reservation's expiry), on a small pool that grows on demand and shrinks when idle.
- Two provisioners racing on bursts of `engine.demand`.

Invariants, checked on every selection reply, every engine record revision and the
final records: no stream on a removed engine (a start sent while its reservation
was live is never stranded by a reap); never more than MAX_STREAMS_PER_ENGINE
streams + reservations granted by selection; never more than MAX_REPLICAS engines.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

from chaos_load import StreamLoad, record_invariants, snapshot, wait_drained
from chaos_stack import engine_records
from support import wait_until

from shared import names
from shared.kv import KvView
from shared.schemas import EngineDemand, EngineRecord, EngineRemoved, decode_engine, decoder, encode, utcnow

MAX_REPLICAS = 4
MAX_STREAMS = 2
RESERVATION_TTL_S = 1.0
RUN_S = 20.0
# A start sent with at least this much of its reservation left must be applied before it lapses.
PROTECTED_MARGIN_S = 0.3

decode_removed = decoder(EngineRemoved)


async def test_stream_starts_race_reaper_janitor_and_expiring_reservations(stack, figures):
    stack.start_nats()
    stack.configure(
        MIN_REPLICAS=1,
        MIN_FREE_REPLICAS=1,
        MAX_REPLICAS=MAX_REPLICAS,
        MAX_STREAMS_PER_ENGINE=MAX_STREAMS,
        RESERVATION_TTL_S=RESERVATION_TTL_S,
        ENGINE_GRACE_PERIOD_S=0.5,
        CLAIM_TTL_S=10,
        UNKNOWN_ENGINE_RETRY_S=2,
    )
    stack.start("state_keeper", 2)
    stack.start("prober")
    stack.start("provisioner", 2)
    stack.start("reaper", 2)
    stack.start("janitor", 2)
    bus = await stack.client()
    await stack.ready(bus.nc, timeout=60)
    await wait_until(lambda: _healthy(bus, 1), timeout=60, interval=0.25, what="a healthy engine")

    watch = _Watch(bus, stack)
    await watch.start()
    rng = random.Random(5)

    def start_delay() -> float:
        # Most starts go at once; a quarter wait about the reservation's TTL, so they race its expiry.
        return rng.uniform(0.7, 1.4) * RESERVATION_TTL_S if rng.random() < 0.25 else 0.0

    load = StreamLoad(
        bus,
        workers=5,
        hold_s=(0.0, 0.8),
        keep_open=0.0,
        max_streams_per_engine=MAX_STREAMS,
        reservation_ttl_s=RESERVATION_TTL_S,
        pause_s=0.4,
        start_delay_s=start_delay,
    )
    sent_at: dict[str, tuple[float, float]] = {}  # stream → (reservation time left when sent, monotonic send time)
    original_publish = load.publish

    async def publish(subject, event, msg_id):
        if subject == names.STREAM_STARTED:
            reply = next(r for r in reversed(load.replies) if r.reservation_id == event.reservation_id)
            sent_at[event.stream_id] = ((reply.expires_at - utcnow()).total_seconds(), time.monotonic())
        await original_publish(subject, event, msg_id)
        if subject == names.STREAM_ENDED:
            watch.stream_closed(event.stream_id, time.monotonic())

    load.publish = publish
    load.start()
    # Busy and quiet phases: quiet ones let engines go idle (cleaned, then reaped), busy ones bring
    # demand back, so starts keep meeting engines that are being claimed, cleaned or removed.
    for _ in range(int(RUN_S / 4)):
        load.gate.set()
        await asyncio.sleep(2.5)
        load.gate.clear()
        await asyncio.sleep(1.5)
    load.gate.set()
    await load.finish()
    await wait_drained(bus, timeout=90)
    await watch.stop()
    engines, streams = await snapshot(bus)
    problems = record_invariants(engines, streams, utcnow())

    # No stream started with a live reservation was on an engine while it was removed.
    stranded = []
    late_on_removed = 0
    for stream_id, container_id in load.started.items():
        left, started = sent_at[stream_id]
        ended = watch.closed.get(stream_id, float("inf"))
        removed = [t for t in watch.removed_at.get(container_id, []) if started < t < ended]
        if removed and left >= PROTECTED_MARGIN_S:
            stranded.append(
                f"{stream_id} on {container_id}: sent with {left:.2f}s of reservation left, "
                f"engine removed {removed[0] - started:.2f}s later"
            )
        elif removed:
            late_on_removed += 1
    late = sum(1 for left, _ in sent_at.values() if left < PROTECTED_MARGIN_S)
    # An engine removed while its record listed streams: allowed only for streams started after their
    # reservation lapsed (they can land on an engine already claimed for reaping); any other is a reap
    # from under a stream the contract protects.
    reaped_under = [(key, s) for key, streams in watch.removed_with_streams for s in streams]
    reaped_under_late = [
        f"{key}: {s}" for key, s in reaped_under if s in sent_at and sent_at[s][0] < PROTECTED_MARGIN_S
    ]
    reaped_under_protected = [f"{key}: {s}" for key, s in reaped_under if f"{key}: {s}" not in reaped_under_late]
    figures.update(
        run_s=RUN_S,
        **load.figures(),
        streams_started=len(load.started),
        starts_sent_late_or_near_expiry=late,
        late_starts_on_a_removed_engine=late_on_removed,
        protected_starts_stranded=len(stranded),
        stranded_detail=stranded[:5],
        engines_removed=sum(len(v) for v in watch.removed_at.values()),
        removal_reasons=dict(watch.reasons),
        reaped_under_a_lapsed_start=len(reaped_under_late),
        reaped_under_a_lapsed_start_detail=reaped_under_late[:5],
        reaped_under_a_protected_stream=reaped_under_protected[:5],
        cleans_seen=watch.cleans,
        reap_claims_seen=watch.reap_claims,
        max_engines=watch.max_engines,
        grants_over_capacity=len(watch.over_capacity),
        revisions_over_cap_from_late_starts=watch.late_overflows,
        over_capacity_detail=watch.over_capacity[:5],
        invariant_violations=problems[:5],
    )
    assert not stack.crashed(), stack.crashed()
    assert not load.stats.bad_replies, load.stats.bad_replies[:5]
    assert not stranded, stranded[:5]
    assert not reaped_under_protected, reaped_under_protected[:5]
    assert not problems, problems[:10]
    assert watch.max_engines <= MAX_REPLICAS, watch.max_engines
    assert not watch.over_capacity, watch.over_capacity[:5]
    # The races were real: engines were reaped and cleaned while streams kept starting.
    assert figures["engines_removed"] > 0 and watch.cleans > 0 and late > 0, figures


async def test_two_provisioners_racing_on_demand_stay_within_max_replicas(stack, figures):
    stack.start_nats()
    stack.configure(
        MIN_REPLICAS=1,
        MIN_FREE_REPLICAS=1,
        MAX_REPLICAS=MAX_REPLICAS,
        MAX_STREAMS_PER_ENGINE=1,
        RESERVATION_TTL_S=3,
        ENGINE_GRACE_PERIOD_S=300,
    )
    stack.start("state_keeper")
    stack.start("prober")
    stack.start("provisioner", 2)
    bus = await stack.client()
    await stack.ready(bus.nc, timeout=60)
    watch = _Watch(bus, stack)
    await watch.start()

    bursts, selections = 0, {"ok": 0, "no_capacity": 0}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # Both provisioners hear every demand at once; selections that find no room add more.
        await asyncio.gather(
            *(bus.nc.publish(names.ENGINE_DEMAND, encode(EngineDemand(content_key=f"c{i}"))) for i in range(50))
        )
        bursts += 1
        for _ in range(8):
            msg = await bus.nc.request(names.ENGINE_SELECT, b"{}", timeout=5)
            selections["no_capacity" if (msg.headers or {}).get("Nats-Service-Error-Code") else "ok"] += 1
        await asyncio.sleep(0.3)
    await asyncio.sleep(2)
    await watch.stop()
    records = await engine_records(bus)
    live = stack.local_engines()
    ports = [r.port for r in records.values()]
    names_ = [r.container_name for r in records.values()]

    figures.update(
        demand_bursts=bursts,
        demands_published=bursts * 50,
        selections=selections,
        max_engines_seen=watch.max_engines,
        engines_at_end=len(records),
        engine_processes_at_end=len(live),
    )
    assert not stack.crashed(), stack.crashed()
    assert watch.max_engines <= MAX_REPLICAS, watch.max_engines
    assert len(records) == MAX_REPLICAS, sorted(records)  # demand filled the pool to the cap
    assert set(live) == set(records), (sorted(live), sorted(records))
    assert len(set(ports)) == len(ports) and len(set(names_)) == len(names_), (ports, names_)


class _Watch:
    """Everything that happens to engine records and processes during a race, checked as it happens."""

    def __init__(self, bus, stack) -> None:
        self.bus = bus
        self.stack = stack
        self.view: KvView[EngineRecord] = KvView(bus.engines, decode_engine, bus)
        self.view.listeners.append(self._on_record)
        self.last: dict[str, EngineRecord] = {}
        self.removed_at: dict[str, list[float]] = defaultdict(list)
        self.removed_with_streams: list[tuple[str, list[str]]] = []
        self.reasons: dict[str, int] = defaultdict(int)
        self.closed: dict[str, float] = {}
        self.over_capacity: list[str] = []
        self.late_overflows = 0
        self.cleans = 0
        self.reap_claims = 0
        self.max_engines = 0
        self._tasks: list[asyncio.Task] = []
        self._sub = None

    async def start(self) -> None:
        await self.view.start()
        self._sub = await self.bus.nc.subscribe(names.ENGINE_REMOVED, cb=self._on_removed)
        self._tasks.append(asyncio.create_task(self._sample()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._sub.unsubscribe()
        await self.view.stop()

    def stream_closed(self, stream_id: str, at: float) -> None:
        self.closed[stream_id] = at

    def _on_record(self, key: str, record: EngineRecord | None) -> None:
        now = time.monotonic()
        if record is None:
            self.removed_at[key].append(now)
            before = self.last.pop(key, None)
            if before is not None and before.streams:
                # The state-keeper ends a removed engine's streams itself; the test decides whether the
                # engine may have held them (only starts whose reservation had lapsed can get there).
                self.removed_with_streams.append((key, list(before.streams)))
        else:
            before = self.last.get(key)
            if record.claim is not None and (before is None or before.claim != record.claim):
                self.cleans += record.claim.purpose == "clean"
                self.reap_claims += record.claim.purpose == "reap"
            now = utcnow()
            live = [e for e in record.reservations.values() if e > now]
            granted = set(record.reservations) - set(before.reservations if before else {})
            if granted and len(record.streams) + len(live) > MAX_STREAMS:
                # A revision that adds a reservation is a selection's grant: it must fit the cap.
                self.over_capacity.append(f"{key}: {len(record.streams)} streams + {len(live)} live reservations")
            elif len(record.streams) > MAX_STREAMS:
                self.late_overflows += 1  # a start whose reservation had lapsed: a fact, not a grant
            self.last[key] = record
        self.max_engines = max(self.max_engines, len(self.last))

    async def _on_removed(self, msg) -> None:
        try:
            self.reasons[decode_removed(msg.data).reason or "none"] += 1
        except Exception:
            self.reasons["undecodable"] += 1

    async def _sample(self) -> None:
        while True:
            self.max_engines = max(self.max_engines, len(self.stack.local_engines()))
            await asyncio.sleep(0.1)


async def _healthy(bus, count: int) -> bool:
    try:
        records = await engine_records(bus)
    except Exception:
        return False
    return sum(r.health_status == "healthy" for r in records.values()) >= count
