"""A reaper acts on its own host's engines only, though the floors it keeps are the fleet's.

All engines run in one local runtime here (one machine), so only the records'
`host_id` tells the hosts apart: the runtime would let any reaper remove them.
"""

from __future__ import annotations

import asyncio

import pytest
from support import wait_until

from services.reaper.reaper import Reaper
from shared import names
from shared.bus import connect
from shared.config import load_config
from shared.runtime import make_runtime


async def test_a_reaper_never_removes_another_hosts_engine(pools):
    pool = await pools(MIN_REPLICAS=2, MIN_FREE_REPLICAS=1, ENGINE_GRACE_PERIOD_S=1)
    # Registered first: the longest idle, so the first candidates if host didn't matter.
    elsewhere = [s.container_id for s in await pool.create_engines(2, host_id="host-b")]
    await pool.wait_healthy(2)
    here = [s.container_id for s in await pool.create_engines(3, host_id="host-a")]
    await pool.wait_healthy(5)
    reaper = pool.service("reaper", HOST_ID="host-a")

    await wait_until(lambda: len(pool.recorder.of(names.ENGINE_REMOVED)) >= 3, timeout=30, what="3 removals")
    await pool.sweeps_done("reaper-sweep", 2)  # more sweeps: host-b's engines are not host-a's to take
    removed = [e["container_id"] for e in pool.recorder.of(names.ENGINE_REMOVED)]
    assert sorted(removed) == sorted(here)
    assert sorted(e["container_id"] for e in await pool.engines()) == sorted(elsewhere)
    assert sorted(s.container_id for s in await pool.runtime.list_managed()) == sorted(elsewhere)
    assert reaper.alive()


@pytest.mark.parametrize(
    "floors", [{"MIN_REPLICAS": 3, "MIN_FREE_REPLICAS": 0}, {"MIN_REPLICAS": 0, "MIN_FREE_REPLICAS": 3}]
)
async def test_two_hosts_reapers_sweeping_at_once_keep_the_fleet_floors(pools, floors):
    """Four idle engines, two per host, a floor of three: each host's reaper sees a surplus of one and
    would take it from its own host.

    As processes, their sweeps start up to 50 ms apart (the epoch jitter) and a claim shows in the
    other's records within milliseconds, so they rarely overlap. Here the two sweeps run in the test's
    event loop, each picking its victim before the other's claim can show: only the re-check of the
    floors under the claim, on the state-keeper's fresh records, keeps them from taking two.
    """
    pool = await pools(ENGINE_GRACE_PERIOD_S=0, **floors)
    for host in ("host-a", "host-b"):
        await pool.create_engines(2, host_id=host)
    await pool.wait_healthy(4)
    stop = asyncio.Event()
    reapers: dict[str, Reaper] = {}
    try:
        for host in ("host-a", "host-b"):
            config = load_config(pool.env(HOST_ID=host))
            reapers[host] = Reaper(config, await connect(config, f"test-reaper-{host}"), make_runtime(config))
            await reapers[host].view.start()
        await wait_until(lambda: all(len(r.view.values()) == 4 for r in reapers.values()), what="both views")

        await asyncio.gather(*(reaper.sweep(stop) for reaper in reapers.values()))
        # At most one went (whichever re-checked after the other had let go of its claim).
        assert len(await pool.runtime.list_managed()) >= 3
        engines = await wait_until(lambda: settled(pool), what="no claim left, the removed engine's record gone")
        assert len(engines) == len(await pool.runtime.list_managed())
        await wait_until(lambda: all(views_show(r, engines) for r in reapers.values()), what="views settled")

        # The surplus is still there for a reaper sweeping alone, and only it.
        for reaper in reapers.values():
            await reaper.sweep(stop)
        await wait_until(lambda: len(pool.recorder.of(names.ENGINE_REMOVED)) >= 1, what="one removal")
        assert len(await pool.runtime.list_managed()) == 3
        await wait_until(lambda: has_engines(pool, 3), what="3 records")
    finally:
        for reaper in reapers.values():
            await reaper.view.stop()
            await reaper.bus.close()
            await reaper.runtime.close()


def views_show(reaper: Reaper, engines: list[dict]) -> bool:
    records = reaper.view.values()
    return {r.container_id for r in records} == {e["container_id"] for e in engines} and not any(
        r.claim for r in records
    )


async def has_engines(pool, count: int) -> bool:
    return len(await pool.engines()) == count


async def settled(pool) -> list[dict] | None:
    engines = await pool.engines()
    return engines if all(e["claim"] is None for e in engines) else None
