"""Failover: the serving engine fails while viewers watch; the same connections get bytes again from another engine."""

from __future__ import annotations

import asyncio
import time

import pytest
from proxy_stack import Watcher
from support import wait_until

# How each failure is caused on the serving engine: an acesim fault, or (unhealthy) a fault on its
# health API only, which the prober turns into an unhealthy record while playback still flows.
FAULTS = {"crash": "crash", "unhealthy": "error", "stall": "stall", "starve": "starve"}


@pytest.mark.parametrize("failure", list(FAULTS))
async def test_viewers_keep_their_connections_when_the_engine_fails(stack_factory, failure):
    stack = await stack_factory()
    await stack.add_engines(2)
    stack.url, stack.proxy = await stack.start_proxy()
    url = f"{stack.url}/ace/getstream?id=failing-{failure}"
    viewers = [Watcher(url, keep=False) for _ in range(3)]
    await asyncio.gather(*(viewer.got(188 * 100) for viewer in viewers))
    [old] = await stack.started(1)
    reply = await stack.fault(old["container_id"], FAULTS[failure])
    if reply.status_code == 400:
        pytest.skip(f"this acesim has no {FAULTS[failure]!r} fault yet")
    assert reply.status_code == 200, reply.text
    failed_at = time.monotonic()

    async def moved():
        started = await stack.streams("started")
        return started if started and started[0]["stream_id"] != old["stream_id"] else None

    [new] = await wait_until(moved, timeout=20, what="a new stream on another engine")
    assert new["container_id"] != old["container_id"] and new["content_key"] == old["content_key"]
    ended = [s for s in await stack.streams("ended") if s["stream_id"] == old["stream_id"]]
    assert [s["reason"] for s in ended] == ["failover"]
    # The same connections receive bytes again, from the new session (the old one's reader is gone by now).
    counts = [viewer.count for viewer in viewers]
    await asyncio.gather(
        *(viewer.got(count + 188 * 300, timeout=20) for viewer, count in zip(viewers, counts, strict=True))
    )
    gap = time.monotonic() - failed_at
    assert all(viewer.error is None and not viewer.ended.is_set() for viewer in viewers)
    status = (await stack.status())["sessions"]
    assert len(status) == 1 and status[0]["engine"] == new["container_id"] and status[0]["failovers"] == 1
    print(f"{failure}: bytes again {gap:.1f}s after the fault")
    for viewer in viewers:
        await viewer.close()


async def test_viewers_get_a_clean_end_when_no_engine_is_left(stack_factory):
    stack = await stack_factory(FAILOVER_ATTEMPTS=1, PROXY_START_TIMEOUT_S=3)
    [engine] = await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    viewer = Watcher(f"{stack.url}/ace/getstream?id=last-engine", keep=False)
    await viewer.got(188 * 100)
    [old] = await stack.started(1)
    assert (await stack.fault(engine, "crash")).status_code == 200
    await wait_until(lambda: viewer.ended.is_set(), timeout=20, what="the viewer's connection closed")
    await wait_until(_none_started(stack), timeout=10, what="no started stream left")
    ended = [s for s in await stack.streams("ended") if s["stream_id"] == old["stream_id"]]
    assert [s["reason"] for s in ended] == ["failover"]  # its one attempt found no other engine
    assert (await stack.status())["sessions"] == []


def _none_started(stack):
    async def check():
        return await stack.streams("started") == []

    return check
