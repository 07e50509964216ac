"""Event application is idempotent and order-independent (pure, no I/O)."""

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from records import NOW, ago, engine, later

from shared.policy.events import (
    MAX_RECORD_STREAMS,
    ClaimRefused,
    EngineFull,
    apply_claim,
    apply_engine_cleaned,
    apply_engine_registered,
    apply_release,
    apply_stream_ended_to_stream,
    apply_stream_started_to_stream,
    forget_sequences_beyond,
    later_removal,
    reconcile_stream,
    removal_applies,
    removal_expired,
    stream_expired,
)
from shared.schemas import (
    ClaimRequest,
    EngineCleaned,
    EngineRegistered,
    EngineRemoval,
    StreamEnded,
    StreamStarted,
    decode_engine,
    encode,
)

SKEW = 30.0


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
            stream = apply_stream_ended_to_stream(self.streams.get(event.stream_id), event, NOW, SKEW)
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
    event = EngineRegistered(
        container_id="e9", host="127.0.0.1", port=7000, container_name="acestream-9", runtime="local"
    )
    record = apply_engine_registered(None, event, NOW, seq=4)
    assert record.health_status == "unknown" and record.created_at == NOW and record.container_name == "acestream-9"
    assert record.registered_seq == 4
    used = engine("e9", streams=["s1"], last_stream_usage=ago(5), registered_seq=4)
    moved = apply_engine_registered(used, EngineRegistered(container_id="e9", host="127.0.0.2", port=7001), NOW, seq=9)
    assert moved.streams == ["s1"] and moved.last_stream_usage == ago(5) and moved.port == 7001
    assert moved.registered_seq == 9


def test_cleaned_records_time_and_size_and_ignores_stale_reports():
    record = apply_engine_cleaned(
        engine(), EngineCleaned(container_id="e1", ok=True, cache_size_bytes=42, cleaned_at=ago(1)), NOW
    )
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
    # The proxy's stamp (10 s before the state-keeper applied the end, within the skew) is kept.
    done = apply_stream_ended_to_stream(None, StreamEnded(stream_id="s1", ended_at=ago(3600)), ago(3590), SKEW)
    assert stream_expired(done, NOW, 3600) and not stream_expired(done, NOW, 3601)
    playing = apply_stream_started_to_stream(None, started("s2"), "e1", ago(99999))
    assert not stream_expired(playing, NOW, 1)


# ---------------------------------------------------------------- proxies' clocks


