"""A removed engine stays removed: registrations and removals ordered by event sequence, with a
tombstone in KV (issue 20, item 6)."""

from __future__ import annotations

import asyncio
import random

from keeper_helpers import consumer_drained, get_engine, publish
from services.state_keeper.events import EventApplier
from services.state_keeper.store import REMOVAL_PREFIX, Store
from shared import names
from shared.kv import read
from shared.policy.health import HealthPolicy
from shared.schemas import EngineRegistered, EngineRemoved, decode_engine, decode_removal
from support import wait_until


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
            jobs += [register.apply(registration(cid), 2 * n + 1),
                     remove.apply(EngineRemoved(container_id=cid), 2 * n + 2)]
        await asyncio.gather(*jobs)
        left = [cid for cid in engines if await read(bus.engines, cid, decode_engine) is not None]
        assert left == []
    finally:
        for replica in replicas:
            await replica.store.stop()


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
