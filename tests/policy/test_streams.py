"""Streams after their start: figures applied, lost proxies, stale sessions (DESIGN §10)."""

import pytest
from records import NOW, ago, later

from shared.engine_client import says_session_gone
from shared.policy.events import apply_stream_started_to_stream
from shared.policy.streams import apply_stats, last_heard, lost_to_proxies, needs_session_check, stat_url_on_engine
from shared.schemas import EngineRecord, PlaybackStats, StreamRecord, StreamStarted, StreamStats

INTERVAL_S = 5.0


def stream(stream_id="s1", **fields) -> StreamRecord:
    defaults = dict(
        container_id="e1",
        status="started",
        started_at=ago(60),
        proxy="p1",
        stat_url="http://127.0.0.1:6878/ace/stat/x/y",
    )
    defaults.update(fields)
    return StreamRecord(stream_id=stream_id, **defaults)


ONE_S_AGO = ago(1)


def report(stream_id="s1", proxy="p1", reported_at=ONE_S_AGO, peers=7, viewers=None, relayed=None) -> StreamStats:
    stats = PlaybackStats(status="dl", peers=peers, speed_down=512, reported_at=reported_at)
    return StreamStats(stream_id=stream_id, stats=stats, proxy=proxy, viewers=viewers, relayed_bytes=relayed)


# ---------------------------------------------------------------- stream.started names the proxy


def test_a_started_stream_names_the_proxy_that_reported_it():
    started = apply_stream_started_to_stream(None, StreamStarted(stream_id="s1", proxy="p9"), "e1", NOW)
    assert started.proxy == "p9"
    assert apply_stream_started_to_stream(None, StreamStarted(stream_id="s2"), "e1", NOW).proxy is None


def test_an_end_applied_before_its_start_learns_the_proxy_too():
    ended = StreamRecord(stream_id="s1", status="ended", ended_at=ago(1), reason="gone")
    after = apply_stream_started_to_stream(ended, StreamStarted(stream_id="s1", proxy="p9"), "e1", NOW)
    assert after.status == "ended" and after.proxy == "p9"


# ---------------------------------------------------------------- figures


def test_figures_land_on_a_started_stream():
    after = apply_stats(stream(), report(), NOW)
    assert after.stats.peers == 7 and after.stats.speed_down == 512 and after.stats.reported_at == ago(1)


def test_the_proxys_viewers_and_relayed_bytes_land_with_the_figures_and_stay_when_a_report_has_none():
    after = apply_stats(stream(), report(viewers=3, relayed=188_000), NOW)
    assert (after.viewers, after.relayed_bytes) == (3, 188_000)
    later = apply_stats(after, report(reported_at=NOW, viewers=None, relayed=None), NOW)
    assert (later.viewers, later.relayed_bytes) == (3, 188_000) and later.stats.reported_at == NOW
    assert apply_stats(after, report(reported_at=ago(5), viewers=9), NOW) is after, "a late report changes nothing"


@pytest.mark.parametrize(
    "record", [None, stream(status="ended", ended_at=ago(2), reason="viewer_left")], ids=["unknown", "ended"]
)
def test_figures_never_make_or_reopen_a_record(record):
    assert apply_stats(record, report(), NOW) is record


def test_figures_from_another_proxy_are_not_the_streams():
    record = stream()
    assert apply_stats(record, report(proxy="p2"), NOW) is record
    assert apply_stats(stream(proxy=None), report(proxy="p2"), NOW).stats.peers == 7, "no proxy named: accepted"
    assert apply_stats(record, report(proxy=None), NOW).stats.peers == 7


def test_a_late_report_does_not_replace_newer_figures():
    newer = apply_stats(stream(), report(reported_at=ago(1), peers=9), NOW)
    assert apply_stats(newer, report(reported_at=ago(6), peers=2), NOW) is newer
    assert apply_stats(newer, report(reported_at=ago(1), peers=2), NOW) is newer, "a duplicate changes nothing"
    assert apply_stats(newer, report(reported_at=ago(0), peers=2), NOW).stats.peers == 2


@pytest.mark.parametrize("stamp", [None, later(3600)], ids=["unstamped", "ahead"])
def test_a_report_is_never_later_than_the_keepers_clock(stamp):
    assert apply_stats(stream(), report(reported_at=stamp), NOW).stats.reported_at == NOW


