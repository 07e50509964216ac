"""Sessions as the stream proxy meets them: stats that move, content that
fails to load, and the playback faults (stall, starve, prebuf, crash, stop),
each seen by a plain HTTP client."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from acesim_harness import SimProcess, StartSim
from ts_reader import TS, RawPlayer

from deploy.acesim import acesim

STATUS_PATH = "/server/api?api_version=3&method=get_status"
DEAD = {"response": None, "error": "unknown playback session id"}
BACKLOG_BYTES = 400_000 // 8 * 6  # more than the 5 s a joining player gets at once, at 400 kbit/s


def wait_for(condition: Callable[[], object], timeout_s: float = 10.0) -> object:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


def getstream(client: httpx.Client, sim: SimProcess, content: str, port: int | None = None) -> dict:
    body = client.get(sim.url(f"/ace/getstream?id={content}&format=json", port)).json()
    assert body["error"] is None, body
    return body["response"]


def fault(client: httpx.Client, sim: SimProcess, query: str, port: int | None = None) -> None:
    reply = client.get(sim.url(f"/__sim/fault?{query}", port))
    assert reply.status_code == 200, reply.text


def caught_up(player: RawPlayer) -> None:
    """Read the joining backlog, so what comes next is live."""
    player.read(BACKLOG_BYTES - 400_000 // 8)
    while player.recv(0.1):  # drain until the engine is waiting for the clock
        pass


def test_stats_move(engine: SimProcess, client: httpx.Client) -> None:
    session = getstream(client, engine, "moving")
    first = client.get(session["stat_url"]).json()["response"]
    assert first["peers"] > 0 and first["speed_down"] > 0 and first["speed_up"] > 0
    later = wait_for(lambda: (stat := client.get(session["stat_url"]).json()["response"])["status"] == "dl" and stat)
    assert later["downloaded"] > first["downloaded"]
    assert later["uploaded"] >= first["uploaded"]
    livepos = later["livepos"]
    assert int(livepos["first"]) <= int(livepos["pos"]) <= int(livepos["last"])


def test_offline_content_fails_to_load(engine: SimProcess, client: httpx.Client) -> None:
    for query in ("id=offline-1", "content_id=OFFLINE-2", "url=offline://x"):
        reply = client.get(engine.url(f"/ace/getstream?{query}&format=json"))
        assert reply.status_code == 200
        assert reply.json() == {"response": None, "error": "failed to load content"}
        manifest = client.get(engine.url(f"/ace/manifest.m3u8?{query}&format=json"))
        assert manifest.json() == {"response": None, "error": "failed to load content"}
    assert client.get(engine.url("/__sim/state")).json()["sessions"] == []
    assert getstream(client, engine, "online-1")["infohash"]


def test_content_keys_pure() -> None:
    assert acesim.content_infohash({}) is None
    assert acesim.content_infohash({"id": "offline"}) == ""
    assert acesim.content_infohash({"magnet": "magnet:?xt=urn:btih:" + "AB" * 20}) == "ab" * 20
    assert acesim.content_infohash({"infohash": "CD" * 20, "id": "offline-x"}) == "cd" * 20


def test_stall_silences_playback_while_the_api_answers(start_sim: StartSim, client: httpx.Client) -> None:
    sim = start_sim(1, "--bitrate", "400k")
    session = getstream(client, sim, "stalling")
    with RawPlayer(session["playback_url"]) as player:
        caught_up(player)
        assert client.get(sim.url("/__sim/state")).json()["sessions"][0]["players"] == 1
        fault(client, sim, "mode=stall")
        # What was already in flight arrives, then nothing.
        wait_for(lambda: player.recv(1.0) is None, timeout_s=5.0)
        assert client.get(sim.url(STATUS_PATH)).status_code == 200
        assert client.get(session["stat_url"]).json()["response"]["peers"] > 0
        assert player.recv(0.5) is None  # the connection is open and silent

        fault(client, sim, "mode=none")
        assert player.read(10 * TS, timeout_s=5.0)  # the same connection plays again


def test_starve_reports_no_peers_and_no_speed(start_sim: StartSim, client: httpx.Client) -> None:
    sim = start_sim(1, "--bitrate", "400k")
    session = getstream(client, sim, "starving")
    fault(client, sim, "mode=starve")
    stat = client.get(session["stat_url"]).json()["response"]
    assert (stat["peers"], stat["speed_down"], stat["speed_up"]) == (0, 0, 0)
    with RawPlayer(session["playback_url"]) as player:
        assert player.read(10 * TS)  # only the stat shows it
    fault(client, sim, "mode=none")
    assert client.get(session["stat_url"]).json()["response"]["peers"] > 0


def test_prebuf_holds_back_the_first_bytes(start_sim: StartSim, client: httpx.Client) -> None:
    sim = start_sim(1, "--bitrate", "400k")
    fault(client, sim, "mode=prebuf&s=1.5")
    assert client.get(sim.url("/__sim/state")).json()["fault"]["s"] == 1.5
    session = getstream(client, sim, "slow-start")
    started = time.monotonic()
    with RawPlayer(session["playback_url"]) as player:
        assert player.status == 200
        assert player.recv(1.0) is None
        assert client.get(session["stat_url"]).json()["response"]["status"] == "prebuf"
        assert player.read(TS, timeout_s=5.0)
        assert time.monotonic() - started >= 1.5


def test_crash_closes_open_playback(start_sim: StartSim, client: httpx.Client) -> None:
    sim = start_sim(2, "--bitrate", "400k")  # two engines: the process outlives the crash
    victim, survivor = sim.ports
    session = getstream(client, sim, "doomed", victim)
    with RawPlayer(session["playback_url"]) as player:
        caught_up(player)  # the player reads; only the crash can end it
        fault(client, sim, "mode=crash", victim)
        wait_for(lambda: player.recv(1.0) == b"", timeout_s=5.0)
    assert sim.proc.poll() is None
    try:
        client.get(session["stat_url"])
        raise AssertionError("a crashed engine still answers")
    except httpx.ConnectError:
        pass
    assert client.get(sim.url(STATUS_PATH, survivor)).status_code == 200


def test_stop_ends_playback_stat_and_hls(engine: SimProcess, client: httpx.Client) -> None:
    session = getstream(client, engine, "to-stop")
    hls = client.get(engine.url("/ace/manifest.m3u8?id=to-stop&format=json")).json()["response"]
    segment = [line for line in client.get(hls["playback_url"]).text.splitlines() if line.endswith(".ts")][-1]
    with RawPlayer(session["playback_url"]) as player:
        player.read(TS)
        assert client.get(session["command_url"] + "?method=stop").json() == {"response": "ok", "error": None}
        wait_for(lambda: player.recv(1.0) == b"", timeout_s=5.0)
    assert client.get(session["stat_url"]).json() == DEAD
    assert client.get(hls["stat_url"]).json() == DEAD
    assert client.get(hls["playback_url"]).status_code == 404
    assert client.get(segment).status_code == 404
