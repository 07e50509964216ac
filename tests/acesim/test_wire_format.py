"""acesim speaks the real engine's wire format (one engine, as a subprocess)."""

from __future__ import annotations

import hashlib
import re
import socket
import time
from typing import Any

import httpx
from acesim_harness import HOST, SimProcess

HEX40 = re.compile(r"^[0-9a-f]{40}$")
STATUS_PATH = "/server/api?api_version=3&method=get_status"


def getstream(engine: SimProcess, client: httpx.Client, content_id: str = "content-1") -> dict[str, Any]:
    reply = client.get(engine.url(f"/ace/getstream?id={content_id}&format=json"))
    assert reply.status_code == 200
    body = reply.json()
    assert body["error"] is None
    return body["response"]


def sim_state(engine: SimProcess, client: httpx.Client) -> dict[str, Any]:
    return client.get(engine.url("/__sim/state")).json()


# -- service API -------------------------------------------------------------


def test_get_status_has_exactly_the_engine_shape(engine: SimProcess, client: httpx.Client) -> None:
    reply = client.get(engine.url(STATUS_PATH))
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["server"].startswith("acesim/")
    version = {"code": 3021100, "platform": "linux", "version": "3.2.11"}
    assert reply.json() == {"result": {"playlist_loaded": True, "version": version}}


def test_get_network_connection_status(engine: SimProcess, client: httpx.Client) -> None:
    reply = client.get(engine.url("/server/api?api_version=3&method=get_network_connection_status"))
    assert reply.json() == {"result": {"connected": True}}


def test_get_version(engine: SimProcess, client: httpx.Client) -> None:
    body = client.get(engine.url("/webui/api/service?method=get_version")).json()
    assert body["error"] is None
    result = body["result"]
    assert {k: result[k] for k in ("code", "platform", "version")} == {
        "code": 3021100,
        "platform": "linux",
        "version": "3.2.11",
    }
    assert isinstance(result["revision"], str) and result["revision"]


def test_unknown_or_missing_method_is_an_error_object(engine: SimProcess, client: httpx.Client) -> None:
    for path in ("/server/api?api_version=3&method=nope", "/server/api?api_version=3"):
        reply = client.get(engine.url(path))
        assert reply.status_code == 200
        body = reply.json()
        assert body["result"] is None
        assert body["error"].startswith("unknown method")
    assert client.get(engine.url("/server/api?method=nope")).json()["error"] == "unknown method: nope"
    body = client.get(engine.url("/webui/api/service?method=nope")).json()
    assert body["result"] is None and "nope" in body["error"]


def test_unknown_path_is_404_json(engine: SimProcess, client: httpx.Client) -> None:
    reply = client.get(engine.url("/no/such/thing"))
    assert reply.status_code == 404
    assert reply.json() == {"error": "not found"}


# -- getstream ---------------------------------------------------------------


def test_getstream_json_fields_types_and_urls(engine: SimProcess, client: httpx.Client) -> None:
    response = getstream(engine, client, "abc123")
    assert set(response) == {
        "playback_url",
        "stat_url",
        "command_url",
        "infohash",
        "playback_session_id",
        "is_live",
        "is_encrypted",
        "client_session_id",
    }
    infohash = response["infohash"]
    assert infohash == hashlib.sha1(b"abc123").hexdigest()
    key = response["playback_session_id"]
    assert HEX40.match(key)
    base = f"http://{HOST}:{engine.port}"
    assert response["playback_url"] == f"{base}/ace/r/{infohash}/{key}"
    assert response["stat_url"] == f"{base}/ace/stat/{infohash}/{key}"
    assert response["command_url"] == f"{base}/ace/cmd/{infohash}/{key}"
    assert response["is_live"] == 1
    assert response["is_encrypted"] == 0
    assert isinstance(response["client_session_id"], int)


def test_getstream_accepts_content_id_and_infohash(engine: SimProcess, client: httpx.Client) -> None:
    by_content_id = client.get(engine.url("/ace/getstream?content_id=xyz&format=json&pid=p1")).json()
    assert by_content_id["response"]["infohash"] == hashlib.sha1(b"xyz").hexdigest()
    given = "0123456789abcdef0123456789abcdef01234567"
    by_infohash = client.get(engine.url(f"/ace/getstream?infohash={given}&format=json")).json()
    assert by_infohash["response"]["infohash"] == given


def test_getstream_urls_follow_the_host_header(engine: SimProcess, client: httpx.Client) -> None:
    reply = client.get(engine.url("/ace/getstream?id=a&format=json"), headers={"Host": "engine-7:6878"})
    assert reply.json()["response"]["stat_url"].startswith("http://engine-7:6878/ace/stat/")


def test_getstream_without_id_is_an_error(engine: SimProcess, client: httpx.Client) -> None:
    body = client.get(engine.url("/ace/getstream?format=json")).json()
    assert body["response"] is None
    assert isinstance(body["error"], str) and body["error"]


def test_getstream_without_format_json_redirects(engine: SimProcess, client: httpx.Client) -> None:
    reply = client.get(engine.url("/ace/getstream?id=abc123"), follow_redirects=False)
    assert reply.status_code == 302
    infohash = hashlib.sha1(b"abc123").hexdigest()
    playback = rf"^http://{HOST}:{engine.port}/ace/r/{infohash}/[0-9a-f]{{40}}$"
    assert re.match(playback, reply.headers["location"])


# -- playback, stat, command ---------------------------------------------------


