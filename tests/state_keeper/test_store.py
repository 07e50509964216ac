"""The state-keeper's Store against a real nats-server: concurrent writes to one engine."""

from __future__ import annotations

import asyncio

import msgspec

from services.state_keeper.store import Store
from shared.schemas import EngineRecord, utcnow


async def test_concurrent_writes_to_one_engine_take_turns_instead_of_racing(bus):
    store = Store(bus, stream_ttl_s=60)
    await store.start()
    try:
        base = EngineRecord(
            container_id="e1", container_name="e1", host="127.0.0.1", port=6878, runtime="external", created_at=utcnow()
        )
        await store.update_engine("e1", lambda r: base if r is None else r)
        calls = 0

        def add(stream_id: str):
            def change(record):
                nonlocal calls
                calls += 1
                return msgspec.structs.replace(record, streams=[*record.streams, stream_id])

            return change

        writes = 40
        await asyncio.gather(*(store.update_engine("e1", add(f"s{i}")) for i in range(writes)))
        stored = msgspec.json.decode((await bus.engines.get("e1")).value, type=EngineRecord)
        assert sorted(stored.streams) == sorted(f"s{i}" for i in range(writes))
        # Each change ran once: no write lost a compare-and-set to another write of this replica.
        assert calls == writes
        assert store._engine_turns == {}, "turns are dropped once nobody waits"
    finally:
        await store.stop()
