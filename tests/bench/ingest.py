"""Event ingest: stream.started/stream.ended pairs until KV reflects all of them, vs raw CAS writes.

Pairs are published through JetStream (with a Nats-Msg-Id, as proxies do),
about 100 streams live at a time on 100 registered engines; the clock stops
when the durable consumer has nothing pending or unacknowledged (the
state-keeper acks an event only once its effect is in KV), then KV is
checked against the sequential model: every stream record started and
ended as published, every engine empty with a start from this round; a
dropped event fails the run (`WrongResult`). Each round runs right after
a raw `kv.update(key, value, last=revision)` baseline of 4 writers on 4
keys of a bucket configured like ours (a value of a stream record's size);
the ratio reported is the median over the rounds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from datetime import datetime

from shared import names
from shared.bus import bucket_stream_config
from shared.config import load_config
from shared.schemas import StreamEnded, StreamRecord, StreamStarted, encode, utcnow
from tests.bench.harness import Results, Stack, Window, WrongResult, bounded_gather, wait_for
from tests.bench.selection import register_engines
from tests.support import keeper_stats, wait_for_service

BENCH = "ingest"
ENGINES = 100
PAIRS = 5000
LIVE = 100  # streams playing at once while the pairs are published
PUBLISHERS = 128
CAS_SECONDS = 2.0  # the informational 1/4/32-writer figures
CAS_ROUND_S = 1.0  # the baseline next to each measured round
ROUNDS = 3
CAS_WRITERS = (1, 4, 32)  # the target compares with 4 writers on 4 keys, as DESIGN §9 quotes it
TARGET_WRITERS = 4
TARGET_RATIO = 0.4


def events(prefix: str, engine_ids: list[str]) -> list[tuple[str, bytes, str]]:
    """(subject, payload, msg id): each stream ends LIVE starts after it began."""
    now = utcnow()
    starts = [
        StreamStarted(
            stream_id=f"{prefix}-{i}",
            container_id=engine_ids[i % len(engine_ids)],
            content_key=f"content-{i % 37}",
            key_type="content_id",
            playback_session_id=f"session-{i}",
            stat_url=f"http://127.0.0.1:6878/ace/stat/x/{i}",
            command_url=f"http://127.0.0.1:6878/ace/cmd/x/{i}",
            is_live=True,
            started_at=now,
        )
        for i in range(PAIRS)
    ]
    ends = [
        StreamEnded(stream_id=f"{prefix}-{i}", container_id=engine_ids[i % len(engine_ids)], reason="bench")
        for i in range(PAIRS)
    ]
    out = []
    for i in range(PAIRS):
        out.append((names.STREAM_STARTED, encode(starts[i]), f"start-{prefix}-{i}"))
        if i >= LIVE:
            out.append((names.STREAM_ENDED, encode(ends[i - LIVE]), f"end-{prefix}-{i - LIVE}"))
    out.extend((names.STREAM_ENDED, encode(ends[i]), f"end-{prefix}-{i}") for i in range(max(0, PAIRS - LIVE), PAIRS))
    return out


async def publish_as_proxies(bus, batch: list[tuple[str, bytes, str]]) -> None:
    """PUBLISHERS in flight; a stream's end goes out only once its start is acknowledged, as a proxy's does."""
    acked: dict[str, asyncio.Event] = {}

    async def publish(subject: str, data: bytes, msg_id: str) -> None:
        stream = msg_id.split("-", 1)[1]
        if subject == names.STREAM_ENDED:
            await acked[stream].wait()
        await bus.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        if subject == names.STREAM_STARTED:
            acked[stream].set()

    for subject, _, msg_id in batch:
        if subject == names.STREAM_STARTED:
            acked[msg_id.split("-", 1)[1]] = asyncio.Event()
    await bounded_gather([lambda s=s, d=d, m=m: publish(s, d, m) for s, d, m in batch], PUBLISHERS)


async def drained(bus) -> bool:
    info = await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def verify(bus, prefix: str, engine_ids: list[str], began: datetime) -> None:
    """Every record as the sequential model says, or `WrongResult` naming the first difference.

    Each pair's stream record must be a started-then-ended record (a tombstone left by an end
    whose start was dropped has no `started_at` nor `content_key`), and every engine must hold
    no stream and show a stream start from this round.
    """

    async def check(i: int) -> str | None:
        key = f"{prefix}-{i}"
        entry = await bus.streams.get(key)
        record = json.loads(entry.value) if entry.value else {}
        expected = {
            "status": "ended",
            "container_id": engine_ids[i % len(engine_ids)],
            "content_key": f"content-{i % 37}",
            "playback_session_id": f"session-{i}",
            "reason": "bench",
        }
        wrong = {field: record.get(field) for field, value in expected.items() if record.get(field) != value}
        if wrong or not record.get("started_at") or not record.get("ended_at"):
            return f"stream {key}: {wrong or 'no started_at/ended_at'} (expected {expected})"
        return None

    problems = [p for p in await bounded_gather([lambda i=i: check(i) for i in range(PAIRS)], 32) if p]
    msg = await bus.nc.request(names.ENGINE_LIST, b"{}", timeout=5)
    engines = {e["container_id"]: e for e in json.loads(msg.data)["engines"]}
    for cid in engine_ids:
        engine = engines.get(cid)
        if engine is None:
            problems.append(f"engine {cid} is gone")
        elif engine["streams"] or engine["reservations"]:
            problems.append(f"engine {cid} still lists {len(engine['streams'])} streams")
        elif not engine["last_stream_usage"] or datetime.fromisoformat(engine["last_stream_usage"]) < began:
            problems.append(f"engine {cid} shows no stream start from this round")
    if problems:
        raise WrongResult(f"KV does not reflect the {PAIRS} pairs ({len(problems)} problems), first: {problems[:3]}")


async def _conflicts(bus) -> int:
    """Record writes the keepers lost to each other so far (their $SRV.STATS)."""
    return sum((await keeper_stats(bus.nc)).get("conflicts", {}).values())


async def ingest(stack: Stack, bus, replicas: int, engine_ids: list[str], prefix: str) -> tuple[float, str]:
    """One round: (pairs/s, what it cost); raises `WrongResult` unless KV holds every pair's effect."""
    began = utcnow()
    batch = events(prefix, engine_ids)
    before = await bus.js.stream_info(names.EVENTS_STREAM)
    conflicts_before = await _conflicts(bus)
    with Window(stack.gauge) as window:
        started = time.monotonic()
        await publish_as_proxies(bus, batch)
        published = time.monotonic() - started
        await wait_for(lambda: drained(bus), 180, f"{PAIRS} pairs applied by {replicas} keeper(s)", period_s=0.05)
        elapsed = time.monotonic() - started
    after = await bus.js.stream_info(names.EVENTS_STREAM)
    stored = after.state.messages - before.state.messages
    await verify(bus, prefix, engine_ids, began)
    conflicts = (await _conflicts(bus) - conflicts_before) / (2 * PAIRS)
    cpu_us = window.used.get("state-keeper", 0.0) / (2 * PAIRS) * 1e6
    note = (
        f"{2 * PAIRS} events ({stored} stored) in {elapsed:.2f}s, publishing took {published:.2f}s; "
        f"keepers {window.share('state-keeper'):.0%} of a core, ~{cpu_us:.0f} us CPU per event, "
        f"{conflicts:.2f} CAS conflicts per event; other work on the machine {window.foreign_share:.0%} of a core"
    )
    return PAIRS / elapsed, note


