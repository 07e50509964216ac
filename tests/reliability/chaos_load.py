"""Load that knows what should happen: selections and stream events, checked against a sequential model.

`StreamLoad` workers loop select → `stream.started` (with the reservation) → hold →
`stream.ended` (most streams end, a few stay open). Every event is published with a
fixed `Nats-Msg-Id` and retried with the same id until JetStream acknowledges it, so
the model below is exactly what JetStream accepted. `verify` then compares the KV
records with the model applied in order: each acknowledged event must be applied
exactly once in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import msgspec
import nats.errors
from nats.js.errors import APIError

from shared import names
from shared.bus import Bus
from shared.kv import KvView
from shared.schemas import (
    EngineRecord,
    SelectReply,
    SelectRequest,
    StreamEnded,
    StreamRecord,
    StreamStarted,
    decode_engine,
    decode_stream,
    decoder,
    encode,
    utcnow,
)

decode_select = decoder(SelectReply)
NATS_ERRORS = (nats.errors.Error, APIError, OSError, asyncio.TimeoutError)
T = TypeVar("T")


@dataclass
class Reply:
    """One successful selection as the client saw it."""

    engine: EngineRecord
    reservation_id: str
    expires_at: datetime
    sent: float  # monotonic
    received: float
    received_at: datetime  # wall clock, for comparing with the record's expiry


@dataclass
class Outage:
    """A span during which selections failed."""

    start: float
    end: float | None = None


@dataclass
class LoadStats:
    selections_ok: int = 0
    selections_failed: int = 0
    no_capacity: int = 0
    errors: Counter = field(default_factory=Counter)
    events_acked: int = 0
    publish_retries: int = 0
    outages: list[Outage] = field(default_factory=list)
    last_ok: float = 0.0
    max_gap_s: float = 0.0  # longest time between two successful selections
    bad_replies: list[str] = field(default_factory=list)  # replies that break selection invariants


class StreamLoad:
    def __init__(
        self,
        bus: Bus,
        *,
        workers: int = 6,
        hold_s: tuple[float, float] = (0.0, 0.15),
        keep_open: float = 0.1,
        max_open: int = 20,
        contents: int = 30,
        max_streams_per_engine: int = 3,
        reservation_ttl_s: float = 5.0,
        select_timeout_s: float = 2.0,
        publish_timeout_s: float = 2.0,
        pause_s: float = 0.0,
        start_delay_s: Callable[[], float] | None = None,
        on_reply: Callable[[Reply], None] | None = None,
    ) -> None:
        self.bus = bus
        self.workers = workers
        self.hold_s = hold_s
        self.keep_open = keep_open
        self.max_open = max_open
        self.contents = contents
        self.max_streams = max_streams_per_engine
        self.reservation_ttl_s = reservation_ttl_s
        self.select_timeout_s = select_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.pause_s = pause_s
        self.start_delay_s = start_delay_s
        self.on_reply = on_reply
        self.stats = LoadStats()
        self.started: dict[str, str] = {}  # stream_id → container_id, in acknowledged order
        self.ended: set[str] = set()
        self.open: set[str] = set()
        self.replies: list[Reply] = []
        self.stop = asyncio.Event()
        self.gate = asyncio.Event()  # workers start a new cycle only while it is set
        self.gate.set()
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------ running

    def start(self) -> None:
        self.stats.last_ok = time.monotonic()
        self._tasks = [asyncio.get_running_loop().create_task(self._worker(i)) for i in range(self.workers)]

    async def finish(self, timeout: float = 60.0) -> None:
        self.stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()
        assert not pending, f"{len(pending)} load workers did not finish within {timeout}s"

    async def _worker(self, index: int) -> None:
        rng = random.Random(index)
        while not self.stop.is_set():
            await self.gate.wait()
            reply = await self.select(rng)
            if reply is None:
                return
            stream_id = f"s-{uuid.uuid4().hex[:16]}"
            if self.start_delay_s is not None:
                await asyncio.sleep(self.start_delay_s())
            started = StreamStarted(
                stream_id=stream_id,
                container_id=reply.engine.container_id,
                content_key=self._content(rng),
                key_type="content_id",
                reservation_id=reply.reservation_id,
                started_at=utcnow(),
            )
            await self.publish(names.STREAM_STARTED, started, f"{stream_id}.started")
            self.started[stream_id] = reply.engine.container_id
            self.open.add(stream_id)
            await asyncio.sleep(rng.uniform(*self.hold_s))
            if rng.random() < self.keep_open and len(self.open) < self.max_open:
                continue
            ended = StreamEnded(
                stream_id=stream_id, container_id=reply.engine.container_id, reason="chaos", ended_at=utcnow()
            )
            await self.publish(names.STREAM_ENDED, ended, f"{stream_id}.ended")
            self.ended.add(stream_id)
            self.open.discard(stream_id)
            if self.pause_s:
                await asyncio.sleep(self.pause_s)

    def _content(self, rng: random.Random) -> str:
        return f"content-{rng.randrange(self.contents)}"

    async def select(self, rng: random.Random | None = None) -> Reply | None:
        """A selection, retried until one succeeds; None if the load was stopped meanwhile."""
        rng = rng or random.Random()
        request = encode(SelectRequest(content_key=self._content(rng), key_type="content_id", client="chaos"))
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                msg = await self.bus.nc.request(names.ENGINE_SELECT, request, timeout=self.select_timeout_s)
            except NATS_ERRORS as exc:
                self._failed(sent, type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            code = (msg.headers or {}).get("Nats-Service-Error-Code")
            if code == "503" and b"no_capacity" in msg.data:
                self.stats.no_capacity += 1
                await asyncio.sleep(0.1)
                continue
            if code:
                self._failed(sent, f"{code}: {msg.data[:200]!r}")
                await asyncio.sleep(0.1)
                continue
            return self._succeeded(sent, decode_select(msg.data))
        return None

    def _failed(self, sent: float, kind: str) -> None:
        self.stats.selections_failed += 1
        self.stats.errors[kind] += 1
        outages = self.stats.outages
        if not outages or outages[-1].end is not None:
            outages.append(Outage(start=sent))

    def _succeeded(self, sent: float, body: SelectReply) -> Reply:
        now = time.monotonic()
        stats = self.stats
        stats.selections_ok += 1
        stats.max_gap_s = max(stats.max_gap_s, now - stats.last_ok)
        stats.last_ok = now
        if stats.outages and stats.outages[-1].end is None:
            stats.outages[-1].end = now
        reply = Reply(body.engine, body.reservation_id, body.reservation_expires_at, sent, now, utcnow())
        problems = selection_problems(reply, self.max_streams, self.reservation_ttl_s)
        if problems:
            stats.bad_replies.append(f"{body.engine.container_id}: {problems}")
        self.replies.append(reply)
        if self.on_reply is not None:
            self.on_reply(reply)
        return reply

    async def publish(self, subject: str, event: msgspec.Struct, msg_id: str) -> None:
        """Until JetStream acknowledges it; retries reuse the id, so it is stored once."""
        data = encode(event)
        for _attempt in range(600):
            try:
                await self.bus.js.publish(
                    subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=self.publish_timeout_s
                )
            except NATS_ERRORS:
                self.stats.publish_retries += 1
                await asyncio.sleep(0.1)
                continue
            self.stats.events_acked += 1
            return
        raise AssertionError(f"{subject} {msg_id} was never acknowledged")

    # ------------------------------------------------------------ checking

    async def verify(self, bus: Bus, timeout: float = 90.0) -> dict:
        """Compare KV with the model once the consumer is drained; the figures of the comparison."""
        await wait_drained(bus, timeout)
        engines, streams = await snapshot(bus)
        lost: list[str] = []
        for stream_id, container_id in self.started.items():
            record = streams.get(stream_id)
            want = "ended" if stream_id in self.ended else "started"
            if record is None or record.status != want or record.container_id != container_id:
                lost.append(f"{stream_id}: want {want} on {container_id}, KV has {record}")
        duplicated = []
        for key, engine in engines.items():
            counts = Counter(engine.streams)
            duplicated += [f"{key}: {s} ×{n}" for s, n in counts.items() if n > 1]
            want = {s for s, c in self.started.items() if c == key and s not in self.ended}
            if set(engine.streams) != want:
                lost.append(f"engine {key}: streams {sorted(engine.streams)} != model {sorted(want)}")
        strays = [s for s in streams if s not in self.started]
        # Retries reuse the Nats-Msg-Id: JetStream must have stored each stream event once.
        info = await settled(lambda: bus.js.stream_info(names.EVENTS_STREAM, subjects_filter="stream.>"))
        stored = sum((info.state.subjects or {}).values())
        # Applied, counted from KV alone: a start shows as a record with its `started_at` on its
        # engine, an end as an ended record — not derived from the acked count.
        starts_applied = sum(
            1
            for s, c in self.started.items()
            if (r := streams.get(s)) is not None and r.started_at is not None and r.container_id == c
        )
        ends_applied = sum(1 for s in self.ended if (r := streams.get(s)) is not None and r.status == "ended")
        return {
            "stream_events_stored": stored,
            "stored_twice": stored - self.stats.events_acked,
            "events_acked": self.stats.events_acked,
            "streams_started": len(self.started),
            "streams_ended": len(self.ended),
            "events_applied": starts_applied + ends_applied,
            "events_lost": len(lost),
            "duplicates": len(duplicated),
            "stray_streams": len(strays),
            "lost_detail": lost[:10],
            "duplicate_detail": duplicated[:10],
        }

    def figures(self) -> dict:
        stats = self.stats
        outages = [round((o.end or time.monotonic()) - o.start, 2) for o in stats.outages]
        return {
            "selections_ok": stats.selections_ok,
            "selections_failed": stats.selections_failed,
            "selection_errors": dict(stats.errors),
            "no_capacity": stats.no_capacity,
            "publish_retries": stats.publish_retries,
            "selection_outages_s": outages,
            "max_selection_gap_s": round(stats.max_gap_s, 2),
            "bad_replies": len(stats.bad_replies),
        }


def assert_nothing_lost(result: dict) -> None:
    """Every acknowledged stream event applied once, as counted from KV, and KV equal to the model."""
    assert result["events_lost"] == 0, result["lost_detail"]
    assert result["events_applied"] == result["events_acked"], result
    assert result["duplicates"] == 0 and result["stray_streams"] == 0 and result["stored_twice"] == 0, result


def selection_problems(reply: Reply, max_streams: int, reservation_ttl_s: float) -> list[str]:
    """What is wrong with a reply on its face: the record the state-keeper wrote when it granted it."""
    engine = reply.engine
    problems = []
    if engine.health_status != "healthy":
        problems.append(f"health_status={engine.health_status}")
    if engine.state != "active" or engine.claim is not None:
        problems.append(f"state={engine.state} claim={engine.claim}")
    if reply.reservation_id not in engine.reservations:
        problems.append("reservation missing from the record")
    granted_at = reply.expires_at - timedelta(seconds=reservation_ttl_s)
    live = [rid for rid, expires in engine.reservations.items() if expires > granted_at]
    if len(engine.streams) + len(live) > max_streams:
        problems.append(f"load {len(engine.streams)}+{len(live)} > MAX_STREAMS_PER_ENGINE {max_streams}")
    return problems


# ---------------------------------------------------------------- KV and consumer helpers


async def wait_drained(bus: Bus, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            info = await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
            last = (info.num_pending, info.num_ack_pending, info.num_redelivered)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
        except NATS_ERRORS as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"consumer not drained after {timeout}s (pending, ack pending, redelivered: {last})")


async def settled(call: Callable[[], Awaitable[T]], retry_s: float = 45.0) -> T:
    """`call()`, tried again on NATS errors for `retry_s`: a JetStream API call times out while a
    cluster settles (a node just back, a leader being elected). The partition tier verifies right
    after a heal, and its load died on one such timeout making a watch."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return await call()
        except NATS_ERRORS:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.5)


