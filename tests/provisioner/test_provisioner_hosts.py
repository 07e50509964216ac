"""Two hosts, one fleet: two provisioners with their own HOST_ID, runtime and ports on one machine.

Engines answer only after STARTUP_S, so the first host's starts are still
unregistered — invisible in the second host's runtime — when the second
provisioner scales: only the starts it reads from ace_leases keep it from
starting engines the first one already started.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from pool_harness import pools  # noqa: F401 (the fixture lives with the harness)
from provisioner_harness import local_engines
from support import free_port_range, wait_until

from services.provisioner.starts import TTL_S, StartsBoard
from shared import names
from shared.bus import connect
from shared.config import load_config
from shared.runtime import make_runtime
from shared.schemas import HostStarts, ProvisionReply, decoder, encode

STARTUP_S = 8  # longer than the second provisioner takes to start and scale
SLOW = f"{sys.executable} -m deploy.acesim --port {{port}} --cache-dir {{cache_dir}} --startup-delay {STARTUP_S}"


def host_env(tmp_path: Path, host: str, command: str = SLOW) -> dict[str, object]:
    first = free_port_range(10)
    return {
        "HOST_ID": host,
        "ENGINE_STATE_DIR": str(tmp_path / host),
        "ENGINE_PORT_RANGE": f"{first}-{first + 9}",
        "ENGINE_COMMAND": command,
    }


async def remove_all(env: dict[str, object]) -> None:
    runtime = make_runtime(load_config({k: str(v) for k, v in env.items()}))
    for spec in await runtime.list_managed():
        await runtime.remove(spec)
    await runtime.close()


async def test_a_second_host_counts_the_firsts_starts_and_each_host_stays_under_its_cap(pools, tmp_path):  # noqa: F811
    pool = await pools(MIN_REPLICAS=4, MIN_FREE_REPLICAS=0, MAX_REPLICAS=4, HOST_MAX_ENGINES=3, AUTOSCALE_INTERVAL_S=2)
    hosts = {host: host_env(tmp_path, host) for host in ("host-a", "host-b")}
    most = 0
    sampling = True

    async def sample() -> None:
        nonlocal most
        while sampling:
            engines = sum(
                [
                    len(await asyncio.to_thread(local_engines, Path(str(env["ENGINE_STATE_DIR"]))))
                    for env in hosts.values()
                ]
            )
            most = max(most, engines)
            await asyncio.sleep(0.05)

    sampler = asyncio.get_running_loop().create_task(sample())
    agents = []
    try:
        a = pool.service("provisioner", **hosts["host-a"])
        agents.append(a)
        # Alone, host-a may take only HOST_MAX_ENGINES of the 4.
        await wait_until(lambda: "starting 3 engine(s)" in a.log(), timeout=20, what="host-a starting its 3")
        b = pool.service("provisioner", **hosts["host-b"])
        agents.append(b)
        await wait_until(lambda: "starting 1 engine(s)" in b.log(), timeout=20, what="host-b starting the 4th")
        assert "(0 managed, 3 starting, max 4)" in b.log()  # host-a's were unregistered: counted from ace_leases

        records = await pool.wait_healthy(4, timeout=4 * STARTUP_S)
        assert sorted(r["host_id"] for r in records) == ["host-a", "host-a", "host-a", "host-b"]
        await pool.sweeps_done("provisioner", 2)  # both hosts scaled again since: nothing more
        assert len(await pool.engines()) == 4
        assert "starting 2" not in b.log() and "starting 4" not in a.log()
    finally:
        sampling = False
        await sampler
        for agent in agents:  # first, or they would replace the engines removed next
            await asyncio.to_thread(agent.stop)
        for env in hosts.values():
            await remove_all({**pool.settings, **env})
    assert most == 4  # never more than MAX_REPLICAS, not even while both scaled


async def test_the_starts_board_counts_other_hosts_unrecorded_starts_and_says_whose_are_failing(nats_server):
    bus = await connect(load_config({"NATS_URL": nats_server.url}), "test-starts")
    a1, a2 = StartsBoard(bus, "host-a", "p-1"), StartsBoard(bus, "host-a", "p-2")  # two replicas on host-a
    b, c = StartsBoard(bus, "host-b", "p-3"), StartsBoard(bus, "host-c", "p-4")
    try:
        await a1.publish(["local-1", "local-2"], unnamed=1)
        await a2.publish(["local-3"], unnamed=0)
        await c.publish([], unnamed=0, backoff_until=time.time() + 60)
        # What a writer that died long ago left behind on a server that kept it: ignored (past TTL and clock skew).
        stale = HostStarts(host_id="host-d", written_at=time.time() - TTL_S - 31, container_ids=["local-9"])
        await bus.leases.put(f"{names.STARTS_PREFIX}.host-d.p-5", encode(stale))
        # local-2 has a record by now: counted once, as a record.
        assert await b.elsewhere({"local-2"}) == ({"host-a": 3, "host-c": 0}, {"host-c"})
        assert await a1.elsewhere(()) == ({"host-c": 0}, {"host-c"})  # its own host: the runtime shows those
        await a1.publish([], unnamed=0)
        await a2.publish([], unnamed=0)
        await c.publish([], unnamed=0)
        assert await b.elsewhere(()) == ({}, set())  # emptied entries are deleted
    finally:
        await bus.close()


FAST = f"{sys.executable} -m deploy.acesim --port {{port}} --cache-dir {{cache_dir}}"
PASSED_ON = "provision request passed on to host host-b"


async def test_a_provision_request_taken_by_a_full_host_gets_an_engine_on_the_host_with_room(pools, tmp_path):  # noqa: F811
    pool = await pools(MIN_REPLICAS=2, MIN_FREE_REPLICAS=0, MAX_REPLICAS=8, HOST_MAX_ENGINES=2, AUTOSCALE_INTERVAL_S=2)
    hosts = {host: host_env(tmp_path, host, FAST) for host in ("host-a", "host-b")}
    b_runtime = make_runtime(load_config({k: str(v) for k, v in {**pool.settings, **hosts["host-b"]}.items()}))
    agents = []
    try:
        a = pool.service("provisioner", **hosts["host-a"])
        agents.append(a)
        await pool.wait_healthy(2)  # alone, host-a reaches the floor on its own: it is full
        b = pool.service("provisioner", **hosts["host-b"])
        agents.append(b)
        await wait_until(lambda: "holder" in b.log(), timeout=20, what="host-b's provisioner serving")
        # micro's queue group gives a request to either host: ask until host-a has taken one (each
        # answer must be right whoever took it), giving each engine back so host-b keeps its room.
        for _ in range(20):
            msg = await pool.nc.request(names.ENGINE_PROVISION, b"{}", timeout=60)
            assert not (msg.headers or {}).get("Nats-Service-Error-Code"), msg.data
            reply = decoder(ProvisionReply)(msg.data)
            assert (await pool.engine(reply.container_id))["host_id"] == "host-b"
            if PASSED_ON in a.log():
                break
            spec = next(s for s in await b_runtime.list_managed() if s.container_id == reply.container_id)
            await b_runtime.remove(spec)
            await wait_until(lambda: gone(pool, reply.container_id), timeout=20, what="its record gone")
        assert PASSED_ON in a.log()
        assert sorted(r["host_id"] for r in await pool.engines()) == ["host-a", "host-a", "host-b"]
    finally:
        for agent in agents:
            await asyncio.to_thread(agent.stop)
        await b_runtime.close()
        for env in hosts.values():
            await remove_all({**pool.settings, **env})


async def gone(pool, container_id: str) -> bool:
    return await pool.engine(container_id) is None


async def test_a_host_below_its_own_floor_gets_an_engine_and_keeps_it_at_the_fleets_floor(pools, tmp_path):  # noqa: F811
    pool = await pools(
        MIN_REPLICAS=2,
        MIN_FREE_REPLICAS=0,
        MIN_REPLICAS_PER_HOST=1,
        AUTOSCALE_INTERVAL_S=1,
        ENGINE_GRACE_PERIOD_S=1,
    )
    hosts = {host: host_env(tmp_path, host, FAST) for host in ("host-a", "host-b")}
    agents = []
    try:
        agents.append(pool.service("provisioner", **hosts["host-a"]))
        await pool.wait_healthy(2)  # alone, host-a holds the fleet's floor
        agents.append(pool.service("provisioner", **hosts["host-b"]))
        records = await pool.wait_healthy(3)  # host-b's own floor, though the fleet's is met
        assert sorted(r["host_id"] for r in records) == ["host-a", "host-a", "host-b"]
        # The fleet has one engine above its floor, but host-b's reaper may not take host-b's only one.
        agents.append(pool.service("reaper", **hosts["host-b"]))
        await pool.sweeps_done("reaper-sweep", 3)  # the engine is idle for longer than the grace by then
        assert pool.recorder.of(names.ENGINE_REMOVED) == []
        assert sorted(r["container_id"] for r in await pool.engines()) == sorted(r["container_id"] for r in records)
    finally:
        for agent in reversed(agents):
            await asyncio.to_thread(agent.stop)
        for env in hosts.values():
            await remove_all({**pool.settings, **env})
