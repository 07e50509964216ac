"""Two janitors and two reapers: every sweep acts once per interval, every engine is handled once."""

import asyncio
import math
from collections import defaultdict

from support import wait_until

from shared import names

INTERVAL_S = 2


def holders_per_interval(claims, purpose):
    by_epoch = defaultdict(set)
    for claim in claims:
        if claim.purpose == purpose:
            by_epoch[math.floor(claim.at / INTERVAL_S)].add(claim.holder)
    return by_epoch


async def test_two_replicas_of_each_sweep_act_once_per_interval(pools):
    pool = await pools(MIN_REPLICAS=2, MIN_FREE_REPLICAS=1, ENGINE_GRACE_PERIOD_S=5, AUTOSCALE_INTERVAL_S=INTERVAL_S)
    specs = await pool.create_engines(6)
    await pool.wait_healthy(6)
    # Used and idle again before any janitor runs: their engine.idle is lost, only sweeps find them.
    for spec in specs:
        await pool.started(f"s-{spec.port}", spec.container_id)
    for spec in specs:
        await pool.ended(f"s-{spec.port}", spec.container_id)
    replicas = [pool.service(module) for module in ("janitor", "janitor", "reaper", "reaper")]
    for process in replicas:
        await wait_until(lambda: "started with" in process.log(), timeout=20, what=f"{process.name} started")

    await wait_until(lambda: len(pool.recorder.of(names.ENGINE_CLEANED)) >= 6, timeout=20, what="6 cleans")
    await wait_until(lambda: len(pool.recorder.of(names.ENGINE_REMOVED)) >= 4, timeout=30, what="4 removals")
    await asyncio.sleep(2 * INTERVAL_S)  # two more intervals: nothing is done twice

    assert all(process.alive() for process in replicas)
    cleaned = pool.recorder.per_engine(names.ENGINE_CLEANED)
    assert sorted(cleaned) == sorted(s.container_id for s in specs) and set(cleaned.values()) == {1}
    removed = pool.recorder.per_engine(names.ENGINE_REMOVED)
    assert len(removed) == 4 and set(removed.values()) == {1}
    assert len(await pool.engines()) == 2
    claims = pool.recorder.claims
    assert sorted(c.container_id for c in claims if c.purpose == "clean") == sorted(cleaned)
    assert sorted(c.container_id for c in claims if c.purpose == "reap") == sorted(removed)
    for purpose in ("clean", "reap"):
        acted = holders_per_interval(claims, purpose)
        assert acted and all(len(holders) == 1 for holders in acted.values()), (purpose, dict(acted))
    janitor_sweeps = sum(p.log().count("sweep found") for p in replicas[:2])
    assert janitor_sweeps == len(holders_per_interval(claims, "clean"))
