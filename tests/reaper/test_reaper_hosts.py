"""A reaper acts on its own host's engines only, though the floors it keeps are the fleet's.

All engines run in one local runtime here (one machine), so only the records'
`host_id` tells the hosts apart: the runtime would let any reaper remove them.
"""

from __future__ import annotations

from support import wait_until

from shared import names


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
