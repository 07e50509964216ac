"""What a player gets from acesim: a real, paced MPEG-TS stream, the same
bytes for a content on every engine, a looped media file, and HLS.

Real clients check it where one exists (ffprobe, ffmpeg); the rest is parsed
packet by packet with the tests' own reader (ts_reader), not acesim's code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from acesim_harness import REPO_ROOT, SimProcess, StartSim, free_port_range
from ts_reader import TS, RawPlayer, continuity_breaks, packets, pcrs, program

PERIOD_S = 0.384  # acesim's pacing unit; a test allows one or two of them as slack
BACKLOG_S = 5.0  # a joining player gets this much at once


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install Debian's ffmpeg (`bash deploy/ci_setup.sh` does)")
    return found


def ffprobe(url: str) -> dict:
    probe = subprocess.run(
        [tool("ffprobe"), "-v", "error", "-of", "json", "-show_format", "-show_programs", "-show_streams", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout)


def getstream(client: httpx.Client, sim: SimProcess, content: str, port: int | None = None) -> dict:
    body = client.get(sim.url(f"/ace/getstream?id={content}&format=json", port)).json()
    assert body["error"] is None, body
    return body["response"]


def test_ffprobe_reads_an_mpegts_program_from_getstream(engine: SimProcess) -> None:
    # The plain getstream URL, as a player is given it: a 302 to the playback URL.
    found = ffprobe(engine.url("/ace/getstream?id=probe-me"))
    assert "mpegts" in found["format"]["format_name"].split(",")
    [program_info] = found["programs"]
    assert program_info["nb_streams"] >= 1
    assert [stream["codec_type"] for stream in found["streams"]] == ["audio"]


def test_stream_is_paced_at_the_bitrate_with_pcr_and_continuity(start_sim: StartSim, client: httpx.Client) -> None:
    bitrate = 400_000
    sim = start_sim(1, "--bitrate", "400k")
    session = getstream(client, sim, "paced")
    with RawPlayer(session["playback_url"]) as player:
        assert player.status == 200
        started = time.monotonic()
        data = player.read_for(3.0)
        elapsed = time.monotonic() - started
    data = data[: len(data) - len(data) % TS]
    period_bytes = bitrate * PERIOD_S / 8
    # The backlog at once, then real time: neither a firehose nor a trickle.
    assert len(data) <= (BACKLOG_S + elapsed) * bitrate / 8 + 3 * period_bytes
    assert len(data) >= (BACKLOG_S + elapsed) * bitrate / 8 - 3 * period_bytes

    assert continuity_breaks(data) == []
    found = program(data)
    assert found.streams, "PMT lists no stream"
    clock = pcrs(data, found.pcr_pid)
    assert len(clock) > 100
    gaps = [b[1] - a[1] for a, b in pairwise(clock)]
    assert all(0 < gap <= 27_000_000 // 10 for gap in gaps)  # increasing, at least every 100 ms
    (first_index, first_pcr), (last_index, last_pcr) = clock[0], clock[-1]
    stream_rate = (last_index - first_index) * TS * 8 / ((last_pcr - first_pcr) / 27_000_000)
    assert abs(stream_rate - bitrate) / bitrate < 0.02


def _overlap(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    """The parts of two reads of one live stream that cover the same packets."""
    window = a[20 * TS : 30 * TS]
    at = b.find(window)
    assert at >= 0 and at % TS == 0, "the two reads share no packets"
    shift = at - 20 * TS
    start_a, start_b = max(0, -shift), max(0, shift)
    length = min(len(a) - start_a, len(b) - start_b)
    return a[start_a : start_a + length], b[start_b : start_b + length]


def test_a_content_is_the_same_bytes_on_every_engine_and_differs_between_contents(
    start_sim: StartSim, client: httpx.Client
) -> None:
    sim = start_sim(2, "--bitrate", "400k")
    first, second = sim.ports
    urls = [
        getstream(client, sim, content, port)["playback_url"]
        for port, content in ((first, "news"), (second, "news"), (second, "sports"))
    ]
    # Joined together: each join starts 5 s behind live, so reads opened a second apart (a busy
    # machine) would cover different stretches of the channel.
    with RawPlayer(urls[0]) as one, RawPlayer(urls[1]) as two, RawPlayer(urls[2]) as three:
        reads = [one.read(200 * TS), two.read(200 * TS), three.read(200 * TS)]
    on_first, on_second = _overlap(reads[0], reads[1])
    assert len(on_first) >= 150 * TS
    assert on_first == on_second
    assert reads[0][20 * TS : 30 * TS] not in reads[2]


@pytest.fixture(scope="module")
def media_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of test pattern and tone, made by ffmpeg: a real TS file."""
    path = tmp_path_factory.mktemp("media") / "testsrc.ts"
    made = subprocess.run(
        [
            tool("ffmpeg"),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "2",
            "-c:v",
            "mpeg2video",
            "-c:a",
            "mp2",
            "-f",
            "mpegts",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    return path


def test_media_loops_as_one_stream_across_the_seam(start_sim: StartSim, client: httpx.Client, media_file: Path) -> None:
    sim = start_sim(1, "--media", str(media_file))
    file_packets = media_file.stat().st_size // TS
    with RawPlayer(getstream(client, sim, "looped")["playback_url"]) as player:
        data = player.read(3 * file_packets * TS)  # the 5 s backlog spans two seams or more
    assert continuity_breaks(data) == []
    clock = pcrs(data, program(data).pcr_pid)
    assert all(b[1] > a[1] for a, b in pairwise(clock)), "the clock went back at a seam"

    decoded = subprocess.run(
        [tool("ffmpeg"), "-v", "error", "-i", sim.url("/ace/getstream?id=looped"), "-t", "4", "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert decoded.returncode == 0, decoded.stderr
    codecs = {stream["codec_type"] for stream in ffprobe(sim.url("/ace/getstream?id=looped"))["streams"]}
    assert codecs == {"video", "audio"}


def test_unreadable_media_fails_at_start(tmp_path: Path) -> None:
    not_ts = tmp_path / "not.ts"
    not_ts.write_bytes(b"no sync byte here" * 100)
    for media in (not_ts, tmp_path / "missing.ts"):
        run = subprocess.run(
            [sys.executable, "-m", "deploy.acesim", "--port", str(free_port_range(1)), "--media", str(media)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert run.returncode == 2
        assert str(media) in run.stderr


def test_hls_playlist_and_segments(engine: SimProcess, client: httpx.Client) -> None:
    body = client.get(engine.url("/ace/manifest.m3u8?id=hls-channel&format=json")).json()
    assert body["error"] is None
    session = body["response"]
    assert session["playback_url"].endswith(".m3u8")
    assert session["stat_url"] and session["command_url"]

    reply = client.get(session["playback_url"])
    assert reply.status_code == 200
    lines = reply.text.splitlines()
    assert lines[0] == "#EXTM3U"
    segments = [line for line in lines if line and not line.startswith("#")]
    assert len(segments) >= 2
    assert any(line.startswith("#EXTINF:") for line in lines)
    segment = client.get(segments[-1])
    assert segment.status_code == 200
    assert segment.headers["content-type"] == "video/mp2t"
    assert continuity_breaks(segment.content) == []
    assert program(segment.content).streams

    # A player's view: the playlist URL alone (302 to the session's playlist).
    found = ffprobe(engine.url("/ace/manifest.m3u8?id=hls-channel"))
    assert [stream["codec_type"] for stream in found["streams"]] == ["audio"]


def test_getstream_takes_url_and_magnet_keys(engine: SimProcess, client: httpx.Client) -> None:
    infohash = "0123456789abcdef0123456789abcdef01234567"
    by_magnet = client.get(engine.url(f"/ace/getstream?magnet=magnet:?xt=urn:btih:{infohash}&format=json")).json()
    assert by_magnet["response"]["infohash"] == infohash
    by_url = client.get(engine.url("/ace/getstream?url=http://example.invalid/x.acelive&format=json")).json()
    assert by_url["error"] is None
    with RawPlayer(by_url["response"]["playback_url"]) as player:
        assert len(packets(player.read(10 * TS))) >= 10