# ---------------------------------------------------------------- proxy_lost


def test_streams_of_a_proxy_not_among_the_live_ones_are_lost():
    streams = [
        stream("mine", proxy="p1"),
        stream("lost", proxy="p2"),
        stream("external", proxy=None),
        stream("over", proxy="p2", status="ended", ended_at=ago(1)),
    ]
    assert [s.stream_id for s in lost_to_proxies(streams, {"p1"})] == ["lost"]
    assert lost_to_proxies(streams, {"p1", "p2"}) == []
    assert [s.stream_id for s in lost_to_proxies(streams, ())] == ["mine", "lost"]


# ---------------------------------------------------------------- session_gone


def test_a_stream_without_fresh_figures_is_checked_at_its_stat_url():
    stale = apply_stats(stream(), report(reported_at=ago(3 * INTERVAL_S)), NOW)
    fresh = apply_stats(stream(), report(reported_at=ago(3 * INTERVAL_S - 1)), NOW)
    assert needs_session_check(stale, NOW, INTERVAL_S)
    assert not needs_session_check(fresh, NOW, INTERVAL_S)


def test_a_stream_never_reporting_is_checked_once_its_start_is_stale():
    assert needs_session_check(stream(started_at=ago(3 * INTERVAL_S)), NOW, INTERVAL_S)
    assert not needs_session_check(stream(started_at=ago(1)), NOW, INTERVAL_S), "its proxy had no time to report"
    assert needs_session_check(stream(started_at=None), NOW, INTERVAL_S)


@pytest.mark.parametrize(
    "record", [stream(stat_url=None), stream(status="ended", ended_at=ago(1))], ids=["no-stat-url", "ended"]
)
def test_streams_without_a_stat_url_or_ended_are_never_checked(record):
    assert not needs_session_check(record, NOW, INTERVAL_S)


def test_last_heard_is_the_latest_figures_else_the_start():
    assert last_heard(stream(started_at=ago(60))) == ago(60)
    assert last_heard(apply_stats(stream(started_at=ago(60)), report(reported_at=ago(2)), NOW)) == ago(2)


@pytest.mark.parametrize(
    ("status", "body", "gone"),
    [
        (200, b'{"response": null, "error": "unknown playback session id"}', True),
        (200, b'{"response": null, "error": "Unknown playback session id"}', True),
        (200, b'{"response": {"status": "dl", "peers": 3}, "error": null}', False),
        (200, b'{"response": null, "error": "failed to load content"}', False),
        (404, b"", False),
        (500, b'{"error": "unknown playback session id"}', False),
        (200, b"not json", False),
        (200, b'["unknown playback session id"]', False),
        (200, b'{"error": 3}', False),
    ],
    ids=["gone", "gone-capitalised", "figures", "other-error", "404", "500", "garbage", "list", "odd-error"],
)
def test_only_the_engines_own_answer_says_a_session_is_gone(status, body, gone):
    assert says_session_gone(status, body) is gone


# ---------------------------------------------------------------- only engines' stat URLs are fetched


ENGINE = EngineRecord(container_id="e1", container_name="acestream-1", host="127.0.0.1", port=6878)


@pytest.mark.parametrize(
    "url, fetched",
    [
        ("http://127.0.0.1:6878/ace/stat/x/y", True),
        ("HTTP://127.0.0.1:6878/ace/stat/x/y", True),  # the scheme is case-insensitive
        ("http://127.0.0.1:6879/ace/stat/x/y", False),  # another port of the same host
        ("http://127.0.0.1/ace/stat/x/y", False),  # port 80
        ("http://10.0.0.1:6878/ace/stat/x/y", False),
        ("http://metadata.internal:6878/ace/stat", False),
        ("https://127.0.0.1:6878/ace/stat/x/y", False),
        ("file:///etc/passwd", False),
        ("http://127.0.0.1:99999/ace/stat", False),  # not a port: refused, not a crash
        ("http://user@127.0.0.1:6878/ace/stat", True),  # still that engine
        ("", False),
    ],
)
def test_the_keeper_fetches_a_stat_url_only_on_the_streams_own_engine(url, fetched):
    assert stat_url_on_engine(stream(stat_url=url), ENGINE) is fetched


def test_a_stream_on_an_unknown_engine_is_never_fetched():
    assert not stat_url_on_engine(stream(), None)