def test_an_end_stamped_in_the_past_keeps_its_tombstone_for_the_ttl():
    """A proxy clock far behind must not expire the tombstone at once (a late start would revive it)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    done = apply_stream_ended_to_stream(None, StreamEnded(stream_id="s1", ended_at=epoch), NOW, SKEW)
    assert done.ended_at == ago(SKEW)
    assert not stream_expired(done, later(3600 - SKEW - 1), 3600)
    assert stream_expired(done, later(3600), 3600)


def test_an_end_stamped_in_the_future_does_not_keep_its_tombstone_for_ever():
    done = apply_stream_ended_to_stream(
        None, StreamEnded(stream_id="s1", ended_at=datetime(2099, 1, 1, tzinfo=UTC)), NOW, SKEW
    )
    assert done.ended_at == NOW and stream_expired(done, later(3600), 3600)


def test_a_start_stamped_in_the_future_is_taken_as_now():
    """Otherwise last_stream_usage sits in 2099: the engine looks busy to selection and due to the janitor for ever."""
    world = World()
    world.apply(StreamStarted(stream_id="s1", container_id="e1", started_at=datetime(2099, 1, 1, tzinfo=UTC)))
    assert world.streams["s1"].started_at == NOW and world.engine.last_stream_usage == NOW
    old = apply_stream_started_to_stream(None, StreamStarted(stream_id="s2", started_at=ago(7200)), "e1", NOW)
    assert old.started_at == ago(7200), "a start from the past (a replay) keeps its time"


# ---------------------------------------------------------------- the record stays bounded


def test_a_start_beyond_the_record_limit_is_refused_and_nothing_else_is():
    full = engine("e1", streams=[f"s{i}" for i in range(MAX_RECORD_STREAMS)])
    one_more = apply_stream_started_to_stream(None, started("new"), "e1", NOW)
    with pytest.raises(EngineFull, match=f"already lists {MAX_RECORD_STREAMS} streams"):
        reconcile_stream(full, one_more, NOW)
    listed = apply_stream_started_to_stream(None, started("s7"), "e1", NOW)
    assert reconcile_stream(full, listed, NOW).record is full  # a stream it already lists changes nothing
    ending = apply_stream_ended_to_stream(listed, ended("s7"), NOW, SKEW)
    assert len(reconcile_stream(full, ending, NOW).record.streams) == MAX_RECORD_STREAMS - 1


def test_a_full_record_of_the_longest_ids_stays_far_below_nats_max_payload():
    longest = "x" * 255
    with pytest.raises(msgspec.ValidationError):  # ids are capped at decode
        msgspec.json.decode(encode({"stream_id": longest + "x"}), type=StreamStarted)
    full = engine(
        "e1",
        streams=[f"{i:03d}{longest[3:]}" for i in range(MAX_RECORD_STREAMS)],
        labels={f"{i:03d}{'k' * 252}": "v" * 800 for i in range(64)},
    )
    size = len(encode(full))
    assert decode_engine(encode(full)) == full
    assert size < 256 * 1024, size  # NATS's default max_payload is 1 MB


# ---------------------------------------------------------------- removals and registrations


def registered(seq: int, port: int = 7000) -> tuple[str, int, EngineRegistered]:
    return ("registered", seq, EngineRegistered(container_id="g1", host="127.0.0.1", port=port))


def removed(seq: int) -> tuple[str, int, None]:
    return ("removed", seq, None)


class Registry:
    """The state-keeper's handling of one engine's registrations and removals, without KV."""

    def __init__(self):
        self.record = None
        self.tombstone = None

    def apply(self, item):
        kind, seq, event = item
        if kind == "registered":
            removed_seq = self.tombstone.removed_seq if self.tombstone else 0
            self.record = apply_engine_registered(self.record, event, NOW, seq, removed_seq)
        else:
            self.tombstone = later_removal(
                self.tombstone, EngineRemoval(container_id="g1", removed_seq=seq, removed_at=NOW)
            )
            if removal_applies(self.record, seq):
                self.record = None


def test_a_redelivered_registration_does_not_resurrect_a_removed_engine():
    """register → remove → the registration again (redelivered): no record (issue 20, item 6)."""
    registry = Registry()
    for item in (registered(1), removed(2), registered(1)):
        registry.apply(item)
    assert registry.record is None


def test_a_registration_newer_than_the_removal_brings_the_engine_back():
    """A docker container restarted with the same id, or an external engine registered again on purpose."""
    registry = Registry()
    for item in (registered(1), removed(2), registered(3, port=7001), removed(2), registered(1)):
        registry.apply(item)
    assert registry.record is not None and registry.record.port == 7001 and registry.record.registered_seq == 3


def test_a_removal_applied_before_its_registration_still_wins():
    registry = Registry()
    for item in (removed(2), registered(1)):
        registry.apply(item)
    assert registry.record is None


def test_tombstones_expire_after_the_ttl_and_keep_the_latest_removal():
    first = EngineRemoval(container_id="g1", removed_seq=5, removed_at=ago(3600))
    assert removal_expired(first, NOW, 3600) and not removal_expired(first, NOW, 3601)
    newer = EngineRemoval(container_id="g1", removed_seq=9, removed_at=NOW)
    assert later_removal(first, newer) is newer and later_removal(newer, first) is newer


def _expected(published):
    """The sequential model: the engine exists iff its last event is a registration, at that address."""
    last = max(published, key=lambda item: item[1])
    return last[2].port if last[0] == "registered" else None


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["registered", "removed"]), min_size=1, max_size=8), st.randoms())
def test_registrations_and_removals_in_any_order_with_duplicates_end_as_published(kinds, rnd):
    published = [
        registered(seq, port=7000 + seq) if kind == "registered" else removed(seq)
        for seq, kind in enumerate(kinds, start=1)
    ]
    delivered = published + [rnd.choice(published) for _ in range(len(published) // 2)]
    rnd.shuffle(delivered)
    registry = Registry()
    for item in delivered:
        registry.apply(item)
    assert (registry.record.port if registry.record else None) == _expected(published)


class RegistrationsMachine(RuleBasedStateMachine):
    """Registrations and removals published in order, delivered in any order and any number of times."""

    def __init__(self):
        super().__init__()
        self.registry = Registry()
        self.published = []
        self.delivered = set()

    @rule()
    def publish_registration(self):
        self.published.append(registered(len(self.published) + 1, port=7000 + len(self.published)))

    @rule()
    def publish_removal(self):
        self.published.append(removed(len(self.published) + 1))

    @rule(data=st.data())
    def deliver(self, data):
        if self.published:
            item = data.draw(st.sampled_from(self.published))
            self.registry.apply(item)
            self.delivered.add(item[1])

    @invariant()
    def no_registration_older_than_a_delivered_removal_shows(self):
        removals = [seq for kind, seq, _ in self.published if kind == "removed" and seq in self.delivered]
        if self.registry.record is not None and removals:
            assert self.registry.record.registered_seq > max(removals)

    @invariant()
    def once_everything_arrived_the_engine_is_as_published(self):
        if self.published and len(self.delivered) == len(self.published):
            assert (self.registry.record.port if self.registry.record else None) == _expected(self.published)


TestRegistrationsMachine = RegistrationsMachine.TestCase


def test_sequences_from_an_earlier_events_stream_are_forgotten():
    record = engine("e1", registered_seq=900, health_seq=950)
    assert forget_sequences_beyond(record, 950) is record
    fresh = forget_sequences_beyond(record, 920)
    assert (fresh.registered_seq, fresh.health_seq) == (900, 0)
    assert (forget_sequences_beyond(record, 3).registered_seq, forget_sequences_beyond(record, 3).health_seq) == (0, 0)
