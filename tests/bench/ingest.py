"""Event ingest: stream.started/stream.ended pairs until KV reflects all of them, vs raw CAS writes.

Pairs are published through JetStream (with a Nats-Msg-Id, as proxies do),
about 100 streams live at a time on 100 registered engines; the clock stops
when the durable consumer has nothing pending or unacknowledged (the
state-keeper acks an event only once its effect is in KV), then KV is
checked: no engine holds a stream and sampled stream records are ended.
The baseline is raw `kv.update(key, value, last=revision)` on 100 keys of
a bucket configured like ours, with a value of a stream record's size,
sequentially and with 32 concurrent writers.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from shared import names
from shared.bus import bucket_stream_config
from shared.config import load_config
from shared.schemas import StreamEnded, StreamRecord, StreamStarted, encode, utcnow
from tests.bench.harness import Results, Stack, Window, bounded_gather, wait_for
from tests.bench.selection import register_engines
from tests.support import keeper_stats, wait_for_service

BENCH = "ingest"
ENGINES = 100
PAIRS = 5000
LIVE = 100  # streams playing at once while the pairs are published
PUBLISHERS = 128
CAS_SECONDS = 2.0
CAS_WRITERS = (1, 4, 32)  # the target compares with 4 writers on 4 keys, as DESIGN §9 quotes it
TARGET_WRITERS = 4
TARGET_RATIO = 0.4


def events(prefix: str, engine_ids: list[str]) -> list[tuple[str, bytes, str]]:
    """(subject, payload, msg id): each stream ends LIVE starts after it began."""
    now = utcnow()
    starts = [
        StreamStarted(
            stream_id=f"{prefix}-{i}", container_id=engine_ids[i % len(engine_ids)],
            content_key=f"content-{i % 37}", key_type="content_id", playback_session_id=f"session-{i}",
            stat_url=f"http://127.0.0.1:6878/ace/stat/x/{i}", command_url=f"http://127.0.0.1:6878/ace/cmd/x/{i}",
            is_live=True, started_at=now,
        )
        for i in range(PAIRS)
    ]
    ends = [StreamEnded(stream_id=f"{prefix}-{i}", container_id=engine_ids[i % len(engine_ids)], reason="bench") for i in range(PAIRS)]
    out = []
    for i in range(PAIRS):
        out.append((names.STREAM_STARTED, encode(starts[i]), f"start-{prefix}-{i}"))
        if i >= LIVE:
            out.append((names.STREAM_ENDED, encode(ends[i - LIVE]), f"end-{prefix}-{i - LIVE}"))
    out.extend((names.STREAM_ENDED, encode(ends[i]), f"end-{prefix}-{i}") for i in range(max(0, PAIRS - LIVE), PAIRS))
    return out


async def drained(bus) -> bool:
    info = await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def verify(bus, prefix: str) -> str | None:
    """None when KV reflects every pair; otherwise what is wrong."""
    msg = await bus.nc.request(names.ENGINE_LIST, b"{}", timeout=5)
    engines = json.loads(msg.data)["engines"]
    holding = sum(len(e["streams"]) for e in engines)
    if holding:
        return f"{holding} streams still listed on engines"
    for i in random.sample(range(PAIRS), 25):
        entry = await bus.streams.get(f"{prefix}-{i}")
        if b'"status":"ended"' not in (entry.value or b""):
            return f"stream {prefix}-{i} is not ended in KV"
    return None


async def _conflicts(bus) -> int:
    """Record writes the keepers lost to each other so far (their $SRV.STATS)."""
    return sum((await keeper_stats(bus.nc)).get("conflicts", {}).values())


async def ingest(stack: Stack, bus, results: Results, replicas: int, engine_ids: list[str]) -> float:
    prefix = f"r{replicas}"
    batch = events(prefix, engine_ids)
    before = await bus.js.stream_info(names.EVENTS_STREAM)
    conflicts_before = await _conflicts(bus)
    with Window(stack.gauge) as window:
        started = time.monotonic()
        await bounded_gather(
            [lambda s=s, d=d, m=m: bus.js.publish(s, d, headers={"Nats-Msg-Id": m}) for s, d, m in batch], PUBLISHERS
        )
        published = time.monotonic() - started
        await wait_for(lambda: drained(bus), 180, f"{PAIRS} pairs applied by {replicas} keeper(s)", period_s=0.05)
        elapsed = time.monotonic() - started
    after = await bus.js.stream_info(names.EVENTS_STREAM)
    stored = after.state.messages - before.state.messages
    problem = await verify(bus, prefix)
    conflicts = (await _conflicts(bus) - conflicts_before) / (2 * PAIRS)
    rate = PAIRS / elapsed
    cpu_us = window.used.get("state-keeper", 0.0) / (2 * PAIRS) * 1e6
    note = (
        f"{2 * PAIRS} events ({stored} stored) in {elapsed:.2f}s, publishing took {published:.2f}s; "
        f"keepers {window.share('state-keeper'):.0%} of a core, ~{cpu_us:.0f} us CPU per event, "
        f"{conflicts:.2f} CAS conflicts per event; "
        f"other work on the machine {window.foreign_share:.0%} of a core"
    )
    label = f"{replicas} keeper{'s' if replicas > 1 else ''}"
    results.add(BENCH, f"ingest {label}", rate, "pairs/s", note=note)
    results.add(BENCH, f"ingest {label} events", 2 * rate, "events/s")
    results.add(BENCH, f"KV reflects all pairs ({label})", 1 if problem is None else 0, "", target="yes",
                ok=problem is None, note=problem or "")
    return rate


async def raw_cas(bus, results: Results, size: int) -> dict[int, float]:
    """kv.update(last=…) writes per second by N concurrent writers, each on its own keys."""
    js = bus.js
    await js.add_stream(bucket_stream_config("bench_ingest", load_config({"NATS_URL": "nats://127.0.0.1:1"})))
    kv = await js.key_value("bench_ingest")
    value = b"x" * size
    keys = [f"k{i}" for i in range(ENGINES)]
    revisions = {key: await kv.put(key, value) for key in keys}

    async def writer(mine: list[str], until: float, counter: list[int]) -> None:
        turn = 0
        while time.monotonic() < until:
            key = mine[turn % len(mine)]
            revisions[key] = await kv.update(key, value, last=revisions[key])
            counter[0] += 1
            turn += 1

    rates = {}
    for writers in CAS_WRITERS:
        counter = [0]
        begin = time.monotonic()
        until = begin + CAS_SECONDS
        mine = keys[:writers] if writers == TARGET_WRITERS else keys
        await asyncio.gather(*(writer(mine[w::writers], until, counter) for w in range(writers)))
        rates[writers] = counter[0] / (time.monotonic() - begin)
        keys_used = len(mine)
        results.add(BENCH, f"raw CAS writes, {writers} writer{'s' if writers > 1 else ''}", rates[writers], "writes/s",
                    note=f"{keys_used} keys, value {size} B")
    return rates


async def bench(results: Results) -> None:
    print(f"\n== ingest: {PAIRS} stream.started/stream.ended pairs on {ENGINES} engines", flush=True)
    with Stack(BENCH) as stack:
        bus = await stack.bus("bench-ingest")
        try:
            await stack.keepers(bus.nc, 1)
            engine_ids = await register_engines(stack, ENGINES, healthy=False)
            idle = stack.gauge.now("state-keeper")
            sample = StreamRecord(
                stream_id="r1-1234", container_id=engine_ids[0], content_key="content-12", key_type="content_id",
                playback_session_id="session-1234", stat_url="http://127.0.0.1:6878/ace/stat/x/1234",
                command_url="http://127.0.0.1:6878/ace/cmd/x/1234", is_live=True, started_at=utcnow(),
            )
            cas = await raw_cas(bus, results, len(encode(sample)))
            stack.gauge.reset()
            one = await ingest(stack, bus, results, 1, engine_ids)
            stack.service("state_keeper")
            stack.service("state_keeper")
            await wait_for_service(bus.nc, names.SERVICE_NAME, 3, timeout=30)
            three = await ingest(stack, bus, results, 3, engine_ids)
            results.memory("state-keeper", idle, stack.gauge.peaks().get("state-keeper"), "ingest")
        finally:
            await bus.close()
    for label, rate, target in (("1 keeper", one, True), ("3 keepers", three, False)):
        ratio = 2 * rate / cas[TARGET_WRITERS]
        extra = dict(target=f">= {TARGET_RATIO} x raw CAS ({TARGET_WRITERS} writers)", ok=ratio >= TARGET_RATIO) if target else {}
        others = ", ".join(f"{2 * rate / cas[w]:.2f} x vs {w} writer{'s' if w > 1 else ''}" for w in CAS_WRITERS if w != TARGET_WRITERS)
        results.add(BENCH, f"ingest events/raw CAS ({label})", ratio, "x", digits=2,
                    note=f"{others}; pairs/raw CAS {rate / cas[TARGET_WRITERS]:.2f} x", **extra)
    results.add(BENCH, "3 keepers vs 1", three / one, "x", digits=2, target="> 1 x", ok=three > one)


if __name__ == "__main__":
    from tests.bench.harness import run_alone

    sys.exit(run_alone(BENCH, bench))
