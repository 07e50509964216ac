"""HLS through the proxy: a real player (ffprobe) reads it, viewers of one content share one engine session,
segment URLs point only at the proxy, and the session ends once nobody asks for the playlist any more."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

from support import wait_until
from test_proxy_lifecycle import _ended, nothing_left

from services.proxy.hls import IDLE_TARGETS

LINGER_S = 0.5


def _uris(playlist: str) -> list[str]:
    return [line.strip() for line in playlist.splitlines() if line.strip() and not line.startswith("#")]


async def test_hls_viewers_share_one_engine_session_through_proxy_urls_until_they_stop_asking(stack_factory):
    stack = await stack_factory(PROXY_LINGER_S=LINGER_S)
    [engine] = await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    manifest = f"{stack.url}/ace/manifest.m3u8?id=hls-channel"

    probe = await asyncio.to_thread(
        subprocess.run,
        [
            "ffprobe",
            "-v",
            "error",
            "-show_programs",
            "-show_streams",
            "-of",
            "json",
            "-rw_timeout",
            "10000000",
            manifest,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["programs"] and report["streams"], report

    # A second viewer (and the first one's reloads): the same stream, the same engine session.
    first, second = await asyncio.gather(stack.http.get(manifest), stack.http.get(manifest))
    for reply in (first, second):
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert reply.text.startswith("#EXTM3U") and "#EXT-X-TARGETDURATION:" in reply.text
    uris = _uris(second.text)
    assert uris and all(uri.startswith("/ace/hls/") and uri.endswith(".ts") for uri in uris), second.text
    assert str(stack.engines[engine]) not in second.text
    [stream] = await stack.started(1)
    assert stream["content_key"] == "hls-channel"
    [session] = (await stack.sim_state(engine))["sessions"]
    assert len(session["keys"]) == 1  # one engine session (one pid) for every HLS viewer

    segment = await stack.http.get(stack.url + uris[-1])
    assert segment.status_code == 200 and segment.headers["content-type"] == "video/mp2t"
    assert len(segment.content) >= 188 * 10 and len(segment.content) % 188 == 0
    assert segment.content[::188] == b"\x47" * (len(segment.content) // 188)

    token = uris[-1].split("/")[3]
    for path in (f"/ace/hls/{token}/999999.ts", "/ace/hls/not-a-token/0.ts", f"/ace/hls/{token}/x.ts"):
        reply = await stack.http.get(stack.url + path)
        assert reply.status_code == 404 and reply.json()["code"] == 404, (path, reply.text)

    # Nobody asks any more: after the linger plus IDLE_TARGETS target durations the stream ends.
    stopped_at = time.monotonic()
    ended = await wait_until(
        _ended(stack, stream["stream_id"]),
        timeout=LINGER_S + IDLE_TARGETS * 4 + 10,
        what="stream.ended once HLS viewers stopped asking",
    )
    assert ended["reason"] == "viewers_left"
    assert time.monotonic() - stopped_at >= LINGER_S + IDLE_TARGETS * 3  # not before (targets ≥ 3 s here)
    await wait_until(nothing_left(stack), timeout=10, what="engine session stopped, nothing left")
    reply = await stack.http.get(stack.url + uris[-1])
    assert reply.status_code == 404 and reply.json()["code"] == 404
    assert stack.proxy.alive()


async def test_bad_or_refused_hls_content_and_an_engine_that_dies_get_clean_errors(stack_factory):
    stack = await stack_factory()
    [engine] = await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    cases = {"": 400, "?infohash=xyz": 400, "?id=a&url=http://x/y": 400, "?id=offline-channel": 404}
    for query, status in cases.items():
        reply = await stack.http.get(f"{stack.url}/ace/manifest.m3u8{query}")
        assert reply.status_code == status and reply.json()["code"] == status, (query, reply.text)
    assert (await stack.status())["hls"] == []  # the refused one left no session behind
    manifest = f"{stack.url}/ace/manifest.m3u8?id=dies"
    assert (await stack.http.get(manifest)).status_code == 200
    [stream] = await stack.started(1)
    assert (await stack.fault(engine, "crash")).status_code == 200

    async def an_error():
        reply = await stack.http.get(manifest)  # the client's timeout (10 s) is the bound on each answer
        return reply if reply.status_code != 200 else None

    reply = await wait_until(an_error, timeout=10, interval=0.2, what="a playlist error after the crash")
    assert reply.status_code in (502, 504) and reply.json()["code"] == reply.status_code, reply.text
    ended = await wait_until(_ended(stack, stream["stream_id"]), timeout=10, what="stream.ended after the crash")
    assert ended["reason"] == "engine_failed"
    assert stack.proxy.alive()
