"""A replica killed mid-load loses nothing JetStream accepted."""

from __future__ import annotations

import asyncio
import signal

from keeper_helpers import consumer_drained, publish
from support import wait_for_service, wait_until

from shared import names
from shared.schemas import EngineRegistered, StreamEnded, StreamStarted, decode_engine


async def test_sigkill_mid_load_then_restart_applies_every_event(start_keepers, bus, nc):
    [keeper] = await start_keepers(1)
    for i in range(10):
        await publish(
            bus, names.ENGINE_REGISTERED, EngineRegistered(container_id=f"e{i}", host="127.0.0.1", port=31000 + i)
        )
    expected: dict[str, set[str]] = {f"e{i}": set() for i in range(10)}
    events = []
    for n in range(1500):
        engine = f"e{n % 10}"
        events.append(StreamStarted(stream_id=f"s{n}", container_id=engine))
        if n % 3:
            events.append(StreamEnded(stream_id=f"s{n}", container_id=engine))
        else:
            expected[engine].add(f"s{n}")

    async def load():
        for offset in range(0, len(events), 50):
            await asyncio.gather(
                *(
                    publish(bus, names.STREAM_STARTED if isinstance(e, StreamStarted) else names.STREAM_ENDED, e)
                    for e in events[offset : offset + 50]
                )
            )

    publisher = asyncio.create_task(load())
    await wait_until(lambda: _applied_some(bus), timeout=30, what="some events applied")
    keeper.stop(signal.SIGKILL)
    await publisher  # JetStream keeps accepting while no state-keeper runs
    info = await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    assert info.num_pending + info.num_ack_pending > 0, "the kill should leave work behind"

    await start_keepers(1)
    await wait_for_service(nc)
    await wait_until(lambda: consumer_drained(bus), timeout=120, what="consumer drained after restart")
    for engine, streams in expected.items():
        record = decode_engine((await bus.engines.get(engine)).value)
        assert set(record.streams) == streams, engine


async def _applied_some(bus) -> bool:
    info = await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    return info.ack_floor.stream_seq > 300
