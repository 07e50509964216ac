"""Stats on the bus, the proxy's heartbeat, and a session stopped behind the proxy's back."""

from __future__ import annotations

import json

from shared import names
from proxy_stack import Watcher
from support import wait_until


async def test_stats_of_a_live_stream_are_published_with_the_proxy_that_reads_them(stack_factory, nc):
    stack = await stack_factory()
    await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    heard: list[dict] = []

    async def hear(msg) -> None:
        heard.append(json.loads(msg.data))

    sub = await nc.subscribe(names.STREAM_STATS, cb=hear)
    viewer = Watcher(f"{stack.url}/ace/getstream?id=counted", keep=False)
    try:
        await viewer.got(188 * 50)
        [stream] = await stack.started(1)
        await wait_until(lambda: len(heard) >= 2, timeout=10, what="two stream.stats messages")
        member = (await stack.status())["proxy"]
        assert {m["stream_id"] for m in heard} == {stream["stream_id"]}
        assert {m["proxy"] for m in heard} == {member}
        announced = json.loads((await nc.jetstream().get_last_msg(names.EVENTS_STREAM, names.STREAM_STARTED)).data)
        assert announced["stream_id"] == stream["stream_id"] and announced["proxy"] == member
        assert announced["reservation_id"] and announced["stat_url"] and announced["command_url"]
        latest = heard[-1]["stats"]
        assert latest["peers"] > 0 and latest["speed_down"] > 0 and latest["status"] in ("prebuf", "dl")
        assert heard[-1]["stats"]["downloaded"] >= heard[0]["stats"]["downloaded"]
        assert (await stack.status())["sessions"][0]["stats"]["peers"] > 0
        leases = await nc.jetstream().key_value(names.LEASES_BUCKET)
        assert (await leases.get(f"members.{names.PROXY_GROUP}.{member}")).value
    finally:
        await sub.unsubscribe()
        await viewer.close()


async def test_a_session_stopped_behind_the_proxys_back_fails_over_without_closing_the_viewer(stack_factory):
    stack = await stack_factory()
    await stack.add_engines(2)
    stack.url, stack.proxy = await stack.start_proxy()
    viewer = Watcher(f"{stack.url}/ace/getstream?id=stopped-elsewhere", keep=False)
    await viewer.got(188 * 50)
    [old] = await stack.started(1)
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
    await viewer.close()
