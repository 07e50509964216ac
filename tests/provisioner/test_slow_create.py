"""A create that outlives the provisioner's budget still counts against MAX_REPLICAS until it ends.

The provisioner runs in-process against the real state-keeper and the real
local runtime; the runtime's `create` is held back (as a docker create to a
slow daemon is) until the test lets it through.
"""

from __future__ import annotations

import asyncio

from pool_harness import pools  # noqa: F401 (the fixture)
from support import wait_until

from services.provisioner import provisioner as provisioner_module
from services.provisioner.provisioner import Provisioner
from shared.bus import connect
from shared.config import load_config
from shared.engine_client import new_client
from shared.kv import KvView
from shared.schemas import decode_engine


class SlowCreate:
    """The pool's runtime, except that `create` goes through only when the test says so."""

    def __init__(self, runtime) -> None:
        self._runtime = runtime
        self.kind = runtime.kind
        self.creates = 0
        self.go = asyncio.Event()

    async def create(self):
        self.creates += 1
        await self.go.wait()
        return await self._runtime.create()

    def __getattr__(self, name: str):
        return getattr(self._runtime, name)


async def test_a_create_given_up_on_still_counts_until_it_ends(pools, monkeypatch):  # noqa: F811  # the fixture imported above
    monkeypatch.setattr(provisioner_module, "CREATE_BUDGET_S", 0.5)  # the budget, not a clock
    pool = await pools(MIN_REPLICAS=1, MIN_FREE_REPLICAS=0, MAX_REPLICAS=1)
    config = load_config(pool.env())
    bus = await connect(config, "test-provisioner")
    engines = KvView(bus.engines, decode_engine, bus)
    await engines.start()
    http = new_client()
    runtime = SlowCreate(pool.runtime)
    provisioner = Provisioner(config, bus, runtime, engines, http)
    try:
        await provisioner.scale(demand=False)  # gives up on its one create after the budget
        assert runtime.creates == 1
        await provisioner.scale(demand=True)  # the pool is at MAX_REPLICAS already: the late create counts
        assert runtime.creates == 1
        runtime.go.set()
        await wait_until(lambda: len(engines.values()) == 1, timeout=30, what="the late engine registered")
        await provisioner.scale(demand=True)
        assert runtime.creates == 1
    finally:
        runtime.go.set()
        pending = provisioner.tasks | getattr(provisioner, "late_creates", set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await http.aclose()
        await engines.stop()
        await bus.close()