async def snapshot(bus: Bus) -> tuple[dict[str, EngineRecord], dict[str, StreamRecord]]:
    """Every engine and stream record, read through a fresh watch (strict decode: a bad record raises)."""
    return await settled(lambda: _snapshot(bus))


async def _snapshot(bus: Bus) -> tuple[dict[str, EngineRecord], dict[str, StreamRecord]]:
    engines: KvView[EngineRecord] = KvView(bus.engines, decode_engine)
    streams: KvView[StreamRecord] = KvView(bus.streams, decode_stream)
    try:
        await engines.start(timeout=30)
        await streams.start(timeout=30)
        assert engines.undecodable == 0 and streams.undecodable == 0, "a KV record does not decode"
        return ({k: v.value for k, v in engines.items().items()}, {k: v.value for k, v in streams.items().items()})
    finally:
        for view in (engines, streams):
            with contextlib.suppress(*NATS_ERRORS):
                await view.stop()


async def raw_records(bus: Bus, bucket: str) -> dict[str, bytes]:
    """Raw values of one bucket, for strict decoding by the caller."""
    kv = bus.engines if bucket == names.ENGINES_BUCKET else bus.streams
    try:
        keys = await kv.keys()
    except Exception as exc:  # nats-py raises NoKeysError for an empty bucket
        if type(exc).__name__ == "NoKeysError":
            return {}
        raise
    found = {}
    for key in keys:
        try:
            entry = await kv.get(key)
        except Exception:
            continue
        if entry.value is not None:
            found[key] = entry.value
    return found


