"""Scenario 1: nats-server is SIGKILLed under load and restarted on the same store.

Every service reconnects by itself; every event JetStream acknowledged is applied
exactly once in effect (KV equals the sequential model); KV watchers resume — an
engine registered after the restart is probed by the prober and appears on the
gateway's /api/live feed, which stayed open across the outage.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from chaos_load import StreamLoad, assert_nothing_lost, record_invariants, snapshot
from chaos_stack import INTERVAL_S, LiveFeed, engine_records, register, wait_healthy
from support import wait_until

from shared.config import default_host_id
from shared.lease import epoch_of
from shared.policy.hosts import key_token
from shared.schemas import utcnow

MAX_STREAMS = 20
OUTAGE_S = 2.0
# Periodic jobs (per-epoch markers in ace_leases) and their intervals; the tidy-up runs every
# max(min(RESERVATION_TTL_S, CLAIM_TTL_S) / 2, 1) = 2.5 s here.
SWEEPS = {"provisioner": INTERVAL_S, "reaper-sweep": INTERVAL_S, "janitor-sweep": INTERVAL_S, "state-keeper-tidy": 2.5}
PER_HOST = {"provisioner", "reaper-sweep", "janitor-sweep"}  # epoch.<job>.<host>.<n>: each host sweeps its own
HOST = key_token(default_host_id())  # the stack's services run with the default HOST_ID


async def test_nats_sigkill_and_restart_under_load_loses_nothing(stack, figures):
    stack.start_nats()
    stack.configure(MAX_STREAMS_PER_ENGINE=MAX_STREAMS, MIN_REPLICAS=1, MIN_FREE_REPLICAS=0, ENGINE_GRACE_PERIOD_S=300)
    for service in ("state_keeper", "prober", "gateway", "provisioner", "reaper", "janitor"):
        stack.start(service, 2 if service == "state_keeper" else 1)
    ports = stack.acesim(6)
    bus = await stack.client()
    await stack.ready(bus.nc)
    engines = [await register(bus, port) for port in ports[:5]]
    await wait_healthy(bus, engines)
    feed = LiveFeed(stack.gateway_url())
    await feed.start()

    load = StreamLoad(bus, workers=6, max_streams_per_engine=MAX_STREAMS, max_open=30)
    load.start()
    await wait_until(lambda: load.stats.events_acked > 300, timeout=30, what="load under way")
    acked_at_kill = load.stats.events_acked
    stack.nats.kill()
    await asyncio.sleep(OUTAGE_S)
    stack.nats.start()
    back, back_wall = time.monotonic(), utcnow()

    ok_before = load.stats.selections_ok
    await wait_until(lambda: load.stats.selections_ok > ok_before, timeout=30, what="a selection after the restart")
    keeper_s = time.monotonic() - back
    await wait_until(lambda: _gateway_up(stack.gateway_url()), timeout=30, what="gateway /healthz 200")
    gateway_s = time.monotonic() - back
    await wait_until(lambda: _probed_since(bus, engines, back_wall), timeout=30, what="a probe after the restart")
    prober_s = time.monotonic() - back
    sweeps_s = {}
    for job, interval in SWEEPS.items():
        await wait_until(
            lambda: _swept_since(bus, job, interval, back_wall), timeout=30, what=f"{job} after the restart"
        )
        sweeps_s[job] = round(time.monotonic() - back, 2)

    newcomer = await register(bus, ports[5])
    registered = time.monotonic()
    await wait_healthy(bus, [newcomer], timeout=30)
    newcomer_healthy_s = time.monotonic() - registered
    await wait_until(
        lambda: feed.engine_seen(newcomer, registered, "healthy"),
        timeout=30,
        what="the newcomer on /api/live as healthy",
    )
    newcomer_live_s = feed.engine_seen(newcomer, registered, "healthy") - registered

    await wait_until(lambda: load.stats.events_acked > 2 * acked_at_kill, timeout=60, what="load after the restart")
    await load.finish()
    result = await load.verify(bus)
    engine_view, stream_view = await snapshot(bus)
    problems = record_invariants(engine_view, stream_view, utcnow())
    await feed.close()

    figures.update(
        outage_s=OUTAGE_S,
        events_acked_before_kill=acked_at_kill,
        **result,
        **load.figures(),
        reconnect_s={
            "state_keeper_selection": round(keeper_s, 2),
            "gateway_healthz": round(gateway_s, 2),
            "prober_first_probe": round(prober_s, 2),
            **{f"{job}_sweep": v for job, v in sweeps_s.items()},
        },
        newcomer_probed_healthy_s=round(newcomer_healthy_s, 2),
        newcomer_on_live_feed_s=round(newcomer_live_s, 2),
        live_feed_error=repr(feed.error) if feed.error else None,
    )
    assert not stack.crashed(), stack.crashed()
    assert_nothing_lost(result)
    assert not load.stats.bad_replies, load.stats.bad_replies[:5]
    assert not problems, problems[:10]
    assert feed.error is None, f"the live feed broke across the restart: {feed.error!r}"
    assert newcomer in await engine_records(bus)


def _gateway_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _probed_since(bus, engines, since) -> bool:
    try:
        records = await engine_records(bus)
    except Exception:
        return False
    return any(r.last_health_check and r.last_health_check > since for cid, r in records.items() if cid in engines)


async def _swept_since(bus, job: str, interval: float, since) -> bool:
    """The job's periodic sweep ran in an epoch that began after `since`: its service reconnected."""
    current = epoch_of(time.time(), interval)
    for epoch in (current, current - 1):
        if epoch * interval <= since.timestamp():
            continue
        try:
            await bus.leases.get(f"epoch.{job}.{epoch}" if job not in PER_HOST else f"epoch.{job}.{HOST}.{epoch}")
        except Exception:
            continue
        return True
    return False
