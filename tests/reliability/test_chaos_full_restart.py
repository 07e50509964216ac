"""Scenario 7: the whole system is SIGKILLed mid-load — every service replica and nats-server —
and started again (same JetStream store; the local engines, in their own sessions, keep running).

State is recovered from JetStream/KV (every acknowledged event applied exactly once in
effect, open streams still open), the running engines are re-adopted (same ids, same
processes) and no duplicate engine is created.
"""

from __future__ import annotations

import asyncio
import time

from chaos_load import StreamLoad, assert_nothing_lost, record_invariants, snapshot
from chaos_stack import engine_records
from support import wait_until

from shared.schemas import utcnow

MIN_REPLICAS = 3
MAX_REPLICAS = 5
MAX_STREAMS = 5
SERVICES = {"state_keeper": 2, "prober": 1, "provisioner": 1, "reaper": 1, "janitor": 1, "gateway": 1}


async def test_whole_system_restart_mid_load_recovers_state_and_engines(stack, figures):
    stack.start_nats()
    stack.configure(
        MIN_REPLICAS=MIN_REPLICAS,
        MIN_FREE_REPLICAS=1,
        MAX_REPLICAS=MAX_REPLICAS,
        MAX_STREAMS_PER_ENGINE=MAX_STREAMS,
        ENGINE_GRACE_PERIOD_S=300,
        RESERVATION_TTL_S=5,
    )
    for service, count in SERVICES.items():
        stack.start(service, count)
    bus = await stack.client()
    await stack.ready(bus.nc, timeout=60)
    await wait_until(
        lambda: _healthy(bus, MIN_REPLICAS), timeout=60, interval=0.25, what=f"{MIN_REPLICAS} healthy engines"
    )

    load = StreamLoad(bus, workers=4, max_streams_per_engine=MAX_STREAMS, max_open=8, keep_open=0.2)
    load.start()
    await wait_until(lambda: load.stats.events_acked > 200, timeout=30, what="load under way")
    before_records = await engine_records(bus)
    before_processes = stack.local_engines()
    open_before = len(load.open)

    for proc in stack.all_services():
        if proc.alive():
            stack.kill(proc)
    stack.nats.kill()
    killed = time.monotonic()
    await asyncio.sleep(1.0)
    stack.nats.start()
    for service, count in SERVICES.items():
        stack.start(service, count)
    restarted = time.monotonic()
    ok_before = load.stats.selections_ok
    await stack.ready(bus.nc, timeout=60)
    await wait_until(lambda: load.stats.selections_ok > ok_before, timeout=60, what="a selection after the restart")
    first_selection_s = time.monotonic() - restarted
    acked = load.stats.events_acked
    await wait_until(lambda: load.stats.events_acked > acked + 200, timeout=60, what="load after the restart")
    await asyncio.sleep(3)  # a few sweeps of the restarted provisioner, reaper and janitor
    await load.finish()
    result = await load.verify(bus, timeout=120)
    engines, streams = await snapshot(bus)
    problems = record_invariants(engines, streams, utcnow())
    after_processes = stack.local_engines()

    figures.update(
        **result,
        **load.figures(),
        streams_open_at_kill=open_before,
        engines_before=sorted(before_records),
        engines_after=sorted(engines),
        engine_processes_kept=sorted(set(before_processes) & set(after_processes)),
        engine_processes_new=sorted(set(after_processes) - set(before_processes)),
        first_selection_after_restart_s=round(first_selection_s, 2),
        down_s=round(restarted - killed, 2),
    )
    assert not stack.crashed(), stack.crashed()
    assert_nothing_lost(result)
    assert not load.stats.bad_replies, load.stats.bad_replies[:5]
    assert not problems, problems[:10]
    # Re-adopted: the same engines, the same processes, each with one record; nothing duplicated.
    assert set(before_records) <= set(engines), (sorted(before_records), sorted(engines))
    assert before_processes.items() <= after_processes.items(), (before_processes, after_processes)
    assert set(after_processes) == set(engines), (sorted(after_processes), sorted(engines))
    assert len(engines) <= MAX_REPLICAS
    ports = [r.port for r in engines.values()]
    assert len(set(ports)) == len(ports), ports


async def _healthy(bus, count: int) -> bool:
    try:
        records = await engine_records(bus)
    except Exception:
        return False
    return sum(r.health_status == "healthy" for r in records.values()) >= count
