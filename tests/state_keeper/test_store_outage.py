"""A store that does not answer is not a bad event: deliveries are held, not used up; and an
engine left listing a stream whose record never landed is reconciled.

The consumer runs in this process against a real nats-server with a small `max_deliver`
and `ack_wait`. The streams bucket is taken away (its backing stream deleted: every write
to it finds no stream, as when a clustered bucket has no leader) for much longer than
`max_deliver × ack_wait`, then put back: every event still applies, none is dropped.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import pytest
from keeper_helpers import consumer_drained, get_engine, publish, register_healthy
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError
from support import wait_until

from services.state_keeper.consumer import EventConsumer, store_unavailable
from services.state_keeper.events import EventApplier
from services.state_keeper.stats import Stats
from services.state_keeper.store import Store
from shared import names
from shared.bus import bucket_stream_config
from shared.config import load_config
from shared.kv import ConflictExhausted, read
from shared.policy.health import HealthPolicy
from shared.schemas import EngineRecord, EngineRegistered, StreamStarted, decode_stream

MAX_DELIVER = 4
ACK_WAIT_S = 1.0
# The outage's length is the scenario: well past the point where counted redeliveries run out
# (max_deliver × ack_wait, plus the nak delays the consumer used to add between them).
OUTAGE_S = 3 * MAX_DELIVER * ACK_WAIT_S
STREAMS = [f"s{n}" for n in range(5)]


async def _nothing(_note) -> None:
    pass


async def test_events_held_through_an_outage_longer_than_max_deliver_all_apply(bus, nats_server, caplog):
    store = Store(bus, stream_ttl_s=600)
    await store.start()
    applier = EventApplier(store, HealthPolicy(fall=3, rise=1), _nothing)
    stats = Stats()
    consumer = EventConsumer(
        bus, applier, stats, unknown_engine_retry_s=600, max_deliver=MAX_DELIVER, ack_wait_s=ACK_WAIT_S
    )
    await applier.apply(EngineRegistered(container_id="e1", host="127.0.0.1", port=6878, runtime="local"), 1)
    bucket = f"KV_{names.STREAMS_BUCKET}"
    await bus.js.delete_stream(bucket)
    stop = asyncio.Event()
    running = asyncio.get_running_loop().create_task(consumer.run(stop))
    try:
        for stream_id in STREAMS:
            await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id=stream_id, container_id="e1"))

        async def listed() -> list[str]:
            found = await read(bus.engines, "e1", lambda data: msgspec.json.decode(data, type=EngineRecord))
            return sorted(found.value.streams) if found is not None else []

        # A start is stuck on the stream record: the store is down, and the consumer says it holds it.
        await wait_until(lambda: "store unavailable" in caplog.text, timeout=30, what="a start held by the outage")
        await asyncio.sleep(OUTAGE_S)
        assert not running.done()
        assert stats.rejected == {}, "an unavailable store must not use up deliveries"

        await bus.js.add_stream(bucket_stream_config(names.STREAMS_BUCKET, load_config({"NATS_URL": nats_server.url})))

        async def all_recorded() -> bool:
            records = [await read(bus.streams, stream_id, decode_stream) for stream_id in STREAMS]
            return all(r is not None and r.value.status == "started" and r.value.container_id == "e1" for r in records)

        await wait_until(all_recorded, timeout=60, what="every held start applied once the bucket is back")
        await wait_until(lambda: consumer_drained(bus), timeout=30, what="every event acknowledged")
        assert stats.rejected == {}
        assert stats.applied[names.STREAM_STARTED] == len(STREAMS)
        info = await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
        assert info.num_redelivered == 0, "held deliveries were kept alive, not redelivered"
        assert await listed() == STREAMS
    finally:
        stop.set()
        await running
        await store.stop()


async def _listed(nc, container_id: str) -> list[str] | None:
    body, _ = await get_engine(nc, container_id)
    return body.get("streams")


async def _list_without_record(bus, container_id: str, stream_id: str) -> None:
    """What a start whose event was dropped after its engine write left behind."""
    entry = await bus.engines.get(container_id)
    record = msgspec.json.decode(entry.value, type=EngineRecord)
    record = msgspec.structs.replace(record, streams=[*record.streams, stream_id], idle_since=None)
    await bus.engines.update(container_id, msgspec.json.encode(record), last=entry.revision)


async def test_an_engine_listing_a_stream_without_any_record_is_reconciled(start_keepers, bus, nc):
    await start_keepers(1, RESERVATION_TTL_S="2")
    await register_healthy(bus, nc, "e1")
    await register_healthy(bus, nc, "e2", port=6879)
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="live", container_id="e1"))
    await wait_until(lambda: read(bus.streams, "live", decode_stream), what="the live stream's record")
    await _list_without_record(bus, "e1", "ghost1")
    await _list_without_record(bus, "e2", "ghost2")

    await wait_until(lambda: _equals(_listed(nc, "e1"), ["live"]), timeout=30, what="ghost1 dropped from e1")
    await wait_until(lambda: _equals(_listed(nc, "e2"), []), timeout=30, what="ghost2 dropped from e2")
    e2, _ = await get_engine(nc, "e2")
    assert e2["idle_since"] is not None, "an engine left with nothing is idle again"
    assert await read(bus.streams, "ghost1", decode_stream) is None, "reconciling writes no record"


async def _equals(pending, expected) -> bool:
    return await pending == expected


@pytest.mark.parametrize(
    "exc, unavailable",
    [
        (nats.errors.TimeoutError(), True),
        (NoStreamResponseError(), True),
        (ServiceUnavailableError(code=503, description="no leader"), True),
        (nats.errors.ConnectionClosedError(), True),
        (ConnectionResetError(), True),
        (ConflictExhausted("ace_engines/e1: still conflicting"), False),
        (BadRequestError(code=400, description="bad"), False),
        (ValueError("a bug of ours"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_only_a_store_that_does_not_answer_holds_a_delivery(exc, unavailable):
    assert store_unavailable(exc) is unavailable
