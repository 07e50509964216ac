"""Scenario 3: two replicas of every service; SIGKILL one of each under load.

The others carry on: no selection is lost beyond the ones in flight at the kill;
every acknowledged event is applied (the dead state-keeper's unacked messages are
redelivered); the prober's share of the killed replica is probed again, and every
periodic sweep (provisioner, reaper, janitor, state-keeper housekeeping) runs
again, within two intervals; the surviving gateway keeps answering; the pool has
no duplicate engine and never more than MAX_REPLICAS.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from itertools import pairwise

import httpx
import nats.errors
from chaos_load import StreamLoad, assert_nothing_lost, record_invariants, snapshot
from chaos_stack import INTERVAL_S, engine_records
from nats.js.kv import KV_DEL, KV_PURGE
from support import wait_until

from shared import names
from shared.schemas import EngineHealth, decoder, utcnow

MIN_REPLICAS = 4
MAX_REPLICAS = 6
MAX_STREAMS = 10
RESERVATION_TTL_S = 5.0
WORKERS = 6
# Sweeps and their intervals: AUTOSCALE_INTERVAL_S, and the state-keeper's tidy-up at
# max(min(RESERVATION_TTL_S, CLAIM_TTL_S) / 2, 1).
SWEEPS = {
    "provisioner": INTERVAL_S,
    "reaper-sweep": INTERVAL_S,
    "janitor-sweep": INTERVAL_S,
    "state-keeper-tidy": RESERVATION_TTL_S / 2,
}
ROLES = ("state_keeper", "prober", "provisioner", "reaper", "janitor", "gateway")

decode_health = decoder(EngineHealth)


async def test_losing_one_replica_of_each_service_under_load(stack, figures):
    stack.start_nats()
    stack.configure(
        MIN_REPLICAS=MIN_REPLICAS,
        MIN_FREE_REPLICAS=1,
        MAX_REPLICAS=MAX_REPLICAS,
        MAX_STREAMS_PER_ENGINE=MAX_STREAMS,
        RESERVATION_TTL_S=RESERVATION_TTL_S,
        ENGINE_GRACE_PERIOD_S=300,
        CLAIM_TTL_S=10,
    )
    for role in ROLES:
        stack.start(role, 2)
    bus = await stack.client()
    await stack.ready(bus.nc, timeout=60)
    await wait_until(
        lambda: _healthy_pool(bus, MIN_REPLICAS),
        timeout=60,
        interval=0.25,
        what=f"{MIN_REPLICAS} healthy engines from the provisioners",
    )

    probes: dict[str, list[float]] = defaultdict(list)

    async def on_health(msg) -> None:
        probes[decode_health(msg.data).container_id].append(time.monotonic())

    await bus.nc.subscribe(names.ENGINE_HEALTH, cb=on_health)
    epochs: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    watcher = await bus.leases.watch("epoch.>")
    follower = asyncio.create_task(_follow_epochs(watcher, epochs))
    engine_counts: list[int] = []
    sampler = asyncio.create_task(_sample_engines(stack, bus, engine_counts))

    load = StreamLoad(
        bus,
        workers=WORKERS,
        max_streams_per_engine=MAX_STREAMS,
        reservation_ttl_s=RESERVATION_TTL_S,
        max_open=15,
        select_timeout_s=2.0,
    )
    load.start()
    await asyncio.sleep(4 * INTERVAL_S)
    failed_before = load.stats.selections_failed
    victims = {role: stack.live(role)[0] for role in ROLES}
    killed_at = time.monotonic()
    for proc in victims.values():
        stack.kill(proc)
    # A victim may still claim an epoch between `killed_at` and its death, and our watch may hear that
    # claim late. A replica claims epoch n only once the clock reads n x interval, so an epoch that
    # begins after every victim is dead (kill waits for it) cannot have been claimed by one.
    dead_at = time.time()
    survivor_gateway = stack.gateway_url()
    await asyncio.sleep(6 * INTERVAL_S)
    gateway_ok = httpx.get(f"{survivor_gateway}/engines", timeout=5).status_code == 200
    await load.finish()
    # While the follower still drains it; bounded, as the watch is the test's own instrument (a full
    # watch queue has blocked `stop()` for good before, and a run then timed out with no hint).
    await asyncio.wait_for(watcher.stop(), timeout=15)
    follower.cancel()
    sampler.cancel()
    await asyncio.gather(follower, sampler, return_exceptions=True)

    result = await load.verify(bus, timeout=120)
    engines, streams = await snapshot(bus)
    problems = record_invariants(engines, streams, utcnow())
    live_engines = stack.local_engines()

    # Probing resumed for every engine: time from the kill to its first observation after it.
    reprobed = {
        cid: next((t - killed_at for t in times if t > killed_at), None)
        for cid, times in probes.items()
        if cid in engines
    }
    # Every sweep ran again: time from the kill to its first epoch claimed after it, and the holders since.
    swept = {}
    for job, interval in SWEEPS.items():
        after = [(t, e, holder) for t, e, holder in epochs[job] if t > killed_at]
        numbers = sorted({e for _, e, _ in after})
        swept[job] = {
            "first_after_s": round(after[0][0] - killed_at, 2) if after else None,
            "interval_s": interval,
            "epochs_after": len(numbers),
            "epochs_skipped": sum(b - a - 1 for a, b in pairwise(numbers)),
            "holders_after": sorted({holder for _, e, holder in after if e * interval > dead_at}),
        }
    killed_pids = {str(p.pid) for p in victims.values()}
    figures.update(
        **result,
        **load.figures(),
        selections_failed_at_kill=load.stats.selections_failed - failed_before,
        in_flight_bound=WORKERS,
        max_time_to_reprobe_s=round(max((v for v in reprobed.values() if v is not None), default=-1), 2),
        engines_never_reprobed=[cid for cid, v in reprobed.items() if v is None],
        sweeps=swept,
        surviving_gateway_ok=gateway_ok,
        engine_count_max=max(engine_counts, default=0),
        engine_records=len(engines),
        engine_processes=len(live_engines),
    )
    assert not stack.crashed(), stack.crashed()
    assert_nothing_lost(result)
    assert not load.stats.bad_replies, load.stats.bad_replies[:5]
    assert not problems, problems[:10]
    assert load.stats.selections_failed - failed_before <= WORKERS, load.figures()
    assert all(v is not None and v <= 2 * INTERVAL_S for v in reprobed.values()), reprobed
    for job, seen in swept.items():
        assert seen["first_after_s"] is not None and seen["first_after_s"] <= 2 * seen["interval_s"], (job, seen)
        assert seen["epochs_skipped"] == 0, (job, seen)
        assert not any(holder.endswith(f"-{pid}") for holder in seen["holders_after"] for pid in killed_pids), (
            job,
            seen,
        )
    assert gateway_ok
    assert max(engine_counts) <= MAX_REPLICAS, engine_counts
    assert set(live_engines) == set(engines), (sorted(live_engines), sorted(engines))


async def _healthy_pool(bus, count: int) -> bool:
    try:
        records = await engine_records(bus)
    except Exception:
        return False
    return sum(r.health_status == "healthy" for r in records.values()) >= count


async def _follow_epochs(watcher, epochs) -> None:
    while True:
        try:
            entry = await watcher.updates(timeout=5)
        except nats.errors.TimeoutError:
            # No epoch for 5 s: keep draining. Giving up here let the watcher's bounded queue
            # fill, and its callback then blocked `watcher.stop()` for good (a CI timeout).
            continue
        if entry is None or entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            continue
        # `epoch.<job>.<n>`, or `epoch.<job>.<host>.<n>` for the sweeps each host runs (one host here).
        _, job, rest = entry.key.split(".", 2)
        epochs[job].append((time.monotonic(), int(rest.rsplit(".", 1)[-1]), entry.value.decode()))


async def _sample_engines(stack, bus, counts: list[int]) -> None:
    while True:
        counts.append(max(len(stack.local_engines()), len(await engine_records(bus))))
        await asyncio.sleep(0.2)
