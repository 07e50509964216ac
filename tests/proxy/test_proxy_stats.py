"""Stats on the bus, the proxy's heartbeat, and a session stopped behind the proxy's back."""

from __future__ import annotations

import json

from proxy_stack import Watcher
from support import wait_until

from shared import names


async def test_stats_are_published_and_a_session_that_is_gone_fails_over(stack_factory, nc):
    stack = await stack_factory()
    await stack.add_engines(2)
    stack.url, stack.proxy = await stack.start_proxy()
    heard: list[dict] = []

    async def hear(msg) -> None:
        heard.append(json.loads(msg.data))

    sub = await nc.subscribe(names.STREAM_STATS, cb=hear)
    viewer = Watcher(f"{stack.url}/ace/getstream?id=counted", keep=False)
    try:
        await viewer.got(188 * 50)
        [old] = await stack.started(1)
        await wait_until(lambda: len(heard) >= 2, timeout=10, what="two stream.stats messages")
        member = (await stack.status())["proxy"]
        assert {m["stream_id"] for m in heard} == {old["stream_id"]} and {m["proxy"] for m in heard} == {member}
        latest = heard[-1]["stats"]
        assert latest["peers"] > 0 and latest["speed_down"] > 0 and latest["status"] in ("prebuf", "dl")
        assert latest["downloaded"] >= heard[0]["stats"]["downloaded"]
        # The proxy's own figures: one viewer, and what it was sent of this stream so far.
        assert heard[-1]["viewers"] == 1 and heard[-1]["relayed_bytes"] >= heard[0]["relayed_bytes"] > 0

        async def recorded():
            [record] = await stack.streams("started")
            return record if record.get("viewers") == 1 and record.get("relayed_bytes", 0) > 0 else None

        await wait_until(recorded, timeout=10, what="viewers and relayed bytes on the stream record")
        assert (await stack.status())["sessions"][0]["stats"]["peers"] > 0
        announced = json.loads((await nc.jetstream().get_last_msg(names.EVENTS_STREAM, names.STREAM_STARTED)).data)
        assert announced["stream_id"] == old["stream_id"] and announced["proxy"] == member
        assert announced["reservation_id"] and announced["stat_url"] and announced["command_url"]
        leases = await nc.jetstream().key_value(names.LEASES_BUCKET)
        assert (await leases.get(f"members.{names.PROXY_GROUP}.{member}")).value

        # Someone else stops the engine session: playback ends and the stat URL no longer knows it.
        assert (await stack.http.get(old["command_url"], params={"method": "stop"})).json()["response"] == "ok"

        async def moved():
            started = await stack.streams("started")
            return started if started and started[0]["stream_id"] != old["stream_id"] else None

        await wait_until(moved, timeout=15, what="a new stream after the session was stopped")
        ended = [s for s in await stack.streams("ended") if s["stream_id"] == old["stream_id"]]
        assert [s["reason"] for s in ended] == ["failover"]
        count = viewer.count
        await viewer.got(count + 188 * 200)
        assert viewer.error is None and not viewer.ended.is_set()
    finally:
        await sub.unsubscribe()
        await viewer.close()
