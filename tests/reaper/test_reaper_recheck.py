"""After claiming a victim, the reaper re-checks the floors on fresh records (DESIGN §5).

The sweep picks its victim from its KV view; a stream can start on another engine between
that pick and the claim. Driven in-process against a real nats-server and state-keeper,
with the victim picked from a snapshot taken before the stream started.
"""

from support import base_env, request_json, wait_for_service, wait_until

from services.reaper.reaper import Reaper, Sweep
from shared import names
from shared.bus import connect
from shared.config import load_config
from shared.policy.pool import PoolPolicy, next_to_reap
from shared.runtime import make_runtime
from shared.schemas import EngineHealth, EngineRegistered, StreamStarted, decode_engine, encode, utcnow

SETTINGS = {
    "MIN_REPLICAS": 1,
    "MIN_FREE_REPLICAS": 1,
    "ENGINE_GRACE_PERIOD_S": 0,
    "ENGINE_RUNTIME": "local",
    # health is reported once, by hand: a long interval keeps that verdict fresh for the test
    "HEALTH_CHECK_INTERVAL_S": 300,
    "HEALTH_CHECK_TIMEOUT_S": 5,
    "HEALTH_RECHECK_S": 5,
}


async def engines(nc) -> dict[str, dict]:
    body, _ = await request_json(nc, names.ENGINE_LIST, {})
    return {record["container_id"]: record for record in body["engines"]}


async def test_a_victim_is_spared_when_a_stream_elsewhere_puts_the_pool_at_its_floors(
    nats_server, processes, nc, tmp_path
):
    env = base_env(nats_server.url, **SETTINGS)
    processes.service("state_keeper", env)
    await wait_for_service(nc, names.SERVICE_NAME, 1)
    js = nc.jetstream()
    for i, cid in enumerate(("e1", "e2")):
        await js.publish(
            names.ENGINE_REGISTERED,
            encode(EngineRegistered(container_id=cid, host="127.0.0.1", port=7000 + i, runtime="local")),
        )
        await js.publish(names.ENGINE_HEALTH, encode(EngineHealth(container_id=cid, ok=True, checked_at=utcnow())))
    await wait_until(lambda: _all_healthy(nc, {"e1", "e2"}), what="e1 and e2 healthy", timeout=15)

    config = load_config({**env, "ENGINE_STATE_DIR": str(tmp_path / "engines")})
    snapshot = [decode_engine(encode(record)) for record in (await engines(nc)).values()]
    victim = next_to_reap(snapshot, utcnow(), PoolPolicy.from_config(config))
    assert victim is not None, "two idle engines above floors of 1 engine / 1 free: one may go"
    other = "e2" if victim.container_id == "e1" else "e1"

    await js.publish(names.STREAM_STARTED, encode(StreamStarted(stream_id="s1", container_id=other)))
    await wait_until(lambda: _lists(nc, other, "s1"), what=f"s1 on {other}", timeout=15)

    bus = await connect(config, "test-reaper")
    try:
        reaper = Reaper(config, bus, make_runtime(config))
        claim_id = await reaper._claim_idle(victim, Sweep())
    finally:
        await bus.close()
    assert claim_id is None, "the victim is the only free engine left: reaping it breaks MIN_FREE_REPLICAS"
    record = (await engines(nc))[victim.container_id]
    assert record["claim"] is None and record["state"] == "active", "the claim was released"


async def _all_healthy(nc, wanted: set[str]) -> bool:
    return all(
        r["health_status"] == "healthy" for cid, r in (await engines(nc)).items() if cid in wanted
    ) and wanted <= set(await engines(nc))


async def _lists(nc, cid: str, stream_id: str) -> bool:
    return stream_id in (await engines(nc)).get(cid, {}).get("streams", [])
