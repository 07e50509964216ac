"""Event application at its edges: every field a record takes from its event, and redeliveries
that must leave a record as it is (the same object: the state-keeper then writes nothing).

Complements test_events.py and test_first_end_wins.py with the cases those leave open (found by
`make mutate`). Claims and releases (`apply_claim`, `apply_release`) are not covered here.
"""

import msgspec
from records import NOW, ago, claim, engine, later

from shared.policy.events import (
    ClaimRefused,
    apply_engine_cleaned,
    apply_engine_registered,
    apply_stream_ended_to_stream,
    apply_stream_started_to_stream,
    forget_sequences_beyond,
    later_removal,
    reconcile_stream,
)
from shared.schemas import (
    EngineCleaned,
    EngineRecord,
    EngineRegistered,
    EngineRemoval,
    StreamEnded,
    StreamRecord,
    StreamStarted,
)

SKEW = 30.0


def registration(**fields) -> EngineRegistered:
    defaults = dict(
        container_id="d1",
        host="127.0.0.5",
        port=7005,
        container_name="acestream-5",
        runtime="docker",
        labels={"aceorch.pool": "blue"},
        host_id="rack-2",
    )
    defaults.update(fields)
    return EngineRegistered(**defaults)


def playing(stream_id: str, started_at=None) -> StreamRecord:
    return apply_stream_started_to_stream(
        None, StreamStarted(stream_id=stream_id, container_id="e1", started_at=started_at), "e1", NOW
    )


# ---------------------------------------------------------------- registrations


def test_the_first_registration_in_the_events_stream_creates_its_engine_when_no_removal_is_known():
    record = apply_engine_registered(None, registration(), NOW, seq=1)
    assert record is not None and record.registered_seq == 1


def test_a_new_record_takes_its_identity_address_runtime_and_labels_from_the_registration():
    record = apply_engine_registered(None, registration(), NOW, seq=7)
    assert record == EngineRecord(
        container_id="d1",
        container_name="acestream-5",
        host="127.0.0.5",
        port=7005,
        runtime="docker",
        labels={"aceorch.pool": "blue"},
        health_status="unknown",
        state="active",
        created_at=NOW,
        idle_since=NOW,
        registered_seq=7,
        health_seq=7,
        host_id="rack-2",
    )


def test_a_re_registration_takes_the_new_name_address_runtime_and_labels_and_keeps_the_rest():
    before = engine(
        "d1",
        container_name="old",
        host="127.0.0.4",
        port=7004,
        runtime="local",
        labels={"a": "b"},
        streams=["s1"],
        health_status="healthy",
        health_seq=3,
        registered_seq=2,
        last_error="x",
    )
    after = apply_engine_registered(before, registration(), NOW, seq=9)
    assert after == msgspec.structs.replace(
        before,
        container_name="acestream-5",
        host="127.0.0.5",
        port=7005,
        runtime="docker",
        labels={"aceorch.pool": "blue"},
        host_id="rack-2",
        registered_seq=9,
    )


def test_a_redelivered_registration_leaves_the_record_as_it_is():
    record = apply_engine_registered(None, registration(), NOW, seq=4)
    assert apply_engine_registered(record, registration(), later(5), seq=4) is record


# ---------------------------------------------------------------- removals and sequences


def test_a_redelivered_removal_keeps_the_tombstone_from_its_first_application():
    first = EngineRemoval(container_id="d1", removed_seq=5, removed_at=ago(600))
    again = EngineRemoval(container_id="d1", removed_seq=5, removed_at=NOW)
    assert later_removal(first, again) is first  # its age counts from the first time, not the redelivery


def test_sequences_up_to_and_including_the_streams_last_are_kept():
    at_last = engine("e1", registered_seq=950, health_seq=900)
    assert forget_sequences_beyond(at_last, 950) is at_last
    health_beyond = forget_sequences_beyond(engine("e1", registered_seq=920, health_seq=950), 920)
    assert (health_beyond.registered_seq, health_beyond.health_seq) == (920, 0)
    registration_beyond = forget_sequences_beyond(engine("e1", registered_seq=950, health_seq=920), 920)
    assert (registration_beyond.registered_seq, registration_beyond.health_seq) == (0, 920)


# ---------------------------------------------------------------- streams


