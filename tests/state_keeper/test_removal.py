"""A removed engine stays removed: registrations and removals ordered by event sequence, with a
tombstone in KV (issue 20, item 6)."""

from __future__ import annotations

import asyncio
import random

from keeper_helpers import consumer_drained, get_engine, publish
from support import wait_until

from services.state_keeper.events import EventApplier
from services.state_keeper.store import REMOVAL_PREFIX, Store
from shared import names
from shared.kv import read
from shared.policy.health import HealthPolicy
from shared.schemas import (
    EngineHealth,
    EngineRegistered,
    EngineRemoval,
    EngineRemoved,
    StreamStarted,
    decode_engine,
    decode_removal,
    decode_stream,
    utcnow,
)


class JitteryStore(Store):
    """Every write waits a random moment first, so two handlers' steps interleave every way."""

    def __init__(self, bus, rnd: random.Random) -> None:
        super().__init__(bus, stream_ttl_s=600)
        self.rnd = rnd

    async def update_engine(self, *args, **kwargs):
        await asyncio.sleep(self.rnd.random() * 0.01)
        return await super().update_engine(*args, **kwargs)

    async def record_removal(self, *args, **kwargs):
        await asyncio.sleep(self.rnd.random() * 0.01)
        return await super().record_removal(*args, **kwargs)


async def _applier(store: Store) -> EventApplier:
    await store.start()

    async def ignore(_note) -> None:
        pass

    return EventApplier(store, HealthPolicy(), ignore)


def registration(cid: str, port: int = 7000) -> EngineRegistered:
    return EngineRegistered(container_id=cid, host="127.0.0.1", port=port, runtime="external")


async def test_a_redelivered_registration_does_not_bring_a_removed_engine_back(bus):
    applier = await _applier(Store(bus, stream_ttl_s=600))
    try:
        await applier.apply(registration("g1"), 1)
        await applier.apply(EngineRemoved(container_id="g1", reason="gone"), 2)
        writes = await _engine_writes(bus)
        await applier.apply(registration("g1"), 1)  # JetStream delivers it again
        assert await read(bus.engines, "g1", decode_engine) is None
        assert await _engine_writes(bus) == writes, "not even a moment's ghost record was written"
        tombstone = await read(bus.leases, REMOVAL_PREFIX + "g1", decode_removal)
        assert tombstone.value.removed_seq == 2 and tombstone.value.reason == "gone"

        await applier.apply(registration("g1", port=7001), 3)  # registered again on purpose
        back = await read(bus.engines, "g1", decode_engine)
        assert back is not None and back.value.port == 7001
        await applier.apply(EngineRemoved(container_id="g1", reason="gone"), 2)  # the old removal, again
        assert await read(bus.engines, "g1", decode_engine) is not None
    finally:
        await applier.store.stop()


async def test_a_registration_and_its_removal_applied_at_once_on_two_replicas_leave_nothing(bus):
    rnd = random.Random(20)
    replicas = [await _applier(JitteryStore(bus, rnd)), await _applier(JitteryStore(bus, rnd))]
    try:
        engines = [f"r{n}" for n in range(40)]
        jobs = []
        for n, cid in enumerate(engines):
            register, remove = replicas[n % 2], replicas[1 - n % 2]
            jobs += [
                register.apply(registration(cid), 2 * n + 1),
                remove.apply(EngineRemoved(container_id=cid), 2 * n + 2),
            ]
        await asyncio.gather(*jobs)
        left = [cid for cid in engines if await read(bus.engines, cid, decode_engine) is not None]
        assert left == []
    finally:
        for replica in replicas:
            await replica.store.stop()


async def test_a_removal_and_the_next_lifes_registration_at_once_leave_the_new_life_only(bus):
    """A local engine's replacement reuses its id (the port): `engine.removed` of the dead one and
    `engine.registered` of the new one arrive back to back and are applied at once. The result must
    be what applying them in order gives: the old record gone with its health and streams, a new
    record that has not been probed (`unknown`) and starts its life now."""
    applier = await _applier(JitteryStore(bus, random.Random(11)))
    try:
        engines = [f"life{n}" for n in range(20)]
        for n, cid in enumerate(engines):
            await applier.apply(registration(cid), 10 * n + 1)
            await applier.apply(EngineHealth(container_id=cid, ok=True, checked_at=utcnow()), 10 * n + 2)
            await applier.apply(StreamStarted(stream_id=f"{cid}-s", container_id=cid), 10 * n + 3)
        before = utcnow()
        await asyncio.gather(
            *(
                job
                for n, cid in enumerate(engines)
                for job in (
                    applier.apply(EngineRemoved(container_id=cid, reason="died"), 10 * n + 4),
                    applier.apply(registration(cid, port=7001), 10 * n + 5),
                )
            )
        )
        for cid in engines:
            record = (await read(bus.engines, cid, decode_engine)).value
            assert (record.port, record.health_status, record.streams) == (7001, "unknown", []), record
            assert record.created_at >= before, "a new life, not the old record refreshed"
            stream = (await read(bus.streams, f"{cid}-s", decode_stream)).value
            assert (stream.status, stream.reason) == ("ended", "engine_removed: died")
    finally:
        await applier.store.stop()


