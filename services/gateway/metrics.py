"""`GET /metrics`: the fleet as Prometheus metrics, from what the gateway can see without state.

- engines by health and state, active streams, cache bytes cleaned: from the KV views;
- selections, applied and rejected events: summed over every state-keeper
  replica's counters in micro's `$SRV.STATS` (each replica's data counted once);
- probe latency: a histogram of the `engine.health` observations this gateway
  has seen since it started (records keep no latency, so KV alone can't give it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from services.gateway.errors import REFUSED
from services.gateway.fleet import Fleet
from services.gateway.live import LiveFeed
from services.gateway.protocol import HeadDeadline
from shared import names
from shared.schemas import EngineHealth, EngineRecord, decoder, utcnow

log = logging.getLogger(__name__)

STATS_WINDOW_S = 0.25  # how long to collect $SRV.STATS replies
STATS_CACHE_S = 1.0  # scrapes closer together than this share one gather
STATS_GROUPS = ("applied", "rejected", "selections", "bad_requests", "conflicts")
SELECTION_RESULTS = ("selected", "shared", "no_capacity")
HEALTH_VALUES = ("healthy", "unhealthy", "unknown")
STATE_VALUES = ("active", "draining", "cleaning")
PROBE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_decode_health = decoder(EngineHealth)
Totals = dict[str, Counter[str]]


def sum_stats(replies: Iterable[bytes]) -> tuple[int, Totals]:
    """(replicas, summed counters) from `$SRV.STATS` replies; each replica's data is taken once.

    Every endpoint of a replica carries the same data dict (the service's
    counters), so summing endpoints would multiply it.
    """
    totals: Totals = {group: Counter() for group in STATS_GROUPS}
    seen: set[str] = set()
    for raw in replies:
        try:
            reply = json.loads(raw)
            replica = str(reply["id"])
            data = next(e["data"] for e in reply.get("endpoints") or [] if isinstance(e.get("data"), dict))
        except (ValueError, KeyError, TypeError, StopIteration):
            continue
        if replica in seen:
            continue
        seen.add(replica)
        for group in STATS_GROUPS:
            counts = data.get(group)
            if isinstance(counts, dict):
                totals[group].update({str(k): v for k, v in counts.items() if isinstance(v, int)})
    return len(seen), totals


class Metrics:
    def __init__(self, fleet: Fleet, live: LiveFeed) -> None:
        self.fleet = fleet
        # Others that want every probe observation (history's latency percentiles, engine detail).
        self.observers: list[Callable[[EngineHealth], None]] = []
        self.registry = CollectorRegistry()
        self.probe_latency = Histogram(
            "aceorch_probe_latency_seconds",
            "Latency of engine health probes seen on engine.health since this gateway started",
            buckets=PROBE_BUCKETS_S,
            registry=self.registry,
        )
        self.probes = PromCounter(
            "aceorch_probes", "Health probes seen on engine.health, by result", ["result"], registry=self.registry
        )
        self.registry.register(_FleetCollector(self, live))
        self.replicas = 0
        self.totals: Totals = {group: Counter() for group in STATS_GROUPS}
        self._gathered_at = 0.0
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        # A core subscription survives reconnects by itself (nats-py re-subscribes).
        self._sub = await self.fleet.bus.nc.subscribe(names.ENGINE_HEALTH, cb=self._on_health)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def _on_health(self, msg: Msg) -> None:
        try:
            observation = _decode_health(msg.data)
        except msgspec.DecodeError:
            return  # the state-keeper counts and logs malformed events
        self.probes.labels("ok" if observation.ok else "failed").inc()
        if observation.latency_ms is not None:
            self.probe_latency.observe(observation.latency_ms / 1000)
        for observer in self.observers:
            observer(observation)

    async def selection_totals(self) -> Counter[str] | None:
        """engine.select results summed over the state-keepers; None when none answered."""
        await self._refresh_stats()
        return Counter(self.totals["selections"]) if self.replicas else None

    async def render(self) -> bytes:
        await self._refresh_stats()
        return generate_latest(self.registry)

    async def _refresh_stats(self) -> None:
        async with self._lock:
            if time.monotonic() - self._gathered_at < STATS_CACHE_S:
                return
            try:
                self.replicas, self.totals = sum_stats(await self._gather())
            except (nats.errors.Error, OSError) as exc:
                log.debug("gathering $SRV.STATS failed: %s", exc)
                self.replicas, self.totals = 0, {group: Counter() for group in STATS_GROUPS}
            self._gathered_at = time.monotonic()

    async def _gather(self) -> list[bytes]:
        nc = self.fleet.bus.nc
        if not nc.is_connected:
            return []
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        replies: list[bytes] = []
        try:
            await nc.publish(f"$SRV.STATS.{names.SERVICE_NAME}", b"", reply=inbox)
            deadline = time.monotonic() + STATS_WINDOW_S
            while (left := deadline - time.monotonic()) > 0:
                try:
                    replies.append((await sub.next_msg(timeout=left)).data)
                except nats.errors.TimeoutError:
                    break
        finally:
            await sub.unsubscribe()
        return replies


class _FleetCollector:
    """Computed at scrape time from the views and the last gathered state-keeper counters."""

    def __init__(self, metrics: Metrics, live: LiveFeed) -> None:
        self.metrics = metrics
        self.live = live

    def collect(self) -> Iterator[Metric]:
        engines = self.metrics.fleet.engine_list(utcnow())
        yield from _engine_families(engines)
        yield GaugeMetricFamily(
            "aceorch_streams_active", "Streams currently started", value=self.metrics.fleet.active_streams()
        )
        yield from _state_keeper_families(self.metrics.replicas, self.metrics.totals)
        yield from _live_families(self.live)


def _live_families(live: LiveFeed) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "aceorch_gateway_live_clients", "Open /api/live connections on this gateway", value=live.clients
    )
    yield CounterMetricFamily(
        "aceorch_gateway_live_changes",
        "Engine and stream changes this gateway's /api/live has seen",
        value=live.changes,
    )
    yield CounterMetricFamily(
        "aceorch_gateway_live_frames_encoded",
        "Change frames encoded for /api/live: once per change sent, however many clients receive it",
        value=live.frames_encoded,
    )
    yield CounterMetricFamily(
        "aceorch_gateway_live_refused", "/api/live clients refused at LIVE_MAX_CLIENTS", value=live.refused
    )
    refused = CounterMetricFamily(
        "aceorch_gateway_browser_refused",
        "Requests refused as a web page's: foreign Host (421), cross-origin write (403), non-JSON write (415)",
        labels=["status"],
    )
    for status in (403, 415, 421):
        refused.add_metric([str(status)], REFUSED[status])
    yield refused
    yield CounterMetricFamily(
        "aceorch_gateway_slow_heads_cut",
        "Connections closed for not sending a complete request head within GATEWAY_HEADER_TIMEOUT_S",
        value=HeadDeadline.cut_off,
    )


def _engine_families(engines: Iterable[EngineRecord]) -> Iterator[Metric]:
    by_status: Counter[tuple[str, str]] = Counter((r.health_status, r.state) for r in engines)
    family = GaugeMetricFamily("aceorch_engines", "Engines by health and state", labels=["health_status", "state"])
    for health in HEALTH_VALUES:
        for state in STATE_VALUES:
            family.add_metric([health, state], by_status[(health, state)])
    yield family
    cleaned = GaugeMetricFamily(
        "aceorch_cache_cleaned_bytes",
        "Cache bytes removed by the last clean of every current engine (measured before the clean)",
        value=sum(r.cache_size_bytes or 0 for r in engines),
    )
    yield cleaned
    streams = GaugeMetricFamily("aceorch_engine_streams", "Streams on each engine", labels=["container_id"])
    healthy = GaugeMetricFamily(
        "aceorch_engine_healthy", "1 healthy, 0 unhealthy, -1 not probed yet", labels=["container_id"]
    )
    last_clean = GaugeMetricFamily(
        "aceorch_engine_cache_cleaned_bytes", "Cache bytes removed by each engine's last clean", labels=["container_id"]
    )
    for r in engines:
        streams.add_metric([r.container_id], len(r.streams))
        healthy.add_metric([r.container_id], {"healthy": 1, "unhealthy": 0}.get(r.health_status, -1))
        if r.cache_size_bytes is not None:
            last_clean.add_metric([r.container_id], r.cache_size_bytes)
    yield from (streams, healthy, last_clean)


def _state_keeper_families(replicas: int, totals: Totals) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "aceorch_state_keeper_replicas", "State-keeper replicas that answered $SRV.STATS", value=replicas
    )
    specs = (
        ("selections", "aceorch_selections", "engine.select replies over all state-keepers, by result", "result"),
        ("applied", "aceorch_events_applied", "Events applied over all state-keepers, by subject", "subject"),
        ("rejected", "aceorch_events_rejected", "Events rejected over all state-keepers, by reason", "reason"),
        ("bad_requests", "aceorch_requests_rejected", "Bad requests over all state-keepers, by endpoint", "endpoint"),
        (
            "conflicts",
            "aceorch_cas_conflicts",
            "Compare-and-sets lost to a concurrent writer over all state-keepers (retried), by record",
            "record",
        ),
    )
    for group, name, help_text, label in specs:
        family = CounterMetricFamily(name, help_text, labels=[label])
        counts = Counter(totals.get(group, {}))
        if group == "selections":
            counts.update({result: 0 for result in SELECTION_RESULTS})
        for key in sorted(counts):
            family.add_metric([key], counts[key])
        yield family
