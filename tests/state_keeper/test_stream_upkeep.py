"""After a stream starts (DESIGN §10): exclusions in selection, figures on the record, and no stream
left started for ever — its proxy gone (`proxy_lost`) or its engine session gone (`session_gone`).

Real nats-server and state-keeper processes; the fake proxy replicas are `Membership` members, the
proxies' own protocol; the engine is a real acesim process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import timedelta

import httpx
from keeper_helpers import publish, register_healthy
from support import collect_dropped_connections, free_port, keeper_stats, request_json, wait_for_port, wait_until

from shared import names
from shared.bus import connect
from shared.config import load_config
from shared.kv import read
from shared.membership import Membership
from shared.schemas import PlaybackStats, StreamEnded, StreamStarted, StreamStats, decode_stream, encode, utcnow

INTERVAL_S = 1.0  # STAT_INTERVAL_S: proxies' heartbeat TTL 1.5 s, a sweep per second, figures stale after 3 s
FAST = {"STAT_INTERVAL_S": INTERVAL_S}


async def record(bus, stream_id: str):
    found = await read(bus.streams, stream_id, decode_stream)
    return found.value if found else None


async def status_of(bus, stream_id: str) -> tuple[str, str | None] | None:
    found = await record(bus, stream_id)
    return None if found is None else (found.status, found.reason)


async def start_stream(bus, stream_id: str, container_id: str = "e1", **fields) -> None:
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id=stream_id, container_id=container_id, **fields))
    await wait_until(lambda: _is(bus, stream_id, ("started", None)), what=f"{stream_id} started")


async def _is(bus, stream_id: str, expected) -> bool:
    return await status_of(bus, stream_id) == expected


def stats(stream_id: str, proxy: str | None = "p1", peers: int = 7) -> StreamStats:
    figures = PlaybackStats(
        status="dl", peers=peers, speed_down=640, speed_up=12, downloaded=1 << 20, reported_at=utcnow()
    )
    return StreamStats(stream_id=stream_id, stats=figures, proxy=proxy)


async def test_an_excluded_engine_is_never_offered_not_even_to_share_its_content(start_keepers, bus, nc):
    await start_keepers(1)
    for cid in ("e1", "e2"):
        await register_healthy(bus, nc, cid)
    first, _ = await request_json(nc, names.ENGINE_SELECT, {"content_key": "news"})
    playing = first["engine"]["container_id"]
    await start_stream(bus, "v1", playing, content_key="news", reservation_id=first["reservation_id"])
    shared, _ = await request_json(nc, names.ENGINE_SELECT, {"content_key": "news"})
    assert shared["engine"]["container_id"] == playing and shared["shared"] is True

    other, _ = await request_json(nc, names.ENGINE_SELECT, {"content_key": "news", "exclude": [playing]})
    assert other["engine"]["container_id"] != playing and other["shared"] is False
    body, headers = await request_json(nc, names.ENGINE_SELECT, {"content_key": "news", "exclude": ["e1", "e2"]})
    assert headers.get("Nats-Service-Error-Code") == "503" and body["error"] == "no_capacity"


@contextlib.asynccontextmanager
async def proxy_replica(bus, member_id: str):
    """A proxy replica as the state-keeper sees one: a member of the proxy group, heartbeating."""
    stop = asyncio.Event()
    member = Membership(bus, names.PROXY_GROUP, member_id, INTERVAL_S)
    await member.start()
    task = asyncio.create_task(member.run(stop))
    try:
        yield member
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await member.stop()


async def test_figures_land_on_started_streams_only_and_bad_reports_are_counted(start_keepers, bus, nc, nats_server):
    """And `aceorch streams` shows them."""
    await start_keepers(1, **FAST)
    await register_healthy(bus, nc, "e1")
    async with proxy_replica(bus, "p1"):
        await _figures(bus, nc, nats_server)


async def _figures(bus, nc, nats_server) -> None:
    await start_stream(bus, "live", proxy="p1")
    await start_stream(bus, "over", proxy="p1")
    await publish(bus, names.STREAM_ENDED, StreamEnded(stream_id="over", container_id="e1", reason="viewer_left"))
    await wait_until(lambda: _is(bus, "over", ("ended", "viewer_left")), what="over ended")

    for bad in (b"{not json", encode({"stream_id": "live", "stats": {"peers": -1}}), b'{"stream_id": 5}'):
        await nc.publish(names.STREAM_STATS, bad)
    await nc.publish(names.STREAM_STATS, encode(stats("over")))
    await nc.publish(names.STREAM_STATS, encode(stats("never-started")))
    await nc.publish(names.STREAM_STATS, encode(stats("live", peers=9)))

    live = await wait_until(lambda: _with_stats(bus, "live"), what="figures on the started stream")
    assert live.stats.peers == 9 and live.stats.speed_down == 640 and live.proxy == "p1"
    counted = await wait_until(lambda: _stats_counted(nc, 6), what="every report counted")
    assert counted == {"applied": 1, "ignored": 2, "invalid": 2, "malformed_json": 1}
    assert (await record(bus, "over")).stats is None, "an ended stream keeps the figures it ended with"
    assert await record(bus, "never-started") is None, "no record is made out of figures"

    listing = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "streams",
        "--nats-url",
        nats_server.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(listing.communicate(), 30))[0].decode()
    assert listing.returncode == 0, output
    lines = output.splitlines()
    assert len(lines) == 2, output
    header, row = lines
    assert header.split()[4:6] == ["PEERS", "DOWN/UP"] and row.split()[:1] + row.split()[4:7] == [
        "live",
        "9",
        "640/12",
        "KiB/s",
    ], output


async def _with_stats(bus, stream_id: str):
    found = await record(bus, stream_id)
    return found if found is not None and found.stats is not None else None


async def _stats_counted(nc, total: int) -> dict | None:
    counted = (await keeper_stats(nc)).get("stream_stats", {})
    return counted if sum(counted.values()) >= total else None


async def test_streams_of_a_proxy_that_stopped_heartbeating_end_as_proxy_lost(start_keepers, bus, nc, nats_server):
    await start_keepers(1, **FAST)
    await register_healthy(bus, nc, "e1")
    dying_bus = await connect(load_config({"NATS_URL": nats_server.url}), "proxy-a")
    try:
        async with proxy_replica(dying_bus, "proxy-a"), proxy_replica(bus, "proxy-b"):
            await start_stream(bus, "a1", proxy="proxy-a")
            await start_stream(bus, "b1", proxy="proxy-b")
            await start_stream(bus, "x1")  # an external proxy's: no member id, no stat URL

            await dying_bus.nc.close()  # proxy-a dies: no goodbye, its heartbeat just stops
            await wait_until(lambda: _is(bus, "a1", ("ended", "proxy_lost")), timeout=10, what="a1 ended: proxy_lost")
            # A later sweep still judges proxy-a lost: once a2 ends, b1 and x1 have been through sweeps after a1's.
            await start_stream(bus, "a2", proxy="proxy-a")
            await wait_until(lambda: _is(bus, "a2", ("ended", "proxy_lost")), timeout=10, what="a2 ended: proxy_lost")
            assert await status_of(bus, "b1") == ("started", None), "a live proxy's stream stays"
            assert await status_of(bus, "x1") == ("started", None), "a stream without a proxy stays"
            engine, _ = await request_json(nc, names.ENGINE_GET, {"container_id": "e1"})
            assert sorted(engine["streams"]) == ["b1", "x1"], "the ends went through the events, engine included"
    finally:
        await dying_bus.close()
        collect_dropped_connections()


async def test_a_stream_whose_engine_session_is_gone_ends_and_one_on_an_unreachable_engine_stays(
    start_keepers, bus, nc, processes, tmp_path
):
    port = free_port()
    processes.start(
        "acesim", [sys.executable, "-m", "deploy.acesim", "--port", str(port), "--cache-dir", str(tmp_path / "sim")]
    )
    wait_for_port(port)
    await start_keepers(1, **FAST)
    await register_healthy(bus, nc, "e1", port=port)
    async with _silent_server() as hung_port, httpx.AsyncClient(timeout=5) as http:
        # Checked in the same sweeps as the gone session, started first: never judged later than it.
        down_port = free_port()
        await register_healthy(bus, nc, "e-down", port=down_port)
        await register_healthy(bus, nc, "e-hung", port=hung_port)
        await start_stream(bus, "down", "e-down", stat_url=f"http://127.0.0.1:{down_port}/ace/stat/x/y")
        await start_stream(bus, "hung", "e-hung", stat_url=f"http://127.0.0.1:{hung_port}/ace/stat/x/y")
        alive, session = [
            (await http.get(f"http://127.0.0.1:{port}/ace/getstream", params={"id": cid, "format": "json"})).json()[
                "response"
            ]
            for cid in ("channel-1", "channel-2")
        ]
        # No figures for a minute by its stamp: its session is checked at every sweep, and kept.
        await start_stream(bus, "alive", stat_url=alive["stat_url"], started_at=utcnow() - timedelta(seconds=60))
        await start_stream(
            bus,
            "played",
            stat_url=session["stat_url"],
            command_url=session["command_url"],
            playback_session_id=session["playback_session_id"],
        )
        await http.get(session["command_url"], params={"method": "stop"})
        await wait_until(
            lambda: _is(bus, "played", ("ended", "session_gone")), timeout=10, what="played ended: session_gone"
        )
        # A stat URL that is not on the stream's engine is never fetched (request forgery), even one
        # that would say the session is gone: due in the same sweep as `replayed`, and kept.
        await start_stream(
            bus, "forged", "e-down", stat_url=session["stat_url"], started_at=utcnow() - timedelta(seconds=60)
        )
        # Started long ago by its stamp, so due at once: its end comes from a sweep after the one that
        # ended `played`, so every check of `down` and `hung` in that one has finished too.
        await start_stream(bus, "replayed", stat_url=session["stat_url"], started_at=utcnow() - timedelta(seconds=60))
        await wait_until(
            lambda: _is(bus, "replayed", ("ended", "session_gone")), timeout=10, what="replayed ended: session_gone"
        )
    assert await status_of(bus, "alive") == ("started", None), "a session the engine still plays"
    assert await status_of(bus, "down") == ("started", None), "an engine that is not answering proves nothing"
    assert await status_of(bus, "hung") == ("started", None), "nor one that never replies"
    assert await status_of(bus, "forged") == ("started", None), "a stat URL on another engine is not fetched"


@contextlib.asynccontextmanager
async def _silent_server():
    """A port that accepts connections and never answers (a hung engine)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader, writer):
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
