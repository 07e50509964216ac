"""An engine record stays bounded whatever proxies report (issue 20, item 8)."""

from __future__ import annotations

import asyncio

from keeper_helpers import consumer_drained, get_engine, publish
from support import keeper_stats, wait_until

from shared import names
from shared.kv import read
from shared.policy.events import MAX_RECORD_STREAMS
from shared.schemas import EngineRegistered, StreamEnded, StreamStarted, decode_stream


def long_id(n: int) -> str:
    return f"{n:04d}-" + "x" * 250  # the longest id a start may carry (255 characters)


async def test_starts_beyond_the_record_limit_are_refused_counted_and_never_written(start_keepers, bus, nc):
    await start_keepers(1)
    await publish(bus, names.ENGINE_REGISTERED, EngineRegistered(container_id="e1", host="127.0.0.1", port=7000))
    extra = 3
    starts = [StreamStarted(stream_id=long_id(n), container_id="e1") for n in range(MAX_RECORD_STREAMS + extra)]
    for offset in range(0, len(starts), 50):
        await asyncio.gather(*(publish(bus, names.STREAM_STARTED, s) for s in starts[offset : offset + 50]))
    await wait_until(lambda: consumer_drained(bus), timeout=60, what="consumer drained")

    record, _ = await get_engine(nc, "e1")
    assert len(record["streams"]) == MAX_RECORD_STREAMS
    assert len((await bus.engines.get("e1")).value) < nc.max_payload // 4
    assert (await keeper_stats(nc))["rejected"] == {"engine_full": extra}
    refused = sorted(set(s.stream_id for s in starts) - set(record["streams"]))
    assert len(refused) == extra
    assert [await read(bus.streams, sid, decode_stream) for sid in refused] == [None] * extra

    # Room again once a stream ends: the refused start, re-sent, now lands.
    await publish(bus, names.STREAM_ENDED, StreamEnded(stream_id=record["streams"][0], container_id="e1"))
    await wait_until(lambda: _count(nc, "e1", MAX_RECORD_STREAMS - 1), what="one stream ended")
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id=refused[0], container_id="e1"))
    await wait_until(lambda: consumer_drained(bus), what="consumer drained")
    record, _ = await get_engine(nc, "e1")
    assert refused[0] in record["streams"] and len(record["streams"]) == MAX_RECORD_STREAMS


async def _count(nc, cid: str, expected: int) -> bool:
    record, _ = await get_engine(nc, cid)
    return len(record["streams"]) == expected
