"""A clean the runtime could not stop keeps its claim: streams must not start on a cache still being emptied;
and what the janitor remembers of failed cleans does not outlive the engines.

The janitor runs in-process against the real state-keeper and the real local
runtime; only the runtime's answer to the exec is the one a docker runtime
gives when an exec outlived its timeout and could not be killed
(ExecStillRunning: an engine image without a `timeout` command).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from support import wait_until

from services.janitor.janitor import Janitor
from shared import names
from shared.bus import connect
from shared.config import load_config
from shared.runtime import ExecStillRunning
from shared.schemas import EngineRemoved, encode


class ExecOutlivesItsTimeout:
    def __init__(self, runtime) -> None:
        self._runtime = runtime
        self.kind = runtime.kind

    async def exec_shell(self, engine, script: str, timeout_s: float = 60):
        raise ExecStillRunning(f"docker: exec in {engine.container_name} still running after {timeout_s:g}s")

    def __getattr__(self, name: str):
        return getattr(self._runtime, name)


@asynccontextmanager
async def janitor_over(pool) -> AsyncIterator[Janitor]:
    """An in-process janitor on the pool's bus whose every exec outlives its timeout."""
    config = load_config(pool.env())
    bus = await connect(config, "test-janitor")
    janitor = Janitor(config, bus, ExecOutlivesItsTimeout(pool.runtime))
    await janitor.view.start()
    try:
        yield janitor
    finally:
        await janitor.view.stop()
        await bus.close()


async def test_a_clean_that_may_still_run_keeps_its_claim_until_it_lapses(pools):
    pool = await pools(CLAIM_TTL_S=30)
    [spec] = await pool.create_engines(1)
    await pool.wait_healthy(1)
    async with janitor_over(pool) as janitor:
        await janitor.clean(spec.container_id, "test")
        record = await pool.engine(spec.container_id)
        assert record["claim"] is not None and record["claim"]["purpose"] == "clean"
        assert record["state"] == "cleaning"  # out of selection while the cache may still be emptied
        assert janitor.counts["failed"] == 1


async def test_the_failures_of_engines_that_are_gone_are_forgotten(pools):
    pool = await pools(CLAIM_TTL_S=30, AUTOSCALE_INTERVAL_S=1)
    [spec] = await pool.create_engines(1)
    await pool.wait_healthy(1)
    async with janitor_over(pool) as janitor:
        await janitor.clean(spec.container_id, "test")
        assert spec.container_id in janitor._failures
        await pool.runtime.remove(spec)
        await pool.js.publish(
            names.ENGINE_REMOVED, encode(EngineRemoved(container_id=spec.container_id, reason="test"))
        )
        await wait_until(lambda: janitor.view.get(spec.container_id) is None, what="the record gone from the view")
        await janitor.sweep()
        assert janitor._failures == {}
