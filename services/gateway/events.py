"""What happened, for `GET /api/events`, the dashboard's events section and engine detail.

Three sources, each said in words by shared/policy/narrate.py:
- ACE_EVENTS (registrations, removals, cleans, stream starts and ends), replayed
  for the last EVENTS_REPLAY_S at start and followed live, both by batched direct
  gets (shared/stream_read.py: no consumer, so the gateway needs no consumer grant
  on ACE_EVENTS) — not the health observations: thousands a minute, mostly "still fine";
- health flips, from the engine records' changes (the state-keeper decides a
  flip, the gateway sees the record change); at start, each record's current
  verdict is listed at its `health_since`, so a restart keeps the last flip;
- `engine.demand` notices (core NATS), while this gateway runs.

Also each engine's recent probe latencies (from engine.health), for its sparkline.
The newest EVENTS_KEPT events and PROBES_KEPT probes per engine are kept.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
import nats.errors
from nats.aio.msg import Msg

from services.gateway.fleet import Fleet
from services.gateway.metrics import Metrics
from shared import names
from shared.policy.narrate import demand, describe_event, health_flip
from shared.schemas import (
    EVENT_DECODERS,
    EngineDemand,
    EngineHealth,
    EngineRecord,
    FleetEvent,
    Probe,
    decoder,
    utcnow,
)
from shared.stream_read import Stored, StreamFollower

log = logging.getLogger(__name__)

EVENTS_KEPT = 2000
PROBES_KEPT = 60
EVENTS_REPLAY_S = 6 * 3600.0
SHOWN_SUBJECTS = [s for s in names.EVENT_SUBJECTS if s != names.ENGINE_HEALTH]
_decode_demand = decoder(EngineDemand)


class ProbeRing:
    """One engine's last PROBES_KEPT probes in flat arrays: ~1 KB an engine where a deque of
    objects took ~7 KB (1,000 engines: 1 MB instead of 7, measured with tracemalloc)."""

    __slots__ = ("_at", "_latency", "_ok", "_next", "_count")

    def __init__(self, size: int = PROBES_KEPT) -> None:
        self._at = array("d", bytes(8 * size))
        self._latency = array("d", bytes(8 * size))
        self._ok = bytearray(size)
        self._next = 0
        self._count = 0

    def add(self, at: datetime, latency_ms: float | None, ok: bool) -> None:
        i = self._next
        self._at[i] = at.timestamp()
        self._latency[i] = math.nan if latency_ms is None else latency_ms
        self._ok[i] = ok
        self._next = (i + 1) % len(self._ok)
        self._count = min(self._count + 1, len(self._ok))

    def probes(self) -> list[Probe]:
        """Oldest first."""
        size = len(self._ok)
        order = [(self._next - self._count + k) % size for k in range(self._count)]
        return [
            Probe(
                at=datetime.fromtimestamp(self._at[i], UTC),
                latency_ms=None if math.isnan(self._latency[i]) else self._latency[i],
                ok=bool(self._ok[i]),
            )
            for i in order
        ]


class EventLog:
    def __init__(self, fleet: Fleet, metrics: Metrics, health_timeout_s: float) -> None:
        self.fleet = fleet
        self.health_timeout_s = health_timeout_s
        self.events: deque[FleetEvent] = deque(maxlen=EVENTS_KEPT)
        self.probes: dict[str, ProbeRing] = {}
        self.listeners: list[Callable[[FleetEvent], None]] = []
        self._ids: set[str] = set()
        self._health: dict[str, str] = {}  # container_id → the health status last seen in its record
        self._names: dict[str, str] = {}  # container_id → name, of the engines listed now
        # ... and of the last EVENTS_KEPT removed: their events are read up to a poll after the record went.
        self._gone: dict[str, str] = {}
        self._demand_sub: object | None = None
        self._follower = StreamFollower(fleet.bus.nc, names.EVENTS_STREAM, SHOWN_SUBJECTS, self._on_event)
        metrics.observers.append(self._observe)
        fleet.engines.listeners.append(self._on_engine)

    # ------------------------------------------------------------ reading

    def newest(self, limit: int, container_id: str | None = None) -> list[FleetEvent]:
        chosen = (e for e in self.events if container_id is None or e.container_id == container_id)
        return sorted(chosen, key=lambda e: e.at, reverse=True)[:limit]

    def probes_of(self, container_id: str) -> list[Probe]:
        ring = self.probes.get(container_id)
        return ring.probes() if ring is not None else []

    # ------------------------------------------------------------ following

    async def start(self) -> None:
        for key, item in self.fleet.engines.items().items():
            self._on_engine(key, item.value)
        self._follower.since = utcnow() - timedelta(seconds=EVENTS_REPLAY_S)
        self._follower.start()
        self._demand_sub = await self.fleet.bus.nc.subscribe(names.ENGINE_DEMAND, cb=self._on_demand)

    async def stop(self) -> None:
        await self._follower.stop()
        if self._demand_sub is not None:
            try:
                await self._demand_sub.unsubscribe()  # type: ignore[attr-defined]
            except nats.errors.Error:
                pass

    def _on_event(self, stored: Stored) -> None:
        decode = EVENT_DECODERS.get(stored.subject)
        if decode is None:
            return
        try:
            event = decode(stored.data)
        except msgspec.DecodeError:
            return  # the state-keeper counts and logs malformed events
        container_id = getattr(event, "container_id", None)
        known = self._names.get(container_id) or self._gone.get(container_id) if container_id else None
        name = known or getattr(event, "container_name", None)
        described = describe_event(stored.subject, event, stored.at, name, f"{stored.subject}.{stored.seq}")
        if described is not None:
            self.add(described)

    async def _on_demand(self, msg: Msg) -> None:
        try:
            notice = _decode_demand(msg.data)
        except msgspec.DecodeError:
            return
        now = utcnow()
        self.add(demand(notice, now, f"engine.demand.{now.timestamp()}"))

    def _on_engine(self, key: str, record: EngineRecord | None) -> None:
        if record is None:
            self._health.pop(key, None)
            name = self._names.pop(key, None)
            if name is not None:
                self._gone[key] = name
                if len(self._gone) > EVENTS_KEPT:
                    del self._gone[next(iter(self._gone))]
            self.probes.pop(key, None)
            return
        self._names[key] = record.container_name
        self._gone.pop(key, None)
        before = self._health.get(key)
        self._health[key] = record.health_status
        if before == record.health_status or (before is None and record.health_status == "unknown"):
            return
        self.add(health_flip(record, record.health_since or utcnow(), self.health_timeout_s))

    def _observe(self, observation: EngineHealth) -> None:
        ring = self.probes.get(observation.container_id)
        if ring is None:
            if self.fleet.engines.get(observation.container_id) is None:
                return  # not (or no longer) an engine we list: keep nothing for it
            ring = self.probes[observation.container_id] = ProbeRing()
        ring.add(observation.checked_at, observation.latency_ms, observation.ok)

    def add(self, event: FleetEvent) -> None:
        if event.id in self._ids:
            return
        if len(self.events) == self.events.maxlen:
            self._ids.discard(self.events[0].id)
        self.events.append(event)
        self._ids.add(event.id)
        for listener in self.listeners:
            listener(event)
