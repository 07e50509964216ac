"""The first `stream.ended` decides how a stream ended; repeats and late ends change nothing (DESIGN §2)."""

from datetime import timedelta

from records import NOW

from shared.policy.events import apply_stream_ended_to_stream, apply_stream_started_to_stream
from shared.schemas import StreamEnded, StreamStarted

SKEW_S = 30.0
APPLIED = NOW + timedelta(seconds=10)  # the keeper's clock when it applies the ends: after both stamps


def end(reason: str, at_s: float) -> StreamEnded:
    return StreamEnded(stream_id="s1", container_id="e1", reason=reason, ended_at=NOW + timedelta(seconds=at_s))


def test_a_repeated_end_keeps_the_first_reason_and_time():
    started = apply_stream_started_to_stream(None, StreamStarted(stream_id="s1", container_id="e1"), "e1", NOW)
    first = apply_stream_ended_to_stream(started, end("player left", 1), APPLIED, SKEW_S)
    again = apply_stream_ended_to_stream(first, end("failover", 5), APPLIED, SKEW_S)
    assert (again.status, again.reason, again.ended_at) == ("ended", "player left", NOW + timedelta(seconds=1))


def test_an_end_before_the_start_is_kept_when_a_second_end_arrives():
    tombstone = apply_stream_ended_to_stream(None, end("player left", 1), APPLIED, SKEW_S)
    again = apply_stream_ended_to_stream(tombstone, end("proxy_lost", 9), APPLIED, SKEW_S)
    assert (again.reason, again.ended_at) == ("player left", NOW + timedelta(seconds=1))


def test_a_start_after_its_end_leaves_the_record_the_other_order_gives():
    start = StreamStarted(
        stream_id="s1",
        container_id="e1",
        content_key="news",
        key_type="content_id",
        playback_session_id="p1",
        is_live=True,
        started_at=NOW,
    )
    stop = end("player left", 3)
    in_order = apply_stream_ended_to_stream(
        apply_stream_started_to_stream(None, start, "e1", NOW), stop, APPLIED, SKEW_S
    )
    overtaken = apply_stream_started_to_stream(
        apply_stream_ended_to_stream(None, stop, APPLIED, SKEW_S), start, "e1", APPLIED
    )
    assert overtaken == in_order
    assert apply_stream_started_to_stream(overtaken, start, "e1", NOW) == overtaken, "a repeated start changes nothing"
