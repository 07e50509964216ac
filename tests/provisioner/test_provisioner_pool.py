"""The provisioner keeps the pool, in both tiers: local processes and real Docker containers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime

import httpx
import nats.errors
import pytest
from provisioner_harness import PORTS, sample_max
from support import free_port, wait_until

from shared import names
from shared.schemas import EngineRegistered, encode

PORTS_BEYOND = PORTS + 5  # an address outside the test's ENGINE_PORT_RANGE
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


async def test_min_replicas_come_up_registered_and_healthy(system, tier):
    metrics_port = free_port()
    provisioner = system.provisioner(
        MIN_REPLICAS=2, MIN_FREE_REPLICAS=1, MAX_REPLICAS=4, METRICS_PORT=metrics_port, HOST_ID="rack-7"
    )

    records = await system.healthy(2)

    engine_names = sorted(r["container_name"] for r in records)
    if tier.kind == "local":
        assert engine_names == ["acestream-1", "acestream-2"]
    else:  # names are unique per daemon: other pools on it may hold the lowest numbers
        assert len(set(engine_names)) == 2 and all(re.fullmatch(r"acestream-\d+", n) for n in engine_names)
    assert {r["runtime"] for r in records} == {tier.kind}
    assert {r["container_id"]: r["port"] for r in records} == tier.engines()
    first, last = map(int, system.env()["ENGINE_PORT_RANGE"].split("-"))
    assert all(first <= r["port"] <= last and r["host"] == "127.0.0.1" for r in records)
    assert all(r["labels"]["aceorch.managed"] == "true" for r in records)
    assert {r["host_id"] for r in records} == {"rack-7"}
    # Several sweeps later the floors are still met exactly: nothing more was started.
    await asyncio.sleep(2.5)
    assert len(tier.engines()) == 2
    started = f"provisioner: started {engine_names[1]} on port"
    await wait_until(lambda: started in provisioner.log(), what="start log line")
    assert f"({tier.kind}, " in provisioner.log()
    async with httpx.AsyncClient(trust_env=False) as client:
        metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert "aceorch_provisioner_engines_started_total 2.0" in metrics
    assert "aceorch_provisioner_engine_starts_failed_total 0.0" in metrics


async def test_demand_scales_up_to_max_replicas_and_no_further(system, tier):
    system.provisioner(MIN_REPLICAS=1, MIN_FREE_REPLICAS=0, MAX_REPLICAS=3)
    await system.healthy(1)

    placed: set[str] = set()
    refused = 0
    deadline = time.monotonic() + 60
    while len(placed) < 3 and time.monotonic() < deadline:
        selection = await system.select(f"channel-{len(placed)}")
        if selection is None:  # 503 no_capacity: the state-keeper published engine.demand
            refused += 1
            await asyncio.sleep(0.2)
            continue
        await system.start_stream(selection, f"stream-{len(placed)}")
        placed.add(selection["engine"]["container_id"])
    assert len(placed) == 3, f"only {len(placed)} engines got a stream"
    assert refused >= 2  # two engines were added on demand, after a 503 each

    # Every engine is busy now: more demand must not go past MAX_REPLICAS.
    for attempt in range(10):
        assert await system.select(f"more-{attempt}") is None
    await asyncio.sleep(3)
    assert len(tier.engines()) == 3
    assert len(await system.records()) == 3


async def test_restart_adopts_the_same_engines(system, tier):
    settings = dict(MIN_REPLICAS=2, MIN_FREE_REPLICAS=1, MAX_REPLICAS=4)
    first = system.provisioner(**settings)
    before = {r["container_id"] for r in await system.healthy(2)}

    assert first.stop() == 0
    assert set(tier.engines()) == before  # stopping the provisioner leaves its engines running

    second = system.provisioner(**settings)
    await wait_until(lambda: "provisioner: adopted 2 engines" in second.log(), what="adoption log line")
    await asyncio.sleep(2.5)  # a few sweeps: nothing duplicated, nothing destroyed
    assert set(tier.engines()) == before
    assert {r["container_id"] for r in await system.healthy(2)} == before
    assert "started acestream" not in second.log()


async def test_at_restart_records_of_vanished_engines_are_removed_and_no_others(system, tier):
    settings = dict(MIN_REPLICAS=3, MIN_FREE_REPLICAS=1, MAX_REPLICAS=4)
    first = system.provisioner(**settings)
    died, gone, kept = await system.healthy(3)
    assert first.stop() == 0
    # While no provisioner watches, one engine dies and one is removed without a trace.
    await asyncio.to_thread(tier.kill, died["container_id"])
    await asyncio.to_thread(tier.destroy, gone["container_id"])
    # Same runtime kind, but another provisioner's (another host or daemon): not ours to judge.
    foreign = EngineRegistered(
        container_id="foreign-1",
        host="127.0.0.1",
        port=tier.first_port + PORTS_BEYOND,
        runtime=tier.kind,
        labels={"aceorch.managed": "true", "aceorch.scope": "another-host"},
    )
    await system.nc.jetstream().publish(names.ENGINE_REGISTERED, encode(foreign))
    await wait_until(lambda: _has(system, "foreign-1"), what="foreign record")
    removed = await system.nc.subscribe(names.ENGINE_REMOVED)
    await system.nc.flush()

    restarted_at = time.time()
    second = system.provisioner(**settings)

    reports = [json.loads((await removed.next_msg(timeout=30)).data) for _ in range(2)]
    assert sorted(reports, key=lambda r: r["reason"]) == [
        {"container_id": died["container_id"], "reason": "died"},
        {"container_id": gone["container_id"], "reason": "gone"},
    ]
    await wait_until(lambda: "provisioner: adopted 1 engines" in second.log(), what="adoption of the survivor")
    await asyncio.sleep(2.5)  # a few sweeps
    records = {r["container_id"]: r for r in await system.records()}
    assert {kept["container_id"], "foreign-1"} <= set(records)
    for vanished in (died, gone):  # its record is gone; a replacement may reuse a local id (its port), not the record
        again = records.get(vanished["container_id"])
        assert again is None or _epoch(again["created_at"]) > restarted_at
    with pytest.raises(nats.errors.TimeoutError):  # nothing else was declared gone, nor anything twice
        extra = await removed.next_msg(timeout=0.5)
        pytest.fail(f"unexpected engine.removed {extra.data!r}; provisioner log:\n{second.log()[-3000:]}")


async def _has(system, container_id: str) -> bool:
    return any(r["container_id"] == container_id for r in await system.records())


@pytest.mark.parametrize("tier", ["local"], indirect=True)  # the rule is runtime-independent; local shows it fast
async def test_a_vanished_engine_is_reported_once_while_its_record_lingers(system, tier):
    """With no state-keeper to apply the removal, the record stays; the sweeps must not repeat the news
    (a reconcile reading a view that lags behind its own report once made a second `engine.removed`)."""
    first = system.provisioner(MIN_REPLICAS=1, MIN_FREE_REPLICAS=0, MAX_REPLICAS=1)
    [engine] = await system.healthy(1)
    assert first.stop() == 0
    second = system.provisioner(MIN_REPLICAS=0, MIN_FREE_REPLICAS=0, MAX_REPLICAS=1)  # no replacement to reuse the id
    await wait_until(lambda: "pool 0..1 engines" in second.log(), what="the second provisioner")
    for keeper in [p for p in system.processes.started if p.name == "state_keeper"]:
        assert keeper.stop() == 0
    removed = await system.nc.subscribe(names.ENGINE_REMOVED)
    await system.nc.flush()
    await asyncio.to_thread(tier.destroy, engine["container_id"])
    first = json.loads((await removed.next_msg(timeout=30)).data)
    assert first["container_id"] == engine["container_id"]
    await asyncio.sleep(4.5)  # four sweeps at AUTOSCALE_INTERVAL_S=1, each seeing the record
    again = []
    while True:
        try:
            again.append(json.loads((await removed.next_msg(timeout=0.1)).data))
        except nats.errors.TimeoutError:
            break
    assert [r for r in again if r["container_id"] == engine["container_id"]] == []


async def test_killed_engine_is_removed_and_replaced(system, tier):
    provisioner = system.provisioner(MIN_REPLICAS=2, MIN_FREE_REPLICAS=1, MAX_REPLICAS=4)
    records = await system.healthy(2)
    victim = records[0]
    removed = await system.nc.subscribe(names.ENGINE_REMOVED)
    await system.nc.flush()  # subscribed on the server before the engine dies

    killed_at = time.time()
    await asyncio.to_thread(tier.kill, victim["container_id"])

    msg = await removed.next_msg(timeout=30)
    assert json.loads(msg.data) == {"container_id": victim["container_id"], "reason": "died"}

    async def replaced():
        records = await system.records()
        fresh = [r for r in records if r["created_at"] and _epoch(r["created_at"]) > killed_at]
        healthy = all(r["health_status"] == "healthy" for r in records)
        return len(records) == 2 and len(fresh) == 1 and healthy

    await wait_until(replaced, timeout=60, interval=0.2, what="a healthy replacement")
    assert len(tier.engines()) == 2
    assert f"engine {victim['container_name']} died" in provisioner.log()


async def test_two_provisioners_racing_never_exceed_max_replicas(system, tier):
    settings = dict(MIN_REPLICAS=1, MIN_FREE_REPLICAS=0, MAX_REPLICAS=3)
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_max(tier, stop_sampling))
    system.provisioner(**settings)
    system.provisioner(**settings)
    try:
        await system.healthy(1)
        placed: set[str] = set()
        deadline = time.monotonic() + 60
        while len(placed) < 3 and time.monotonic() < deadline:
            for _ in range(10):  # a burst of demand reaches both replicas at once
                await system.nc.publish(names.ENGINE_DEMAND, b'{"content_key": null}')
            selection = await system.select(f"channel-{len(placed)}")
            if selection is None:
                await asyncio.sleep(0.1)
                continue
            await system.start_stream(selection, f"stream-{len(placed)}")
            placed.add(selection["engine"]["container_id"])
        assert len(placed) == 3
        for _ in range(50):
            await system.nc.publish(names.ENGINE_DEMAND, b"{}")
        await asyncio.sleep(3)
    finally:
        stop_sampling.set()
        most = await sampler
    assert most == 3
    assert len(tier.engines()) == 3
    assert len(await system.records()) == 3


async def test_an_engine_that_never_answers_is_removed_counted_and_backed_off(system, tier):
    provisioner = system.provisioner(
        MIN_REPLICAS=1,
        MIN_FREE_REPLICAS=0,
        MAX_REPLICAS=2,
        ENGINE_START_TIMEOUT_S=1.5,
        ENGINE_COMMAND=tier.silent_command,
    )

    await wait_until(lambda: "(3 consecutive failures)" in provisioner.log(), timeout=60, what="three failed starts")

    log = provisioner.log()
    assert "next start in 1s (1 consecutive failures)" in log
    assert "next start in 2s (2 consecutive failures)" in log
    assert "next start in 4s (3 consecutive failures)" in log
    assert "no answer to get_status within 1.5s" in log
    # Starts were spaced by the backoff, not retried at once: 3 failures took 1.5 + 1 + 1.5 + 2 + 1.5 s at least.
    stamps = [line[:23] for line in log.splitlines() if "start failed" in line]
    assert _seconds_between(stamps[0], stamps[2]) >= 1 + 1.5 + 2 + 1.5 - 0.5
    await wait_until(lambda: not tier.engines(), timeout=15, what="failed engines removed")
    assert await system.records() == []  # never registered


def _seconds_between(first: str, last: str) -> float:
    """Between two log timestamps (`2026-01-01 12:00:00,123`)."""
    return (datetime.strptime(last, LOG_TIME) - datetime.strptime(first, LOG_TIME)).total_seconds()


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()
