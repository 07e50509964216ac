"""Event application is idempotent and order-independent (pure, no I/O)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from records import NOW, ago, engine, later
from shared.policy.events import (
    ClaimRefused,
    apply_claim,
    apply_engine_cleaned,
    apply_engine_registered,
    apply_release,
    apply_stream_ended_to_stream,
    apply_stream_started_to_stream,
    reconcile_stream,
    stream_expired,
)
from shared.schemas import ClaimRequest, EngineCleaned, EngineRegistered, StreamEnded, StreamStarted

import pytest


def started(stream_id: str, reservation_id: str | None = None) -> StreamStarted:
    return StreamStarted(stream_id=stream_id, container_id="e1", content_key="ch", reservation_id=reservation_id)


def ended(stream_id: str) -> StreamEnded:
    return StreamEnded(stream_id=stream_id, container_id="e1", reason="player left")


class World:
    """The state-keeper's two-step application (stream record, then engine), without KV."""

    def __init__(self):
        self.engine = engine("e1")
        self.streams = {}
        self.idle_notes = 0

    def apply(self, event):
        if isinstance(event, StreamStarted):
            stream = apply_stream_started_to_stream(self.streams.get(event.stream_id), event, "e1", NOW)
        else:
            stream = apply_stream_ended_to_stream(self.streams.get(event.stream_id), event, NOW)
        self.streams[event.stream_id] = stream
        change = reconcile_stream(self.engine, stream, NOW, getattr(event, "reservation_id", None))
        self.engine = change.record
        self.idle_notes += len(change.notifications)


events = st.lists(
    st.tuples(st.sampled_from(["started", "ended"]), st.sampled_from([f"s{i}" for i in range(6)])),
    max_size=40,
)


