"""Unhealthy engines: none replaced during an outage; otherwise a successor first, then the removal."""

import asyncio

from support import wait_until

from shared import names


async def hang(pool, port, mode="hang"):
    reply = await pool.http.get(f"http://127.0.0.1:{port}/__sim/fault", params={"mode": mode})
    assert reply.status_code == 200


def replaced(pool):
    return [e["container_id"] for e in pool.recorder.of(names.ENGINE_REMOVED) if e["reason"] == "unhealthy"]


async def test_an_unhealthy_engine_is_replaced_but_not_during_an_outage(pools):
    pool = await pools(
        MIN_REPLICAS=3, MIN_FREE_REPLICAS=1, MAX_REPLICAS=5, UNHEALTHY_REPLACE_AFTER_S=2, ENGINE_GRACE_PERIOD_S=600
    )
    specs = await pool.create_engines(3)
    await pool.wait_healthy(3)
    pool.sample_counts(0.1)
    provisioner = pool.service("provisioner")
    reaper = pool.service("reaper")
    await wait_until(lambda: "started with" in reaper.log(), timeout=20, what="reaper started")

    first, second, _ = specs
    await hang(pool, first.port)
    await hang(pool, second.port)
    outage = "2 of 3 engines unhealthy — not replacing any (shared cause? network outage?)"
    await wait_until(lambda: reaper.log().count(outage) >= 3, timeout=30, what="the outage logged three times")
    unhealthy = {e["container_id"] for e in await pool.engines() if e["health_status"] == "unhealthy"}
    assert unhealthy == {first.container_id, second.container_id}
    assert pool.recorder.of(names.ENGINE_REMOVED) == [] and len(await pool.runtime.list_managed()) == 3

    await hang(pool, second.port, "none")  # one recovers: now a single bad engine, overdue
    await wait_until(lambda: replaced(pool), timeout=60, what="the bad engine replaced")
    assert replaced(pool) == [first.container_id]
    engines = await pool.wait_healthy(3)
    assert len(engines) == 3 and first.container_id not in {e["container_id"] for e in engines}
    successor = next(e for e in engines if e["container_id"] not in {s.container_id for s in specs})
    registered_at = min(
        t
        for t, s, p in pool.recorder.events
        if s == names.ENGINE_REGISTERED and p["container_id"] == successor["container_id"]
    )
    removed_at = min(t for t, s, p in pool.recorder.events if s == names.ENGINE_REMOVED)
    assert registered_at < removed_at  # the successor first
    assert min(pool.recorder.counts) >= 3, pool.recorder.counts
    assert f"removed unhealthy engine {first.container_name}" in reaper.log()
    await asyncio.sleep(2)
    assert len(await pool.engines()) == 3 and replaced(pool) == [first.container_id]
    # Besides the reaper's report, only the provisioner's `gone` for the same engine may show up.
    assert {e["container_id"] for e in pool.recorder.of(names.ENGINE_REMOVED)} == {first.container_id}
    assert provisioner.alive()