class RawCas:
    """`kv.update(key, value, last=revision)` on a bucket configured like ours, value of a stream record's size."""

    def __init__(self, kv, revisions: dict[str, int], value: bytes) -> None:
        self.kv, self.revisions, self.value = kv, revisions, value

    @classmethod
    async def create(cls, bus, size: int) -> RawCas:
        await bus.js.add_stream(bucket_stream_config("bench_ingest", load_config({"NATS_URL": "nats://127.0.0.1:1"})))
        kv = await bus.js.key_value("bench_ingest")
        value = b"x" * size
        return cls(kv, {f"k{i}": await kv.put(f"k{i}", value) for i in range(ENGINES)}, value)

    async def rate(self, writers: int, seconds: float) -> float:
        """Writes per second by `writers` concurrent writers, each on its own keys."""
        keys = list(self.revisions)[:writers] if writers == TARGET_WRITERS else list(self.revisions)
        counter = [0]
        until = time.monotonic() + seconds

        async def writer(mine: list[str]) -> None:
            turn = 0
            while time.monotonic() < until:
                key = mine[turn % len(mine)]
                self.revisions[key] = await self.kv.update(key, self.value, last=self.revisions[key])
                counter[0] += 1
                turn += 1

        begin = time.monotonic()
        await asyncio.gather(*(writer(keys[w::writers]) for w in range(writers)))
        return counter[0] / (time.monotonic() - begin)


