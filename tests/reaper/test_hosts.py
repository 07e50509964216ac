"""A reaper acts on its own host's engines only, though the floors it keeps are the fleet's.

All engines run in one local runtime here (one machine), so only the records'
`host_id` tells the hosts apart: the runtime would let any reaper remove them.
"""

from __future__ import annotations

import asyncio
import uuid

from support import wait_for_port, wait_until

from shared import names
from shared.schemas import EngineRegistered, encode


async def register_on(pool, host_id: str, count: int) -> list[str]:
    """Start `count` engines and register them as the provisioner of `host_id` would; their ids."""
    specs = list(await asyncio.gather(*(pool.runtime.create() for _ in range(count))))
    await asyncio.gather(*(asyncio.to_thread(wait_for_port, spec.port, 30) for spec in specs))
    for spec in specs:
        event = EngineRegistered(
            container_id=spec.container_id,
            host=spec.host,
            port=spec.port,
            container_name=spec.container_name,
            runtime=spec.runtime,
            labels=spec.labels,
            host_id=host_id,
        )
        await pool.js.publish(names.ENGINE_REGISTERED, encode(event), headers={"Nats-Msg-Id": uuid.uuid4().hex})
    return [spec.container_id for spec in specs]


async def test_a_reaper_never_removes_another_hosts_engine(pools):
    pool = await pools(MIN_REPLICAS=2, MIN_FREE_REPLICAS=1, ENGINE_GRACE_PERIOD_S=1)
    elsewhere = await register_on(pool, "host-b", 2)  # registered first: the longest idle, the first candidates
    await pool.wait_healthy(2)
    here = await register_on(pool, "host-a", 3)
    await pool.wait_healthy(5)
    reaper = pool.service("reaper", HOST_ID="host-a")

    await wait_until(lambda: len(pool.recorder.of(names.ENGINE_REMOVED)) >= 3, timeout=30, what="3 removals")
    await pool.sweeps_done("reaper-sweep", 2)  # more sweeps: host-b's engines are not host-a's to take
    removed = [e["container_id"] for e in pool.recorder.of(names.ENGINE_REMOVED)]
    assert sorted(removed) == sorted(here)
    assert sorted(e["container_id"] for e in await pool.engines()) == sorted(elsewhere)
    assert sorted(s.container_id for s in await pool.runtime.list_managed()) == sorted(elsewhere)
    assert reaper.alive()
