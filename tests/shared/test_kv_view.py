"""KvView and delete markers against a real nats-server: restarts leave nothing behind, deletions
are remembered for a bounded time, old markers are purged without touching newer values."""

from __future__ import annotations

import asyncio
import time

import msgspec
from support import wait_until, write_markers

from shared import names
from shared.bus import connect
from shared.config import load_config
from shared.kv import DELETE, KvView, Versioned, _old_markers, _purge_marker, cas_update, purge_markers, read
from shared.schemas import EngineRecord, StreamRecord, decode_engine, decode_stream, encode, utcnow


class Counter(msgspec.Struct):
    n: int


def decode(data: bytes) -> Counter:
    return msgspec.json.decode(data, type=Counter)


async def _consumers(bus, bucket: str) -> int:
    return (await bus.js.stream_info(f"KV_{bucket}")).state.consumer_count


def _engine(container_id: str) -> bytes:
    return encode(
        EngineRecord(
            container_id=container_id,
            container_name=container_id,
            host="127.0.0.1",
            port=6878,
            runtime="external",
            created_at=utcnow(),
        )
    )


async def test_overlapping_restarts_then_stop_leave_no_subscription_or_consumer_behind(nats_server):
    bus = await connect(load_config({"NATS_URL": nats_server.url}), "t")
    try:
        before = await _consumers(bus, names.ENGINES_BUCKET)
        view: KvView[EngineRecord] = KvView(bus.engines, decode_engine)
        heard: list[str] = []
        view.listeners.append(lambda key, _value: heard.append(key))
        await view.start()
        await asyncio.gather(view.restart(), view.restart())  # two reconnects in a row
        await view.stop()
        await view.restart()  # a reconnect after stop: stays stopped
        assert await _consumers(bus, names.ENGINES_BUCKET) == before

        witness: KvView[EngineRecord] = KvView(bus.engines, decode_engine)
        await witness.start()
        for key in ("e1", "e2"):
            await bus.engines.put(key, _engine(key))
            await wait_until(lambda: witness.get(key), what=f"{key} seen by a live view")
        await witness.stop()
        assert heard == [], "a stopped view still received writes"
        assert await _consumers(bus, names.ENGINES_BUCKET) == before
    finally:
        await bus.close()


async def test_a_view_remembers_recent_deletions_and_forgets_those_past_its_horizon(nats_server):
    bus = await connect(load_config({"NATS_URL": nats_server.url}), "t")
    try:
        await write_markers(bus.nc, bus.streams, "old", 500)
        recent: KvView[StreamRecord] = KvView(bus.streams, decode_stream)
        await recent.start()
        gone = recent.gone_revision("old-0")
        assert gone > 0
        recent.remember("old-0", StreamRecord(stream_id="old-0"), gone - 1)  # a late, older write
        assert recent.get("old-0") is None, "a late write revived a deleted key"
        await recent.stop()

        past: KvView[StreamRecord] = KvView(bus.streams, decode_stream, gone_horizon_s=0.0)
        await past.start()
        assert [k for k in (f"old-{i}" for i in range(500)) if past.gone_revision(k)] == []
        assert len(past._gone) == 0
        await past.stop()
    finally:
        await bus.close()


async def test_a_start_that_keeps_progressing_is_not_cut_short_by_its_timeout(nats_server):
    bus = await connect(load_config({"NATS_URL": nats_server.url}), "t")
    try:
        await write_markers(bus.nc, bus.streams, "old", 40_000)
        view: KvView[StreamRecord] = KvView(bus.streams, decode_stream)
        started = time.monotonic()
        await view.start(timeout=0.5)  # reading 40,000 entries takes longer than that here
        elapsed = time.monotonic() - started
        assert view.gone_revision("old-39999") > 0
        await view.stop()
        print(f"view start with 40,000 markers: {elapsed:.2f}s")
    finally:
        await bus.close()


async def _bucket(nc, url: str, name: str = "t_markers"):
    from shared.bus import bucket_stream_config

    js = nc.jetstream(timeout=2)
    await js.add_stream(bucket_stream_config(name, load_config({"NATS_URL": url})))
    return js, await js.key_value(name)


async def test_purging_a_marker_never_removes_a_value_written_after_it(nc, nats_server):
    js, kv = await _bucket(nc, nats_server.url)
    for key in ("a", "b"):
        await cas_update(kv, key, lambda _c: Counter(1), decode)
        await cas_update(kv, key, lambda _c: DELETE, decode)
    old = await _old_markers(kv, time.time() + 60, 100)
    assert sorted(key for key, _ in old) == ["a", "b"]
    b_marker = dict(old)["b"]
    await cas_update(kv, "a", lambda _c: Counter(2), decode)  # written again between scan and purge
    for key, revision in old:
        await _purge_marker(kv, key, revision)
    assert (await read(kv, "a", decode)).value == Counter(2)
    assert await read(kv, "b", decode) is None
    assert (await js.stream_info("KV_t_markers")).state.messages == 1
    # A writer still holding the purged marker's revision loses one compare-and-set, then writes.
    outcome = await cas_update(kv, "b", lambda _c: Counter(3), decode, cached=Versioned(None, b_marker))
    assert outcome.written and outcome.conflicts == 1
    assert (await read(kv, "b", decode)).value == Counter(3)


async def test_only_markers_older_than_the_cut_are_purged(nc, nats_server):
    js, kv = await _bucket(nc, nats_server.url)
    await cas_update(kv, "live", lambda _c: Counter(1), decode)
    await write_markers(nc, kv, "month", 300)
    cut = time.time()
    await wait_until(lambda: time.time() > cut + 0.01, what="the clock to move past the cut")
    await write_markers(nc, kv, "day", 20)
    assert await purge_markers(kv, cut, limit=100) == 100  # a backlog is purged a batch at a time
    assert await purge_markers(kv, cut) == 200
    assert await purge_markers(kv, cut) == 0
    assert (await js.stream_info("KV_t_markers")).state.messages == 1 + 20
    assert (await read(kv, "live", decode)).value == Counter(1)
