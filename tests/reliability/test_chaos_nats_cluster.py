"""Scenario 2: a 3-node NATS cluster on loopback, stream and buckets replicated ×3 (NATS_REPLICAS=3);
the shipped cluster configs, so every service connects with its role key over TLS, and routes are TLS.

Under load, SIGKILL one node (the ACE_EVENTS stream leader when it is not the meta
leader), bring it back, then SIGKILL the JetStream meta leader and bring it back.
Selections and events keep succeeding (clients retry with the same Nats-Msg-Id) and
nothing JetStream acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import time

from chaos_load import StreamLoad, assert_nothing_lost, record_invariants, snapshot
from chaos_stack import LiveFeed, engine_records, register, wait_healthy
from support import wait_until

from shared import names
from shared.schemas import utcnow

MAX_STREAMS = 20
DOWN_S = 3.0


async def test_cluster_survives_losing_a_node_then_the_meta_leader(stack, figures):
    cluster = await stack.start_cluster()
    stack.configure(MAX_STREAMS_PER_ENGINE=MAX_STREAMS)
    stack.start("state_keeper", 2)
    stack.start("prober")
    stack.start("gateway")
    ports = stack.acesim(5)
    bus = await stack.client()
    await stack.ready(bus.nc, timeout=60)
    info = await bus.js.stream_info(names.EVENTS_STREAM)
    replicas = {"ACE_EVENTS": info.config.num_replicas}
    for bucket in (names.ENGINES_BUCKET, names.STREAMS_BUCKET, names.LEASES_BUCKET):
        replicas[bucket] = (await bus.js.stream_info(f"KV_{bucket}")).config.num_replicas
    engines = [await register(bus, port) for port in ports[:4]]
    await wait_healthy(bus, engines, timeout=60)
    feed = LiveFeed(stack.gateway_url())
    await feed.start()

    load = StreamLoad(bus, workers=6, max_streams_per_engine=MAX_STREAMS, max_open=30, select_timeout_s=2.0)
    load.start()
    await wait_until(lambda: load.stats.events_acked > 200, timeout=30, what="load under way")

    kills = []
    stream_leader = (await bus.js.stream_info(names.EVENTS_STREAM)).cluster.leader
    meta = cluster.meta_leader()
    first = stream_leader if stream_leader != meta else next(n for n in cluster.names if n != meta)
    kills.append(
        await _kill_and_restore(cluster, first, load, "stream leader" if first == stream_leader else "follower")
    )
    leader = await wait_until(cluster.meta_leader, timeout=30, what="a meta leader before the second kill")
    kills.append(await _kill_and_restore(cluster, leader, load, "meta leader"))

    # Watches resumed everywhere: a newcomer is probed, in every keeper's view and on the live feed.
    newcomer = await register(bus, ports[4])
    registered = time.monotonic()
    await wait_healthy(bus, [newcomer], timeout=30)
    await wait_until(lambda: _every_replica_sees(bus, newcomer), timeout=30, what="the newcomer in every keeper's view")
    await wait_until(
        lambda: feed.engine_seen(newcomer, registered, "healthy"), timeout=30, what="the newcomer on /api/live"
    )
    newcomer_s = time.monotonic() - registered
    await feed.close()
    acked = load.stats.events_acked
    await wait_until(lambda: load.stats.events_acked > acked + 100, timeout=60, what="load after the kills")
    await load.finish()
    result = await load.verify(bus, timeout=120)
    engine_view, stream_view = await snapshot(bus)
    problems = record_invariants(engine_view, stream_view, utcnow())

    figures.update(
        replicas=replicas, kills=kills, newcomer_seen_everywhere_s=round(newcomer_s, 2), **result, **load.figures()
    )
    assert replicas == {
        "ACE_EVENTS": 3,
        **{b: 3 for b in (names.ENGINES_BUCKET, names.STREAMS_BUCKET, names.LEASES_BUCKET)},
    }
    assert not stack.crashed(), stack.crashed()
    assert_nothing_lost(result)
    assert not load.stats.bad_replies, load.stats.bad_replies[:5]
    assert not problems, problems[:10]
    for kill in kills:
        assert kill["events_acked_while_down"] > 0 and kill["selections_ok_while_down"] > 0, kill


async def _kill_and_restore(cluster, node: str, load: StreamLoad, role: str) -> dict:
    """SIGKILL `node`; while it is down, wait for events and selections to succeed again; restart it."""
    meta_before = cluster.meta_leader()
    acked, selected = load.stats.events_acked, load.stats.selections_ok
    cluster.kill(node)
    killed = time.monotonic()
    new_leader = await wait_until(
        lambda: (lambda m: m if m and m != node else None)(cluster.meta_leader()),
        timeout=30,
        what="a meta leader among the survivors",
    )
    elected_s = time.monotonic() - killed
    await wait_until(
        lambda: load.stats.events_acked > acked + 20,
        timeout=45,
        interval=0.02,
        what=f"events acknowledged again with {node} down",
    )
    events_back_s = time.monotonic() - killed
    await wait_until(
        lambda: load.stats.selections_ok > selected + 20,
        timeout=45,
        interval=0.02,
        what=f"selections again with {node} down",
    )
    selections_back_s = time.monotonic() - killed
    await asyncio.sleep(DOWN_S)
    down = {"acked": load.stats.events_acked - acked, "selected": load.stats.selections_ok - selected}
    cluster.start(node)
    await wait_until(lambda: cluster.healthy(node), timeout=60, interval=0.2, what=f"{node} current again")
    return {
        "node": node,
        "role": role,
        "meta_leader_before": meta_before,
        "meta_leader_after": new_leader,
        "meta_leader_known_after_s": round(elected_s, 2),
        "events_acked_again_after_s": round(events_back_s, 2),
        "selections_again_after_s": round(selections_back_s, 2),
        "events_acked_while_down": down["acked"],
        "selections_ok_while_down": down["selected"],
        "rejoined_s": round(time.monotonic() - killed, 2),
    }


async def _every_replica_sees(bus, container_id: str, tries: int = 20) -> bool:
    """engine.list answers come from the state-keepers' watch-fed views, from whichever replica answers."""
    for _ in range(tries):
        records = await engine_records(bus)
        if container_id not in records or records[container_id].health_status != "healthy":
            return False
    return True