def record_invariants(
    engines: dict[str, EngineRecord], streams: dict[str, StreamRecord], now: datetime, max_streams: int | None = None
) -> list[str]:
    """Cross-record invariants that hold whatever happened: unique streams, state agrees with claim,
    every listed stream is a started stream of that engine, every started stream is listed."""
    problems = []
    owner: dict[str, str] = {}
    for key, engine in engines.items():
        if engine.container_id != key:
            problems.append(f"{key}: record names {engine.container_id}")
        if len(set(engine.streams)) != len(engine.streams):
            problems.append(f"{key}: duplicate streams {engine.streams}")
        expected_state = (
            "active" if engine.claim is None else ("cleaning" if engine.claim.purpose == "clean" else "draining")
        )
        if engine.state != expected_state and not (engine.claim and engine.claim.expires_at <= now):
            problems.append(f"{key}: state {engine.state} but claim {engine.claim}")
        for stream_id in engine.streams:
            if stream_id in owner:
                problems.append(f"stream {stream_id} on both {owner[stream_id]} and {key}")
            owner[stream_id] = key
            record = streams.get(stream_id)
            if record is None or record.status != "started" or record.container_id != key:
                problems.append(f"{key} lists {stream_id} but its record is {record}")
    for stream_id, record in streams.items():
        if record.stream_id != stream_id:
            problems.append(f"stream key {stream_id} holds {record.stream_id}")
        if record.status == "started" and owner.get(stream_id) != record.container_id:
            problems.append(f"started stream {stream_id} on {record.container_id} is not listed there")
    return problems