async def test_a_registration_after_a_half_done_removal_finishes_it_first(bus):
    """The removal wrote its tombstone, then failed (its redelivery comes later): the next life's
    registration must not refresh the old record, with the old health and streams, but finish the
    removal and start from nothing — and the late redelivery then changes nothing."""
    applier = await _applier(Store(bus, stream_ttl_s=600))
    try:
        await applier.apply(registration("half"), 1)
        await applier.apply(EngineHealth(container_id="half", ok=True, checked_at=utcnow()), 2)
        await applier.apply(StreamStarted(stream_id="half-s", container_id="half"), 3)
        await applier.store.record_removal(
            EngineRemoval(container_id="half", removed_seq=4, removed_at=utcnow(), reason="died")
        )
        await applier.apply(registration("half", port=7001), 5)
        record = (await read(bus.engines, "half", decode_engine)).value
        assert (record.port, record.health_status, record.streams, record.registered_seq) == (7001, "unknown", [], 5)
        stream = (await read(bus.streams, "half-s", decode_stream)).value
        assert (stream.status, stream.reason) == ("ended", "engine_removed: died")
        await applier.apply(EngineRemoved(container_id="half", reason="died"), 4)  # the redelivery
        assert (await read(bus.engines, "half", decode_engine)).value.registered_seq == 5
    finally:
        await applier.store.stop()


async def test_health_reports_applied_at_once_keep_their_streaks_in_sequence(bus):
    """fail, ok, fail for one engine, applied at once (one fetched batch): in sequence that is never two
    failures in a row, so with fall = 2 the engine stays healthy. Applied in whatever order the writes
    finish, the `ok` could be overtaken and dropped, and the engine turned unhealthy."""
    applier = await _applier(JitteryStore(bus, random.Random(5)))
    applier.health = HealthPolicy(fall=2, rise=2)
    try:
        engines = [f"streak{n}" for n in range(20)]
        for n, cid in enumerate(engines):
            await applier.apply(registration(cid), 10 * n + 1)
            await applier.apply(EngineHealth(container_id=cid, ok=True, checked_at=utcnow()), 10 * n + 2)
        await asyncio.gather(
            *(
                applier.apply(
                    EngineHealth(container_id=cid, ok=ok, checked_at=utcnow(), error=None if ok else "x"),
                    10 * n + 3 + step,
                )
                for n, cid in enumerate(engines)
                for step, ok in enumerate((False, True, False))
            )
        )
        statuses = {cid: (await read(bus.engines, cid, decode_engine)).value.health_status for cid in engines}
        assert set(statuses.values()) == {"healthy"}, statuses
    finally:
        await applier.store.stop()


async def test_removed_engines_stay_removed_through_a_real_state_keeper(start_keepers, bus, nc):
    """Registrations and removals published back to back, applied by two replicas in parallel;
    then a genuine re-registration brings one back, and tombstones expire after STREAM_TTL_S."""
    await start_keepers(2, STREAM_TTL_S="2", RESERVATION_TTL_S="2")
    engines = [f"x{n}" for n in range(40)]
    for cid in engines:
        await publish(bus, names.ENGINE_REGISTERED, registration(cid))
        await publish(bus, names.ENGINE_REMOVED, EngineRemoved(container_id=cid, reason="reaped"))
    await wait_until(lambda: consumer_drained(bus), timeout=30, what="consumer drained")
    assert [cid for cid in engines if await read(bus.engines, cid, decode_engine) is not None] == []

    await publish(bus, names.ENGINE_REGISTERED, registration("x7", port=7007))
    await wait_until(lambda: _port(nc, "x7"), what="x7 registered again")
    assert await _port(nc, "x7") == 7007
    await wait_until(lambda: _no_tombstones(bus), timeout=30, what="tombstones expired")


async def _port(nc, cid: str) -> int | None:
    record, headers = await get_engine(nc, cid)
    return None if headers.get("Nats-Service-Error-Code") else record["port"]


async def _no_tombstones(bus) -> bool:
    watcher = await bus.leases.watch(REMOVAL_PREFIX + ">", ignore_deletes=True)
    try:
        async for entry in watcher:
            return entry is None
    finally:
        await watcher.stop()
    return True


async def _engine_writes(bus) -> int:
    return (await bus.js.stream_info(f"KV_{names.ENGINES_BUCKET}")).state.last_seq
