"""The proxy reports a stream's end while no state-keeper runs (issue 16: every reporting client
is tested against an outage): the engine session stops, `stream.ended` is held by JetStream,
and the state-keeper applies it once it is back, leaving no phantom stream on the engine."""

from __future__ import annotations

from proxy_stack import Watcher
from support import wait_for_service, wait_until

from shared import names


async def test_a_stream_ended_while_the_keeper_is_down_is_applied_when_it_is_back(stack_factory):
    stack = await stack_factory()
    [cid] = await stack.add_engines(1)
    stack.url, _ = await stack.start_proxy()
    viewer = Watcher(f"{stack.url}/ace/getstream?id=outage", keep=False)
    await viewer.got(188 * 50)
    [stream] = await stack.started(1)
    await stack.wait_engine(cid, lambda r: stream["stream_id"] in r["streams"], what="the engine lists the stream")

    [keeper] = [p for p in stack.processes.started if p.name == "state_keeper"]
    keeper.kill()
    await viewer.close()  # the last viewer leaves during the outage: the proxy ends the stream after the linger

    async def session_stopped() -> bool:
        return len((await stack.sim_state(cid))["sessions"]) == 0

    await wait_until(session_stopped, timeout=15, what="the engine session stopped with no state-keeper")
    js = stack.nc.jetstream()

    async def end_held() -> bool:
        last = await js.get_last_msg(names.EVENTS_STREAM, names.STREAM_ENDED)
        return stream["stream_id"].encode() in last.data

    await wait_until(end_held, timeout=15, what="stream.ended acknowledged by JetStream while the keeper is down")

    stack.processes.service("state_keeper", stack.env)
    await wait_for_service(stack.nc, names.SERVICE_NAME, 1)

    async def ended() -> dict | None:
        return next((s for s in await stack.streams("ended") if s["stream_id"] == stream["stream_id"]), None)

    record = await wait_until(ended, timeout=15, what="the end applied by the state-keeper once it is back")
    assert record["reason"] == "viewers_left"  # the proxy's own end, not a sweep of the state-keeper's
    await stack.wait_engine(cid, lambda r: r["streams"] == [], what="no phantom stream left on the engine")
    assert await stack.streams("started") == []