async def rounds(stack: Stack, bus, cas: RawCas, replicas: int, engine_ids: list[str]) -> tuple[float, float, str]:
    """ROUNDS of (raw CAS baseline, ingest) back to back: (median pairs/s, median ratio, last note).

    The baseline runs right next to each measured round, so a machine that is busier in one
    phase than the other moves both, and the verdict is the median of the per-round ratios.
    """
    rates, ratios, note = [], [], ""
    for round_ in range(ROUNDS):
        baseline = await cas.rate(TARGET_WRITERS, CAS_ROUND_S)
        rate, note = await ingest(stack, bus, replicas, engine_ids, f"r{replicas}-{round_}")
        rates.append(rate)
        ratios.append(2 * rate / baseline)
    return statistics.median(rates), statistics.median(ratios), note


async def bench(results: Results) -> None:
    print(f"\n== ingest: {ROUNDS} rounds of {PAIRS} stream.started/stream.ended pairs on {ENGINES} engines", flush=True)
    with Stack(BENCH) as stack:
        bus = await stack.bus("bench-ingest")
        try:
            await stack.keepers(bus.nc, 1)
            engine_ids = await register_engines(stack, ENGINES, healthy=False)
            idle = stack.gauge.now("state-keeper")
            sample = StreamRecord(
                stream_id="r1-1234",
                container_id=engine_ids[0],
                content_key="content-12",
                key_type="content_id",
                playback_session_id="session-1234",
                stat_url="http://127.0.0.1:6878/ace/stat/x/1234",
                command_url="http://127.0.0.1:6878/ace/cmd/x/1234",
                is_live=True,
                started_at=utcnow(),
            )
            cas = await RawCas.create(bus, len(encode(sample)))
            for writers in CAS_WRITERS:
                rate = await cas.rate(writers, CAS_SECONDS)
                results.add(
                    BENCH,
                    f"raw CAS writes, {writers} writer{'s' if writers > 1 else ''}",
                    rate,
                    "writes/s",
                    note=f"{writers if writers == TARGET_WRITERS else ENGINES} keys, value {len(cas.value)} B",
                )
            stack.gauge.reset()
            measured = {1: await rounds(stack, bus, cas, 1, engine_ids)}
            stack.service("state_keeper")
            stack.service("state_keeper")
            await wait_for_service(bus.nc, names.SERVICE_NAME, 3, timeout=30)
            measured[3] = await rounds(stack, bus, cas, 3, engine_ids)
            results.memory("state-keeper", idle, stack.gauge.peaks().get("state-keeper"), "ingest")
        finally:
            await bus.close()
    for replicas, (rate, ratio, note) in measured.items():
        label = f"{replicas} keeper{'s' if replicas > 1 else ''}"
        results.add(BENCH, f"ingest {label}", rate, "pairs/s", note=f"median of {ROUNDS} rounds; last: {note}")
        results.add(BENCH, f"ingest {label} events", 2 * rate, "events/s")
        results.add(
            BENCH,
            f"KV reflects every pair ({label})",
            1,
            "",
            target="yes",
            ok=True,
            note=f"every stream record and engine checked against the sequential model, {ROUNDS} rounds",
        )
        extra = (
            dict(target=f">= {TARGET_RATIO} x raw CAS ({TARGET_WRITERS} writers)", ok=ratio >= TARGET_RATIO)
            if replicas == 1
            else {}
        )
        results.add(
            BENCH,
            f"ingest events/raw CAS ({label})",
            ratio,
            "x",
            digits=2,
            note=f"median of {ROUNDS} per-round ratios, each against a {CAS_ROUND_S:g}s baseline run just before it",
            **extra,
        )
    one, three = measured[1][0], measured[3][0]
    results.add(BENCH, "3 keepers vs 1", three / one, "x", digits=2, target="> 1 x", ok=three > one)


if __name__ == "__main__":
    from tests.bench.harness import run_alone

    sys.exit(run_alone(BENCH, bench))
