"""One upstream per channel, fanned out: many viewers, few engine sessions, every byte in order."""

from __future__ import annotations

import asyncio
import socket

from proxy_stack import Watcher
from support import wait_until
from ts import continuity_breaks


async def test_thirty_viewers_on_three_channels_share_three_engine_sessions(stack_factory):
    stack = await stack_factory()
    engines = await stack.add_engines(2)
    stack.url, stack.proxy = await stack.start_proxy()
    channels = ["alpha", "bravo", "charlie"]
    viewers = [Watcher(f"{stack.url}/ace/getstream?id={channels[i % 3]}") for i in range(30)]
    await asyncio.gather(*(viewer.got(188 * 400) for viewer in viewers))
    started = await stack.started(3)
    assert sorted(s["content_key"] for s in started) == channels
    sessions = [s for cid in engines for s in (await stack.sim_state(cid))["sessions"]]
    assert len(sessions) == 3
    status = await stack.status()
    assert sorted(s["viewers"] for s in status["sessions"]) == [10, 10, 10]
    for viewer in viewers:
        assert viewer.status == 200
        assert continuity_breaks(bytes(viewer.data)) == 0
    await asyncio.gather(*(viewer.close() for viewer in viewers))
    await wait_until(_none_started(stack), timeout=10, what="every stream ended after the viewers left")


def _none_started(stack):
    async def check():
        return not await stack.streams("started")

    return check


async def test_a_viewer_that_stops_reading_is_dropped_and_the_others_keep_going(stack_factory):
    # Larger than an engine's burst at join (acesim sends 5 s of backlog at once), far smaller than a stalled
    # socket's worth of minutes.
    stack = await stack_factory(PROXY_BUFFER_BYTES=188 * 3000)
    await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    url = f"{stack.url}/ace/getstream?id=slowpoke"
    fast = Watcher(url)
    await fast.got(188 * 100)
    slow = await _silent_viewer(stack.url, "/ace/getstream?id=slowpoke")  # reads its head, then nothing
    try:
        await wait_until(_viewers(stack, 2), what="both viewers on the channel")
        await wait_until(_viewers(stack, 1), timeout=40, what="the viewer that stopped reading dropped")
        before = fast.count
        await fast.got(before + 188 * 200)
        assert fast.error is None and not fast.ended.is_set()
        assert continuity_breaks(bytes(fast.data)) == 0
    finally:
        slow.close()
        await fast.close()


async def _silent_viewer(base: str, path: str) -> socket.socket:
    """A viewer with a tiny receive window that never reads after its first bytes."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    await asyncio.to_thread(sock.connect, (host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await asyncio.to_thread(sock.recv, 1024)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _viewers(stack, count: int):
    async def check():
        sessions = (await stack.status())["sessions"]
        return len(sessions) == 1 and sessions[0]["viewers"] == count

    return check
