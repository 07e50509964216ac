"""Footprint: the gateway with a day of history and 1,000 engines stays under its memory target (issue 14).

A day of samples (8,640 at HISTORY_INTERVAL_S=10) is written straight into
ACE_HISTORY in seconds, 1,000 engines are registered as events, and every
engine gets a full ring of probe observations for its sparkline. The
gateway's resident memory (VmRSS) must stay under the footprint target the
other services are held to (tests/bench/footprint.py).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from support import wait_until

from services.gateway.events import PROBES_KEPT
from shared import names
from shared.schemas import EngineHealth, EngineRegistered, HistorySample, encode
from tests.bench.footprint import TARGET_MB
from tests.bench.harness import rss_mb

ENGINES = 1000
DAY = 8640
INTERVAL_S = 10.0
PER_STEP = 24  # samples in one 24h point (240 s): the range leaves the oldest partial step out


async def publish_all(js, messages: list[tuple[str, bytes]], window: int = 500) -> None:
    for start in range(0, len(messages), window):
        await asyncio.gather(*(js.publish(subject, data) for subject, data in messages[start : start + window]))


async def test_a_day_of_history_at_a_thousand_engines_fits_the_memory_target(make_stack):
    stack = await make_stack()
    js = stack.nc.jetstream()
    now_epoch = int(time.time() // INTERVAL_S)
    samples = [
        HistorySample(
            epoch=epoch,
            at=datetime.fromtimestamp(epoch * INTERVAL_S, UTC),
            interval_s=INTERVAL_S,
            healthy=ENGINES - n % 7,
            unhealthy=n % 7,
            active=ENGINES,
            streams=n % 300,
            channels=n % 40,
            peers=n % 900,
            speed_down_kib=n,
            selections_per_s=0.5,
            no_capacity_per_s=0.0,
            probes=ENGINES // 3,
            probe_p50_ms=3.5,
            probe_p99_ms=48.25,
            cache_cleaned_bytes=n * 1024,
        )
        for n, epoch in enumerate(range(now_epoch - DAY, now_epoch))
    ]
    started = time.monotonic()
    await publish_all(js, [(names.HISTORY_SAMPLE, encode(s)) for s in samples])
    registrations = [
        EngineRegistered(container_id=f"fp-{n}", host="127.0.0.1", port=1 + n, container_name=f"acestream-{n}")
        for n in range(ENGINES)
    ]
    await publish_all(js, [(names.ENGINE_REGISTERED, encode(r)) for r in registrations])
    written_s = time.monotonic() - started

    async def listed():
        return len((await stack.http.get("/engines")).json()) == ENGINES

    await wait_until(listed, timeout=120, interval=1, what=f"{ENGINES} engines in the gateway")
    # Probe observations reach the gateway on core NATS; the state-keeper is stopped first so that
    # 60,000 reports measure the gateway, not a busy state-keeper.
    stack.state_keeper.stop()
    for round_ in range(PROBES_KEPT):
        checked = datetime.now(UTC)
        for n in range(ENGINES):
            observation = EngineHealth(container_id=f"fp-{n}", ok=True, checked_at=checked, latency_ms=2.0 + round_)
            await stack.nc.publish(names.ENGINE_HEALTH, encode(observation))
        await stack.nc.flush()

    async def loaded():
        day = (await stack.http.get("/api/history", params={"range": "24h"})).json()
        probes = (await stack.http.get(f"/api/engines/fp-{ENGINES - 1}/probes")).json()
        full = len(probes) == PROBES_KEPT and probes[-1]["latency_ms"] == 2.0 + PROBES_KEPT - 1
        return day if full and sum(p["samples"] for p in day["points"]) >= DAY - PER_STEP else None

    day = await wait_until(loaded, timeout=120, interval=1, what="a day of history and full probe rings")
    assert day["step_s"] == 240.0 and len(day["points"]) <= 360
    began = time.monotonic()
    await stack.http.get("/api/history", params={"range": "24h"})
    answer_ms = (time.monotonic() - began) * 1000
    rss = rss_mb(stack.gateway.pid)
    print(
        f"gateway VmRSS {rss:.1f} MB with {DAY} samples, {ENGINES} engines x {PROBES_KEPT} probes; "
        f"written in {written_s:.1f}s; GET /api/history?range=24h in {answer_ms:.0f} ms"
    )
    assert rss is not None and rss < TARGET_MB, f"gateway uses {rss:.1f} MB, target < {TARGET_MB:g} MB"