@settings(max_examples=300)
@given(events, st.randoms())
def test_any_order_with_duplicates_ends_in_the_sequential_models_state(raw, rnd):
    batch = [started(sid) if kind == "started" else ended(sid) for kind, sid in raw]
    shuffled = list(batch)
    rnd.shuffle(shuffled)
    world = World()
    for event in shuffled + shuffled[: len(shuffled) // 2]:  # with duplicates
        world.apply(event)
    model = {sid for kind, sid in raw if kind == "started"} - {sid for kind, sid in raw if kind == "ended"}
    assert set(world.engine.streams) == model
    assert len(world.engine.streams) == len(set(world.engine.streams))


def test_end_before_start_leaves_no_phantom_stream():
    world = World()
    world.apply(ended("s1"))
    world.apply(started("s1"))
    assert world.engine.streams == [] and world.streams["s1"].status == "ended"


def test_start_sets_last_stream_usage_and_consumes_the_reservation():
    world = World()
    world.engine = engine("e1", reservations={"r1": later(30)})
    world.apply(started("s1", reservation_id="r1"))
    assert world.engine.streams == ["s1"]
    assert world.engine.reservations == {}
    assert world.engine.last_stream_usage == NOW and world.engine.idle_since is None


def test_last_stream_ending_marks_idle_once():
    world = World()
    world.apply(started("s1"))
    world.apply(started("s2"))
    world.apply(ended("s1"))
    assert world.idle_notes == 0
    world.apply(ended("s2"))
    world.apply(ended("s2"))
    assert world.idle_notes == 1 and world.engine.idle_since == NOW


def test_registration_creates_unknown_record_and_reregistration_keeps_usage():
    event = EngineRegistered(container_id="e9", host="127.0.0.1", port=7000, container_name="acestream-9", runtime="local")
    record = apply_engine_registered(None, event, NOW)
    assert record.health_status == "unknown" and record.created_at == NOW and record.container_name == "acestream-9"
    used = engine("e9", streams=["s1"], last_stream_usage=ago(5))
    moved = apply_engine_registered(used, EngineRegistered(container_id="e9", host="127.0.0.2", port=7001), NOW)
    assert moved.streams == ["s1"] and moved.last_stream_usage == ago(5) and moved.port == 7001


def test_cleaned_records_time_and_size_and_ignores_stale_reports():
    record = apply_engine_cleaned(engine(), EngineCleaned(container_id="e1", ok=True, cache_size_bytes=42, cleaned_at=ago(1)), NOW)
    assert record.last_cache_cleanup == ago(1) and record.cache_size_bytes == 42
    stale = EngineCleaned(container_id="e1", ok=True, cache_size_bytes=7, cleaned_at=ago(2))
    assert apply_engine_cleaned(record, stale, NOW) is record
    failed = apply_engine_cleaned(record, EngineCleaned(container_id="e1", ok=False, error="exec failed"), NOW)
    assert failed.cache_size_bytes == 42 and "exec failed" in failed.last_error


def request(purpose="clean"):
    return ClaimRequest(container_id="e1", purpose=purpose, holder="janitor-1")


def test_claim_takes_an_idle_engine_out_of_selection_until_released():
    claimed = apply_claim(engine(), request("reap"), "c1", NOW, 60)
    assert claimed.state == "draining" and claimed.claim.expires_at == later(60)
    released = apply_release(claimed, "c1", NOW)
    assert released.state == "active" and released.claim is None


@pytest.mark.parametrize(
    "record",
    [
        engine(streams=["s1"]),
        engine(reservations={"r": later(5)}),
        engine(runtime="external"),
        apply_claim(engine(), ClaimRequest(container_id="e1", purpose="clean", holder="other"), "c0", NOW, 60),
    ],
    ids=["streams", "reservation", "external", "already-claimed"],
)
def test_claim_is_refused_with_409_when_busy(record):
    with pytest.raises(ClaimRefused) as refused:
        apply_claim(record, request(), "c1", NOW, 60)
    assert refused.value.code == 409


def test_an_expired_claim_no_longer_blocks_and_releasing_it_is_harmless():
    claimed = apply_claim(engine(), request(), "c1", ago(120), 60)
    assert apply_claim(claimed, request("reap"), "c2", NOW, 60).claim.claim_id == "c2"
    assert apply_release(claimed, "c1", NOW).claim is None


def test_releasing_someone_elses_claim_is_refused():
    claimed = apply_claim(engine(), request(), "c1", NOW, 60)
    with pytest.raises(ClaimRefused):
        apply_release(claimed, "not-mine", NOW)


class StreamsMachine(RuleBasedStateMachine):
    """Random started/ended/duplicate sequences: the engine always mirrors the stream records."""

    def __init__(self):
        super().__init__()
        self.world = World()
        self.seen = []

    @rule(sid=st.sampled_from(["a", "b", "c", "d"]))
    def start(self, sid):
        self.seen.append(started(sid))
        self.world.apply(self.seen[-1])

    @rule(sid=st.sampled_from(["a", "b", "c", "d"]))
    def end(self, sid):
        self.seen.append(ended(sid))
        self.world.apply(self.seen[-1])

    @rule(data=st.data())
    def redeliver(self, data):
        if self.seen:
            self.world.apply(data.draw(st.sampled_from(self.seen)))

    @invariant()
    def engine_mirrors_stream_records(self):
        live = {sid for sid, s in self.world.streams.items() if s.status == "started"}
        assert set(self.world.engine.streams) == live

    @invariant()
    def ended_streams_stay_ended(self):
        ended_ids = {e.stream_id for e in self.seen if isinstance(e, StreamEnded)}
        assert all(self.world.streams[sid].status == "ended" for sid in ended_ids)


TestStreamsMachine = StreamsMachine.TestCase


def test_a_stream_starting_on_an_engine_being_reaped_cancels_the_reap_claim():
    world = World()
    world.engine = apply_claim(engine("e1"), request("reap"), "c1", NOW, 60)
    world.apply(started("s1"))
    assert world.engine.streams == ["s1"] and world.engine.claim is None and world.engine.state == "active"


def test_a_stream_starting_during_a_clean_keeps_the_clean_claim():
    world = World()
    world.engine = apply_claim(engine("e1"), request("clean"), "c1", NOW, 60)
    world.apply(started("s1"))
    assert world.engine.streams == ["s1"] and world.engine.claim.claim_id == "c1"


def test_ended_streams_expire_after_the_ttl_and_started_ones_never():
    done = apply_stream_ended_to_stream(None, StreamEnded(stream_id="s1", ended_at=ago(3600)), NOW)
    assert stream_expired(done, NOW, 3600) and not stream_expired(done, NOW, 3601)
    playing = apply_stream_started_to_stream(None, started("s2"), "e1", ago(99999))
    assert not stream_expired(playing, NOW, 1)
