"""Proxy replicas: they share one port, and the streams of a replica killed outright do not stay started."""

from __future__ import annotations

from proxy_stack import Watcher
from support import free_port, wait_until


async def test_a_killed_replicas_streams_end_and_its_viewers_play_again_through_another(stack_factory):
    # Heartbeats every STAT_INTERVAL_S/3, judged lost after 1.5 x STAT_INTERVAL_S: 1 s keeps a busy
    # machine's late beat from passing for a dead replica.
    stack = await stack_factory(STAT_INTERVAL_S=1)
    await stack.add_engines(2)
    port = free_port()
    stack.url, doomed = await stack.start_proxy(port)
    viewer = Watcher(f"{stack.url}/ace/getstream?id=orphaned", keep=False)
    await viewer.got(188 * 50)
    [stream] = await stack.started(1)
    _, survivor = await stack.start_proxy(port)  # the same port: SO_REUSEPORT
    doomed.kill()
    await wait_until(lambda: viewer.ended.is_set(), timeout=10, what="the viewer's connection gone with its proxy")

    async def ended():
        return next((s for s in await stack.streams("ended") if s["stream_id"] == stream["stream_id"]), None)

    record = await wait_until(ended, timeout=15, what="the killed replica's stream ended by the state-keeper")
    assert record["reason"] == "proxy_lost"
    again = await wait_until(_reconnected(stack.url), timeout=15, what="the player playing again")
    [new] = await stack.started(1)
    assert new["stream_id"] != stream["stream_id"] and new["proxy"] != stream["proxy"] and survivor.alive()
    await again.close()


def _reconnected(url: str):
    """A player reconnecting until it plays: a connection that reached the dying listener is refused."""

    async def attempt():
        player = Watcher(f"{url}/ace/getstream?id=orphaned", keep=False)
        await wait_until(lambda: player.count or player.ended.is_set(), timeout=10, what="bytes or an end")
        if player.count:
            return player
        await player.close()
        return None

    return attempt
