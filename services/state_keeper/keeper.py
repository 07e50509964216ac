"""The state-keeper's body: views, the event consumer, the micro service, housekeeping."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import datetime

from services.state_keeper.consumer import EventConsumer, require_consumer
from services.state_keeper.endpoints import Endpoints
from services.state_keeper.events import EventApplier
from services.state_keeper.stats import Stats
from services.state_keeper.store import Store
from services.state_keeper.upkeep import StreamUpkeep
from shared import names
from shared.bus import Bus
from shared.config import Config
from shared.kv import DELETE, GONE_HORIZON_S, purge_markers
from shared.lease import claim_epoch, sleep_to_next_epoch
from shared.policy.engines import tidy
from shared.policy.events import stream_expired
from shared.policy.health import HealthPolicy
from shared.policy.orphans import Pair, orphans_due
from shared.schemas import EngineIdle, StreamRecord, encode, utcnow

log = logging.getLogger("state-keeper")


async def serve(config: Config, bus: Bus, stop: asyncio.Event) -> None:
    stats = Stats()
    store = Store(bus, config.stream_ttl_s, on_conflict=stats.conflict)
    await store.start()

    async def publish_idle(note: EngineIdle) -> None:
        await bus.nc.publish(names.ENGINE_IDLE, encode(note))

    applier = EventApplier(
        store,
        HealthPolicy(fall=config.health_fail_threshold, rise=config.health_rise_threshold),
        publish_idle,
        config.max_clock_skew_s,
    )
    await applier.forget_sequences_beyond((await bus.js.stream_info(names.EVENTS_STREAM)).state.last_seq)
    if not bus.identity.creates_layout:
        await require_consumer(bus)
    consumer = EventConsumer(bus, applier, stats, config.unknown_engine_retry_s)
    endpoints = Endpoints(store, config, stats)
    service = await endpoints.start()
    upkeep = StreamUpkeep(store, config, stats)
    log.info("state-keeper ready: %d engines, %d streams known", len(store.engines.items()), len(store.streams.items()))
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(consumer.run(stop))
            group.create_task(housekeeping(store, applier, config, stop))
            group.create_task(upkeep.run(stop))
    finally:
        await service.stop()
        await endpoints.finish()
        await store.stop()
        log.info("state-keeper: %s", stats.snapshot())


async def housekeeping(store: Store, applier: EventApplier, config: Config, stop: asyncio.Event) -> None:
    """Once per interval across replicas, write back records whose reservations or claims lapsed.

    Readers already ignore what has expired; this keeps stored `state` honest
    for everyone who reads KV directly (gateway, dashboard). It also takes ended
    streams off engines that still list them (an event whose engine write kept
    failing until JetStream gave up on it), deletes ended streams and removed
    engines' tombstones older than STREAM_TTL_S, and purges the delete markers those
    deletions left once they are older than GONE_HORIZON_S.
    """
    interval = max(min(config.reservation_ttl_s, config.claim_ttl_s) / 2, 1.0)
    holder = f"{socket.gethostname()}-{id(store)}"
    record_less: dict[Pair, datetime] = {}
    while await sleep_to_next_epoch(interval, stop):
        try:
            if not await claim_epoch(store.bus.leases, "state-keeper-tidy", interval, holder):
                continue
            now = utcnow()
            for key, item in list(store.engines.items().items()):
                if tidy(item.value, now) is not item.value:
                    await store.update_engine(key, lambda r: tidy(r, utcnow()) if r else None)
            await drop_ended_streams(store, applier)
            record_less = await drop_record_less_streams(store, applier, record_less, config.reservation_ttl_s)
            await expire_streams(store, config.stream_ttl_s)
            await store.expire_removals(utcnow())
            await purge_old_markers(store)
        except Exception as exc:  # the next interval tries again
            log.warning("housekeeping failed: %s", exc)


async def drop_ended_streams(store: Store, applier: EventApplier) -> None:
    """Reconcile engines with streams whose record says ended (ended is final, so this is safe
    even when the views lag; a stream the view has not seen yet is left alone)."""
    for key, item in list(store.engines.items().items()):
        for stream_id in item.value.streams:
            stream = store.streams.get(stream_id)
            if stream is not None and stream.value.status == "ended":
                log.warning("engine %s still listed ended stream %s; dropping it", item.value.container_name, stream_id)
                await applier.reconcile(key, stream.value, None)


async def drop_record_less_streams(
    store: Store, applier: EventApplier, first_seen: dict[Pair, datetime], grace_s: float
) -> dict[Pair, datetime]:
    """Take off engines the streams they have listed without any record for `grace_s` (an event
    dropped after its engine write, before its stream record): they would count as load for ever.

    The grace is a reservation's lifetime: a start arrives within it, and its record lands a round
    trip after its engine write. The record is read from the server before the engine is changed
    (the view may lag), and once more after: a record that landed in between puts the stream back.
    Returns the record-less listings seen, to pass in next time.
    """
    listed = {key: item.value.streams for key, item in store.engines.items().items()}
    first_seen, due = orphans_due(listed, lambda s: store.streams.get(s) is not None, first_seen, utcnow(), grace_s)
    for container_id, stream_id in due:
        if await store.get_stream(stream_id) is not None:
            continue
        engine = store.engines.get(container_id)
        log.warning(
            "engine %s listed stream %s with no record for over %.0fs; dropping it",
            engine.value.container_name if engine else container_id,
            stream_id,
            grace_s,
        )
        await applier.reconcile(container_id, StreamRecord(stream_id=stream_id, status="ended"), None)
        landed = await store.get_stream(stream_id)
        if landed is not None:
            await applier.reconcile(landed.container_id or container_id, landed, None)
        first_seen.pop((container_id, stream_id), None)
    return first_seen


async def expire_streams(store: Store, ttl_s: float) -> None:
    """Delete ended streams older than STREAM_TTL_S (CAS, so a concurrent change wins).

    Done here rather than with per-message TTL: with nats-server 2.15.1 a clustered
    node that was killed and restored dropped TTL'd records (chaos scenario 2).
    """
    now = utcnow()
    for key, item in list(store.streams.items().items()):
        if stream_expired(item.value, now, ttl_s):
            await store.update_stream(key, lambda s: DELETE if s is not None and stream_expired(s, now, ttl_s) else s)


async def purge_old_markers(store: Store, horizon_s: float = GONE_HORIZON_S) -> int:
    """Keep both buckets bounded: every CAS delete leaves a marker the server never drops, and each
    view's start replays them all (450,000 of them made the state-keeper's start time out).
    Returns how many were purged (a backlog larger than a batch takes several intervals)."""
    before = time.time() - horizon_s
    total = 0
    for kv in (store.bus.streams, store.bus.engines):
        purged = await purge_markers(kv, before)
        if purged:
            log.info("purged %d delete markers older than %.0f s from %s", purged, horizon_s, kv._name)
        total += purged
    return total
