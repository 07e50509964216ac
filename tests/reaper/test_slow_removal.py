"""A runtime slow to answer must not let the reaper stop an engine its lapsed claim no longer covers.

The reaper runs in-process against the real state-keeper; its runtime is the
real local runtime whose `get` waits (as a docker call to a slow daemon does)
until the test has let the reap claim lapse and reserved the engine.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from support import wait_until

from services.reaper.reaper import Reaper
from shared import names
from shared.bus import connect
from shared.config import load_config


class SlowGet:
    """The pool's runtime, except that `get` answers only when the test says so."""

    def __init__(self, runtime) -> None:
        self._runtime = runtime
        self.kind = runtime.kind
        self.entered = asyncio.Event()
        self.answer = asyncio.Event()

    async def get(self, container_id: str):
        self.entered.set()
        await self.answer.wait()
        return await self._runtime.get(container_id)

    def __getattr__(self, name: str):
        return getattr(self._runtime, name)


async def test_a_reap_claim_that_lapses_during_a_slow_runtime_call_stops_nothing(pools):
    pool = await pools(
        MIN_REPLICAS=0,
        MIN_FREE_REPLICAS=0,
        ENGINE_GRACE_PERIOD_S=1,
        CLAIM_TTL_S=3,
        RESERVATION_TTL_S=30,
    )
    [spec] = await pool.create_engines(1)
    await pool.wait_healthy(1)
    removed: list[bytes] = []

    async def on_removed(msg) -> None:
        removed.append(msg.data)

    sub = await pool.nc.subscribe(names.ENGINE_REMOVED, cb=on_removed)
    config = load_config(pool.env())
    bus = await connect(config, "test-reaper")
    runtime = SlowGet(pool.runtime)
    reaper = Reaper(config, bus, runtime)
    await reaper.view.start()
    stop = asyncio.Event()
    try:
        await asyncio.sleep(1.5)  # past ENGINE_GRACE_PERIOD_S: the engine is due
        sweep = asyncio.get_running_loop().create_task(reaper.sweep(stop))
        await asyncio.wait_for(runtime.entered.wait(), 30)

        async def claim_lapsed() -> bool:  # the state-keeper's housekeeping drops a lapsed claim from the record
            claim = (await pool.engine(spec.container_id) or {}).get("claim")
            return claim is None or datetime.fromisoformat(claim["expires_at"]) < datetime.now().astimezone()

        await wait_until(claim_lapsed, timeout=20, what="the reap claim to lapse")
        body, _ = await pool.select()
        assert body["engine"]["container_id"] == spec.container_id  # selection sees the engine as free again
        runtime.answer.set()
        await asyncio.wait_for(sweep, 30)

        assert await pool.runtime.get(spec.container_id) is not None, "the reserved engine was stopped"
        assert reaper.counts["reaped"] == 0 and removed == []
    finally:
        runtime.answer.set()
        await reaper.view.stop()
        await sub.unsubscribe()
        await bus.close()