def test_a_started_record_keeps_every_detail_of_its_start():
    start = StreamStarted(
        stream_id="s1",
        container_id="e1",
        content_key="news",
        key_type="infohash",
        playback_session_id="p1",
        stat_url="http://127.0.0.1:6878/stat",
        is_live=False,
        command_url="http://127.0.0.1:6878/cmd",
        reservation_id="r1",
        started_at=ago(2),
    )
    assert apply_stream_started_to_stream(None, start, "e1", NOW) == StreamRecord(
        stream_id="s1",
        container_id="e1",
        content_key="news",
        key_type="infohash",
        playback_session_id="p1",
        stat_url="http://127.0.0.1:6878/stat",
        command_url="http://127.0.0.1:6878/cmd",
        is_live=False,
        status="started",
        started_at=ago(2),
    )


def test_a_start_repeated_after_the_end_leaves_the_tombstone_as_it_is():
    tombstone = apply_stream_ended_to_stream(playing("s1", started_at=ago(20)), StreamEnded(stream_id="s1"), NOW, SKEW)
    again = StreamStarted(stream_id="s1", container_id="e1", started_at=ago(10))  # a stamp the first start lacked
    assert apply_stream_started_to_stream(tombstone, again, "e1", later(1)) is tombstone


def test_a_start_after_its_end_keeps_the_engine_the_end_named_and_fills_it_in_when_the_end_named_none():
    named = apply_stream_ended_to_stream(None, StreamEnded(stream_id="s1", container_id="e1"), NOW, SKEW)
    start = StreamStarted(stream_id="s1", container_id="e2")
    assert apply_stream_started_to_stream(named, start, "e2", NOW).container_id == "e1"
    unnamed = apply_stream_ended_to_stream(None, StreamEnded(stream_id="s1"), NOW, SKEW)
    assert apply_stream_started_to_stream(unnamed, start, "e2", NOW).container_id == "e2"


def test_an_end_heard_before_its_start_leaves_a_tombstone_naming_the_stream_and_its_engine():
    tombstone = apply_stream_ended_to_stream(
        None, StreamEnded(stream_id="s1", container_id="e1", reason="player left", ended_at=ago(3)), NOW, SKEW
    )
    assert tombstone == StreamRecord(
        stream_id="s1", container_id="e1", status="ended", ended_at=ago(3), reason="player left"
    )


def test_an_engine_was_last_used_when_its_stream_started_by_the_proxys_stamp():
    change = reconcile_stream(engine("e1", last_stream_usage=None), playing("s1", started_at=ago(5)), NOW)
    assert change.record.last_stream_usage == ago(5)


def test_a_start_reported_late_does_not_move_the_last_use_back():
    record = engine("e1", last_stream_usage=ago(5))
    change = reconcile_stream(record, playing("s1", started_at=ago(60)), NOW)
    assert change.record.streams == ["s1"] and change.record.last_stream_usage == ago(5)


def test_a_listed_stream_whose_reservation_is_still_held_consumes_it_without_being_listed_twice():
    record = engine("e1", streams=["s1"], idle_since=None, reservations={"r1": later(30), "r2": later(30)})
    change = reconcile_stream(record, playing("s1"), NOW, reservation_id="r1")
    assert change.record.streams == ["s1"] and change.record.reservations == {"r2": later(30)}


def test_a_stream_starting_during_a_clean_leaves_the_engine_cleaning():
    record = engine("e1", claim=claim("clean", expires_in=60), state="cleaning")
    change = reconcile_stream(record, playing("s1"), NOW)
    assert change.record.state == "cleaning" and change.record.claim == record.claim


def test_the_last_stream_ending_announces_which_engine_went_idle():
    change = reconcile_stream(
        engine("e7", streams=["s1"], idle_since=None),
        apply_stream_ended_to_stream(playing("s1"), StreamEnded(stream_id="s1"), NOW, SKEW),
        NOW,
    )
    assert [note.container_id for note in change.notifications] == ["e7"] and change.record.idle_since == NOW


# ---------------------------------------------------------------- cache cleans


def test_a_failed_clean_without_a_message_is_recorded_as_an_unknown_error():
    failed = apply_engine_cleaned(engine(), EngineCleaned(container_id="e1", ok=False), NOW)
    assert failed.last_error == "cache clean failed: unknown error"


def test_a_clean_report_at_the_time_already_recorded_is_a_duplicate_and_changes_nothing():
    record = engine(last_cache_cleanup=ago(10), cache_size_bytes=42)
    same_time = EngineCleaned(container_id="e1", ok=True, cache_size_bytes=7, cleaned_at=ago(10))
    assert apply_engine_cleaned(record, same_time, NOW) is record


# ---------------------------------------------------------------- refusals


def test_a_refusal_carries_its_message_and_its_reply_code():
    refused = ClaimRefused("engine e1 is busy", 409)
    assert str(refused) == "engine e1 is busy" and refused.code == 409
