"""Several replicas, concurrent and duplicated events, contention on selection."""

from __future__ import annotations

import asyncio
import random

from keeper_helpers import consumer_drained, engine_views_caught_up, publish, register_healthy
from support import request_json, wait_until

from shared import names
from shared.kv import KvView
from shared.schemas import EngineRegistered, StreamEnded, StreamStarted, decode_engine, decode_stream

ENGINES = 50
STREAMS = 900  # 900 starts + 750 ends + duplicates and reorderings ≈ 2,000 events


def build_events(rnd: random.Random):
    """Events for STREAMS streams and the sequential model of the final state."""
    events, model = [], {f"e{i:02d}": set() for i in range(ENGINES)}
    for n in range(STREAMS):
        sid, engine = f"s{n:04d}", f"e{n % ENGINES:02d}"
        start = StreamStarted(stream_id=sid, container_id=engine, content_key=f"ch{n % 17}")
        end = StreamEnded(stream_id=sid, container_id=engine, reason="done")
        shape = n % 6
        if shape == 0:  # still playing
            events.append(start)
            model[engine].add(sid)
        elif shape == 1:  # ended before it started (reordered on the way)
            events += [end, start]
        elif shape == 2:  # duplicated start and end
            events += [start, start, end, end]
        else:
            events += [start, end]
    return events, model


async def test_three_replicas_match_the_sequential_model(start_keepers, bus, nc):
    await start_keepers(3)
    for i in range(ENGINES):
        await publish(
            bus, names.ENGINE_REGISTERED, EngineRegistered(container_id=f"e{i:02d}", host="127.0.0.1", port=30000 + i)
        )
    await wait_until(lambda: _count_engines(nc, ENGINES), what="all engines registered")

    rnd = random.Random(7)
    events, model = build_events(rnd)
    # Publish in shuffled windows so starts/ends of one stream interleave across replicas.
    window = 40
    for offset in range(0, len(events), window):
        chunk = events[offset : offset + window]
        rnd.shuffle(chunk)
        await asyncio.gather(*(publish(bus, _subject(e), e) for e in chunk))
    assert len(events) >= 1950

    await wait_until(lambda: consumer_drained(bus), timeout=120, what="consumer drained")
    for engine, expected in model.items():
        record = decode_engine((await bus.engines.get(engine)).value)
        assert set(record.streams) == expected, engine
        assert len(record.streams) == len(set(record.streams)), f"{engine} double-counted a stream"
    streams = KvView(bus.streams, decode_stream)
    await streams.start()
    try:
        started = {s.stream_id for s in streams.values() if s.status == "started"}
    finally:
        await streams.stop()
    assert started == set().union(*model.values())


async def test_concurrent_selections_never_overfill_an_engine(start_keepers, bus, nc):
    await start_keepers(2, MAX_STREAMS_PER_ENGINE="3", RESERVATION_TTL_S="60")
    for i in range(10):
        await register_healthy(bus, nc, f"e{i}")
    # A replica whose view still lacks an engine or its verdict refuses requests it could grant.
    await wait_until(lambda: engine_views_caught_up(bus, 2), what="both replicas' engine views caught up")

    replies = await asyncio.gather(*(request_json(nc, names.ENGINE_SELECT, {}, timeout=20) for _ in range(200)))
    granted = [body for body, headers in replies if "Nats-Service-Error-Code" not in headers]
    refused = [body for body, headers in replies if headers.get("Nats-Service-Error-Code") == "503"]
    assert len(granted) == 30 and len(refused) == 170
    assert all(body["error"] == "no_capacity" for body in refused)
    assert len({body["reservation_id"] for body in granted}) == 30
    for i in range(10):
        record = decode_engine((await bus.engines.get(f"e{i}")).value)
        assert len(record.reservations) == 3, record


def _subject(event) -> str:
    return names.STREAM_STARTED if isinstance(event, StreamStarted) else names.STREAM_ENDED


async def _count_engines(nc, expected: int) -> bool:
    body, _ = await request_json(nc, names.ENGINE_LIST, {})
    return len(body["engines"]) == expected
