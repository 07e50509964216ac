"""Stop semantics, zapping and hostile requests: nothing is stopped too early, nothing is left behind."""

from __future__ import annotations

import asyncio
import json
import random
import socket

import httpx
from proxy_stack import Watcher
from support import wait_until


def nothing_left(stack):
    """No started stream, no reservation or stream on any engine record, no acesim session."""

    async def check():
        if await stack.streams("started"):
            return False
        for cid in stack.engines:
            record = await stack.engine_record(cid)
            if record and (record.get("streams") or record.get("reservations")):
                return False
        return await stack.sim_sessions() == 0

    return check


def _ended(stack, stream_id):
    async def check():
        return next((s for s in await stack.streams("ended") if s["stream_id"] == stream_id), None)

    return check


async def test_a_viewer_leaving_never_stops_a_watched_stream_and_the_last_one_ends_it_after_the_linger(stack_factory):
    stack = await stack_factory(PROXY_LINGER_S=1.5)
    [engine] = await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    url = f"{stack.url}/ace/getstream?id=shared-channel"
    first = Watcher(url)
    await first.got(188 * 50)
    [stream] = await stack.started(1)
    await first.close()
    back = Watcher(url)  # back within the linger: the same stream, the same engine session
    await back.got(188 * 50)
    second = Watcher(url)
    await second.got(188 * 50)
    await back.close()
    # What must not happen is an end after the linger: give it the linger and a second to happen.
    await asyncio.sleep(1.5 + 1.0)
    count = second.count
    await second.got(count + 188 * 100)  # still flowing after the linger
    assert second.error is None and not second.ended.is_set()
    assert [s["stream_id"] for s in await stack.streams("started")] == [stream["stream_id"]]
    assert len((await stack.sim_state(engine))["sessions"]) == 1
    await second.close()
    ended = await wait_until(_ended(stack, stream["stream_id"]), timeout=10, what="stream.ended after the linger")
    assert ended["reason"] == "viewers_left"
    await wait_until(nothing_left(stack), timeout=10, what="engine session stopped, nothing left")


async def test_zapping_and_hanging_up_before_the_first_byte_leave_nothing_behind(stack_factory):
    stack = await stack_factory(PROXY_LINGER_S=0.3)
    await stack.add_engines(2)
    stack.url, stack.proxy = await stack.start_proxy()
    rng = random.Random(7)

    async def zapper() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(6):
                channel = f"zap-{rng.randrange(4)}"
                async with client.stream("GET", f"{stack.url}/ace/getstream?id={channel}") as response:
                    assert response.status_code == 200
                    if rng.random() < 0.5:
                        await anext(response.aiter_raw())  # watch a moment, or leave at once

    await asyncio.wait_for(asyncio.gather(*(zapper() for _ in range(4))), timeout=60)
    host, port = stack.url.removeprefix("http://").split(":")
    for i in range(5):  # players that hang up before the engine sent anything
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"GET /ace/getstream?id=gone-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await wait_until(nothing_left(stack), timeout=15, what="no stream, reservation or session left")
    assert stack.proxy.alive()


async def test_hostile_and_refused_requests_get_a_clear_error_and_start_nothing(stack_factory):
    stack = await stack_factory()
    [engine] = await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy(PROXY_HEADER_TIMEOUT_S=1)
    http = stack.http
    cases = {
        "/ace/getstream": 400,  # no content named
        "/ace/getstream?id=": 400,
        "/ace/getstream?id=%00evil": 400,
        "/ace/getstream?infohash=xyz": 400,
        "/ace/getstream?id=a&infohash=" + "0" * 40: 400,
        "/ace/getstream?url=javascript:alert(1)": 400,
        "/ace/getstream?id=" + "a" * 5000: 414,
        "/nope": 404,
    }
    for path, status in cases.items():
        reply = await http.get(stack.url + path)
        assert reply.status_code == status, (path, reply.text)
        assert reply.json()["code"] == status and reply.json()["error"]
    assert (await http.post(stack.url + "/ace/getstream?id=x")).status_code == 405
    huge = await http.get(stack.url + "/ace/getstream?id=x", headers={"X-Junk": "j" * 20000})
    assert huge.status_code == 431
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # slowloris: a head that never ends
        sock.sendall(b"GET /ace/getstream?id=slow HTTP/1.1\r\nHost: x\r\n")
        assert (await asyncio.to_thread(sock.recv, 4096)).startswith(b"HTTP/1.1 408")
    assert await stack.streams("started") == [] and await stack.sim_sessions() == 0

    # Content the engine refuses: its error, at once.
    async with http.stream("GET", f"{stack.url}/ace/getstream?{await _refused_query(stack, engine)}") as reply:
        body = json.loads(await reply.aread()) if reply.status_code != 200 else None
    assert reply.status_code == 404 and body["code"] == 404, (reply.status_code, body)
    # No stream and no engine session; the selection's reservation lapses by itself (RESERVATION_TTL_S):
    # the contract has no message that releases a reservation without a stream.
    assert await stack.streams("started") == [] and await stack.streams("ended") == []
    assert await stack.sim_sessions() == 0
    assert (await stack.engine_record(engine))["streams"] == []
    assert stack.proxy.alive()


async def _refused_query(stack, engine: str) -> str:
    """A getstream query this acesim refuses: an `offline…` id where it knows the rule, else a url=
    (earlier versions played any id and knew no url= content)."""
    port = stack.engines[engine]
    probe = await stack.http.get(f"http://127.0.0.1:{port}/ace/getstream", params={"format": "json", "id": "offline-x"})
    if probe.json()["error"]:
        return "id=offline-channel"
    await stack.http.get(probe.json()["response"]["command_url"], params={"method": "stop"})  # leave no session
    return "url=http://example.invalid/none.torrent"


async def test_a_stopping_proxy_stays_a_member_until_it_has_ended_its_streams(stack_factory):
    # The engine answers the stop command after 2 s; the state-keeper's lost-proxy sweep runs every 0.5 s
    # (STAT_INTERVAL_S). Had the proxy left the group first, the keeper would end the stream as proxy_lost.
    stack = await stack_factory()
    [engine] = await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    viewer = Watcher(f"{stack.url}/ace/getstream?id=slow-goodbye", keep=False)
    await viewer.got(188 * 50)
    [stream] = await stack.started(1)
    assert (await stack.fault(engine, "slow", ms="2000")).status_code == 200
    assert stack.proxy.stop() == 0
    ended = await wait_until(_ended(stack, stream["stream_id"]), timeout=15, what="stream.ended on shutdown")
    assert ended["reason"] == "proxy_stopped"


async def test_a_stopped_proxy_ends_its_streams_and_stops_their_engine_sessions(stack_factory):
    stack = await stack_factory()
    await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    viewer = Watcher(f"{stack.url}/ace/getstream?id=until-shutdown", keep=False)
    await viewer.got(188 * 50)
    [stream] = await stack.started(1)
    assert stack.proxy.stop() == 0
    ended = await wait_until(_ended(stack, stream["stream_id"]), timeout=10, what="stream.ended on shutdown")
    assert ended["reason"] == "proxy_stopped"
    await wait_until(nothing_left(stack), timeout=10, what="engine session stopped")
    await wait_until(lambda: viewer.ended.is_set(), timeout=5, what="the viewer's connection closed")
