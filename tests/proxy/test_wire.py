"""Viewer queries and engine replies, parsed without I/O (services.proxy.wire)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.proxy.wire import Content, SessionGone, WireError, content_of, parse_query, session_of, stats_of

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "content"),
    [
        ("id=abc", Content("abc", "content_id")),
        ("content_id=abc&x=1", Content("abc", "content_id")),
        ("infohash=" + "A" * 40, Content("a" * 40, "infohash")),
        ("url=https://example.org/x.torrent", Content("https://example.org/x.torrent", "url")),
        ("magnet=magnet:%3Fxt=urn:btih:abc", Content("magnet:?xt=urn:btih:abc", "magnet")),
        ("id=a&id=b", Content("a", "content_id")),  # first value wins
    ],
)
def test_content_of_a_good_query(query, content):
    assert content_of(parse_query(query)) == content


@pytest.mark.parametrize(
    ("query", "status", "names"),
    [
        ("", 400, "id="),
        ("id=", 400, "id must be"),
        ("id=a%20b", 400, "id must be"),
        ("id=a&infohash=" + "0" * 40, 400, "once"),
        ("infohash=123", 400, "40 hex"),
        ("url=file:///etc/passwd", 400, "http(s)"),
        ("magnet=http://x", 400, "magnet:?"),
        ("id=" + "a" * 5000, 414, "over the limit"),
    ],
)
def test_bad_queries_are_refused_with_what_is_wrong(query, status, names):
    with pytest.raises(WireError) as caught:
        content_of(parse_query(query))
    assert caught.value.status == status and names in str(caught.value)


def test_session_of_a_getstream_reply():
    body = json.dumps(
        {
            "response": {
                "playback_url": "http://e/r/1",
                "stat_url": "http://e/s/1",
                "command_url": "http://e/c/1",
                "playback_session_id": "k",
                "is_live": 1,
            },
            "error": None,
        }
    ).encode()
    session = session_of(200, body)
    assert (session.playback_url, session.stat_url, session.playback_session_id) == (
        "http://e/r/1",
        "http://e/s/1",
        "k",
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"response": null, "error": "failed to load content"}', 404),
        (200, b'{"response": {"nothing": 1}, "error": null}', 502),
        (200, b"not json", 502),
        (500, b'{"response": {"playback_url": "x"}, "error": null}', 502),
    ],
)
def test_session_of_a_refusal_or_nonsense(status, body, expected):
    with pytest.raises(WireError) as caught:
        session_of(status, body)
    assert caught.value.status == expected


def test_stats_accept_both_spellings_of_the_speeds():
    snake = stats_of(b'{"response": {"status": "dl", "peers": 4, "speed_down": 60, "speed_up": 9}, "error": null}', NOW)
    camel = stats_of(b'{"response": {"status": "dl", "peers": 4, "speedDown": 60, "speedUp": 9}, "error": null}', NOW)
    assert (snake.speed_down, snake.speed_up) == (camel.speed_down, camel.speed_up) == (60, 9)
    assert snake.reported_at == NOW


def test_a_dead_session_is_told_apart_from_other_stat_errors():
    with pytest.raises(SessionGone):
        stats_of(b'{"response": null, "error": "unknown playback session id"}', NOW)
    with pytest.raises(WireError):
        stats_of(b'{"response": null, "error": "something else"}', NOW)
    with pytest.raises(WireError):
        stats_of(b'{"response": {"peers": -1}, "error": null}', NOW)
