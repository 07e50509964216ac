"""HLS playlists rewritten through the proxy, without I/O (services.proxy.wire, services.proxy.hls)."""

from __future__ import annotations

import pytest

from services.proxy.hls import parse_segment_path
from services.proxy.wire import (
    MAX_PLAYLIST_SEGMENTS,
    WireError,
    playlist_text,
    rewrite_playlist,
    segment_uris,
    target_duration,
)

BASE = "http://10.0.0.5:6878/ace/m/abc/key.m3u8"
LIVE = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:120
#EXTINF:3.000,
http://10.0.0.5:6878/ace/c/key/120.ts
#EXTINF:3.000,
/ace/c/key/121.ts
#EXT-X-DISCONTINUITY
#EXTINF:3.000,live title
122.ts
# a comment

#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00Z
#EXTINF:3.000,
 ../c/key/123.ts?x=1
"""
ENGINE = [
    "http://10.0.0.5:6878/ace/c/key/120.ts",
    "http://10.0.0.5:6878/ace/c/key/121.ts",
    "http://10.0.0.5:6878/ace/m/abc/122.ts",
    "http://10.0.0.5:6878/ace/m/c/key/123.ts?x=1",
]


def test_segment_uris_are_absolute_and_in_order_whatever_their_form():
    assert segment_uris(LIVE, BASE) == ENGINE


def test_rewriting_replaces_only_segment_uris_and_keeps_every_tag_and_comment():
    names = {url: f"/ace/hls/tok/{n}.ts" for n, url in enumerate(ENGINE)}
    out = rewrite_playlist(LIVE, BASE, names)
    lines = out.splitlines()
    original = LIVE.splitlines()
    assert len(lines) == len(original)
    uris = [line for line in lines if line and not line.startswith("#")]
    assert uris == ["/ace/hls/tok/0.ts", "/ace/hls/tok/1.ts", "/ace/hls/tok/2.ts", "/ace/hls/tok/3.ts"]
    assert [line for line in lines if line.startswith("#")] == [line for line in original if line.startswith("#")]
    assert "10.0.0.5" not in out and "6878" not in out
    assert segment_uris(out, "http://proxy:8080/ace/manifest.m3u8?id=x") == [
        f"http://proxy:8080/ace/hls/tok/{n}.ts" for n in range(4)
    ]


def test_a_playlist_without_segments_stays_a_valid_empty_playlist():
    text = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:7\n"
    assert segment_uris(text, BASE) == []
    assert rewrite_playlist(text, BASE, {}) == text


def test_a_segment_without_a_name_is_a_callers_bug_not_a_leaked_engine_url():
    with pytest.raises(KeyError):
        rewrite_playlist(LIVE, BASE, {})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>oops</html>",
        b"\xff\xfe#EXTM3U\n",
        ("#EXTM3U\n" + "#EXTINF:1,\nx.ts\n" * (MAX_PLAYLIST_SEGMENTS + 1)).encode(),
        b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow.m3u8\n",
        b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n",
        b"#EXTM3U\n#EXTINF:1,\njavascript:alert(1)\n",
    ],
)
def test_hostile_playlists_are_refused_as_bad_gateway(body):
    with pytest.raises(WireError) as caught:
        segment_uris(playlist_text(body), BASE)
    assert caught.value.status == 502 and str(caught.value)


def test_a_playlist_with_a_bom_and_crlf_lines_is_read():
    text = playlist_text(b"\xef\xbb\xbf#EXTM3U\r\n#EXTINF:1,\r\na.ts\r\n")
    assert segment_uris(text, BASE) == ["http://10.0.0.5:6878/ace/m/abc/a.ts"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (LIVE, 4.0),
        ("#EXTM3U\n", None),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:x\n", None),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:0\n", None),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:inf\n", None),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:6\n", 6.0),
    ],
)
def test_target_duration(text, seconds):
    assert target_duration(text) == seconds


def test_segment_paths():
    assert parse_segment_path("/ace/hls/Ab-_9/17.ts") == ("Ab-_9", 17)
    for bad in (
        "/ace/hls/",
        "/ace/hls/tok",
        "/ace/hls/tok/",
        "/ace/hls/tok/x.ts",
        "/ace/hls/tok/-1.ts",
        "/ace/hls//1.ts",
        "/ace/hls/tok/1.m3u8",
        "/ace/hls/tok/1/2.ts",
        "/ace/hls/tok/" + "9" * 40 + ".ts",
    ):
        with pytest.raises(WireError) as caught:
            parse_segment_path(bad)
        assert caught.value.status == 404, bad