def read_stream(client: httpx.Client, url: str, *, min_bytes: int = 0, seconds: float = 0.0) -> tuple[str, bytes]:
    """Read a playback stream until both limits are reached, then hang up."""
    received = bytearray()
    deadline = time.monotonic() + seconds
    with client.stream("GET", url) as reply:
        assert reply.status_code == 200
        for chunk in reply.iter_bytes():
            received += chunk
            if len(received) >= min_bytes and time.monotonic() >= deadline:
                break
        return reply.headers["content-type"], bytes(received)


def test_playback_serves_mpeg_ts(engine: SimProcess, client: httpx.Client) -> None:
    response = getstream(engine, client)
    content_type, data = read_stream(client, response["playback_url"], min_bytes=188 * 50)
    assert content_type == "video/mp2t"
    assert data[0] == 0x47
    packets = len(data) // 188
    assert all(data[i * 188] == 0x47 for i in range(packets))


def test_stat_fields_and_prebuf_then_dl(engine: SimProcess, client: httpx.Client) -> None:
    response = getstream(engine, client)
    body = client.get(response["stat_url"]).json()
    assert body["error"] is None
    stat = body["response"]
    assert stat["status"] == "prebuf"
    for name in ("peers", "speed_down", "speed_up", "downloaded", "uploaded"):
        assert isinstance(stat[name], int), name
    livepos = {"pos", "first", "last", "live_first", "live_last", "first_ts", "last_ts", "is_live", "buffer_pieces"}
    assert set(stat["livepos"]) == livepos
    assert all(isinstance(value, str) and value.isdigit() for value in stat["livepos"].values())
    time.sleep(2.3)
    assert client.get(response["stat_url"]).json()["response"]["status"] == "dl"


def test_stop_ends_the_session(engine: SimProcess, client: httpx.Client) -> None:
    response = getstream(engine, client)
    unknown = client.get(response["command_url"] + "?method=dance").json()
    assert unknown == {"response": None, "error": "unknown method"}
    assert client.get(response["command_url"] + "?method=stop").json() == {"response": "ok", "error": None}
    dead = {"response": None, "error": "unknown playback session id"}
    assert client.get(response["stat_url"]).json() == dead
    assert client.get(response["command_url"] + "?method=stop").json() == dead
    assert sim_state(engine, client)["sessions"] == []


def test_stop_ends_a_playing_stream(engine: SimProcess, client: httpx.Client) -> None:
    response = getstream(engine, client)
    with httpx.Client(timeout=5.0) as player, player.stream("GET", response["playback_url"]) as reply:
        chunks = reply.iter_bytes()
        assert next(chunks)[0] == 0x47
        client.get(response["command_url"] + "?method=stop")
        for _ in chunks:  # drains and ends: the engine closes the body
            pass


def test_one_session_per_content(engine: SimProcess, client: httpx.Client) -> None:
    first = getstream(engine, client, "shared")
    second = getstream(engine, client, "shared")
    assert first["infohash"] == second["infohash"]
    assert first["playback_session_id"] != second["playback_session_id"]
    sessions = sim_state(engine, client)["sessions"]
    assert len(sessions) == 1
    assert sessions[0]["keys"] == [first["playback_session_id"], second["playback_session_id"]]

    assert client.get(second["command_url"] + "?method=stop").json()["response"] == "ok"
    assert client.get(first["stat_url"]).json() == {"response": None, "error": "unknown playback session id"}


def test_cache_grows_while_playing_and_survives_deletion(engine: SimProcess, client: httpx.Client) -> None:
    response = getstream(engine, client)
    read_stream(client, response["playback_url"], seconds=2.5)
    state = sim_state(engine, client)
    assert state["cache_dir"] == str(engine.cache_dir)
    assert state["cache_bytes"] > 0
    assert state["sessions"][0]["bytes"] > 0
    on_disk = sum(path.stat().st_size for path in engine.cache_dir.rglob("*") if path.is_file())
    assert on_disk > 0

    # The janitor empties the directory (even removes it); the engine carries on.
    for path in engine.cache_dir.iterdir():
        path.unlink()
    engine.cache_dir.rmdir()
    time.sleep(1.5)
    assert sim_state(engine, client)["cache_bytes"] > 0
    assert client.get(engine.url(STATUS_PATH)).status_code == 200


def test_requests_are_counted(engine: SimProcess, client: httpx.Client) -> None:
    before = sim_state(engine, client)["requests"]
    client.get(engine.url(STATUS_PATH))
    client.get(engine.url(STATUS_PATH))
    assert sim_state(engine, client)["requests"] == before + 2


# -- HTTP/1.1 connection handling --------------------------------------------


def _raw_exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    header_block, body = head.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"Content-Length: (\d+)", header_block).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(4096)
    return header_block


def test_keep_alive_reuses_the_connection_and_close_is_honoured(engine: SimProcess) -> None:
    request = f"GET {STATUS_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection((HOST, engine.port), timeout=5) as sock:
        for _ in range(3):
            head = _raw_exchange(sock, request)
            assert head.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in head
        closing = f"GET {STATUS_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        assert b"Connection: close" in _raw_exchange(sock, closing)
        assert sock.recv(1) == b""  # the server closed its side


def test_httpx_pool_reuses_one_connection(engine: SimProcess, client: httpx.Client) -> None:
    ports = set()
    for _ in range(5):
        reply = client.get(engine.url(STATUS_PATH))
        stream = reply.extensions["network_stream"]
        ports.add(stream.get_extra_info("client_addr")[1])
    assert len(ports) == 1
