"""Selection's promises that the mutation audit found untested (MUTATION-NOTES.md maps each mutant)."""

from hypothesis import given
from hypothesis import strategies as st
from records import NOW, ago, claim, engine, later

from shared.policy.selection import CandidateIndex, SelectionPolicy, is_candidate, retry_after_s, select_engine

POLICY = SelectionPolicy(max_streams_per_engine=3)


@given(streams=st.integers(0, 6), limit=st.integers(1, 5))
def test_a_healthy_engine_is_a_candidate_exactly_while_its_load_is_below_the_limit(streams, limit):
    record = engine(streams=[f"s{n}" for n in range(streams)])
    assert is_candidate(record, NOW, SelectionPolicy(max_streams_per_engine=limit)) == (streams < limit)


def test_retry_after_counts_reservations_on_an_engine_whose_claim_lapsed_not_on_one_still_claimed():
    reservations = {"r": later(3)}
    lapsed = engine(claim=claim("clean", expires_in=-1), state="cleaning", reservations=reservations)
    assert retry_after_s([lapsed], NOW, default=5.0) == 3.0
    held = engine(claim=claim("clean", expires_in=60), state="cleaning", reservations=reservations)
    assert retry_after_s([held], NOW, default=5.0) == 5.0


def test_retry_after_is_said_to_a_tenth_of_a_second_and_never_beyond_30_s():
    def wait(seconds: float) -> float:
        return retry_after_s([engine(reservations={"r": later(seconds)})], NOW)

    assert wait(2.5) == 2.5  # not rounded to whole seconds
    assert wait(2.34) == 2.3
    assert wait(30.0) == 30.0
    assert wait(60.0) == 30.0


def test_a_selection_in_flight_counts_as_load_on_its_engine_until_it_ends():
    index = CandidateIndex(POLICY)
    for cid in ("a", "b"):
        index.update(cid, engine(cid), NOW)
    assert index.choose(NOW).engine.container_id == "a"  # a tie, which the container id settles
    index.add_in_flight("a", 1, NOW)
    assert index.choose(NOW).engine.container_id == "b"
    index.add_in_flight("a", -1, NOW)
    assert index.choose(NOW).engine.container_id == "a"
    for _ in range(POLICY.max_streams_per_engine):  # one at a time, as requests come
        for cid in ("a", "b"):
            index.add_in_flight(cid, 1, NOW)
    assert index.choose(NOW) is None  # in-flight selections add up and fill an engine as streams do


def test_the_index_keeps_nothing_of_an_engine_that_is_gone_with_no_selection_in_flight():
    # The index lives as long as its keeper: anything left per engine ever seen grows with the fleet's churn.
    index = CandidateIndex(POLICY)
    index.update("a", engine("a"), NOW)
    index.add_in_flight("a", 1, NOW)
    index.add_in_flight("a", -1, NOW)
    index.update("a", None, NOW)
    assert (index._records, index._in_flight, index._keys, index._versions) == ({}, {}, {}, {})


def test_re_ranking_an_engine_many_times_keeps_the_heaps_bounded_and_the_answers_right():
    # Every change pushes new heap entries and leaves the old ones behind; compaction drops those
    # once there are more than twice the engines plus 64, or a busy keeper's heaps would only grow.
    index = CandidateIndex(POLICY)
    index.update("b", engine("b", streams=["s1", "s2"]), NOW)
    longest = 0
    for n in range(300):
        streams = ["s1", "s2"] if n % 2 else []
        index.update("a", engine("a", streams=streams, reservations={"r": later(1 + n / 100)}), NOW)
        assert len(index._ranked) <= 2 * 2 + 64 + 1 and len(index._deadlines) <= 2 * 2 + 64 + 1
        longest = max(longest, len(index._deadlines))
        assert index.choose(NOW).engine.container_id == ("b" if n % 2 else "a")
    assert longest == 2 * 2 + 64  # and not before: compacting on every change would cost a scan per change
    # a's last reservation lapses (its deadline survived the compactions): a at 2 streams ties b and wins on its id.
    assert index.choose(later(1 + 299 / 100)).engine.container_id == "a"
    # So did b's, set before the first compaction: its verdict goes stale (45 s after its probe 10 s ago).
    assert index.choose(later(40)) is None


def _shared_choices(records, tiebreak=str):
    """(select_engine's pick, the CandidateIndex's pick) for a viewer of `ch`, which a and b play."""
    playing = {"ch": {"a", "b"}}
    index = CandidateIndex(POLICY, tiebreak)
    for record in records:
        index.update(record.container_id, record, NOW)
    picks = [
        select_engine(records, NOW, POLICY, content_key="ch", playing=playing, tiebreak=tiebreak),
        index.choose(NOW, content_key="ch", playing=playing),
    ]
    return [(pick.engine.container_id, pick.shared) for pick in picks]


def test_among_engines_playing_the_content_the_least_loaded_wins_however_recently_used():
    busy_idle = engine("a", streams=["s1", "s2"], last_stream_usage=ago(3600))
    light_recent = engine("b", streams=["s3"], last_stream_usage=ago(1))
    assert _shared_choices([busy_idle, light_recent]) == [("b", True), ("b", True)]


def test_among_equally_loaded_engines_playing_the_content_the_replicas_tiebreak_decides():
    rank = {"a": 1, "b": 0}.__getitem__
    records = [engine("a", streams=["s1"]), engine("b", streams=["s2"])]
    assert _shared_choices(records, rank) == [("b", True), ("b", True)]
    assert _shared_choices(records) == [("a", True), ("a", True)]  # without a rank the id settles it
    # Idle time does not count among them (it does between engines that would start the content afresh).
    idle_a = [
        engine("a", streams=["s1"], last_stream_usage=ago(3600)),
        engine("b", streams=["s2"], last_stream_usage=ago(1)),
    ]
    assert _shared_choices(idle_a, rank) == [("b", True), ("b", True)]


def test_the_index_takes_an_engine_back_when_its_claim_lapses_with_no_new_record():
    index = CandidateIndex(POLICY)
    index.update("a", engine("a", claim=claim("clean", expires_in=5), state="cleaning"), NOW)
    assert index.choose(NOW) is None
    assert index.choose(later(4.9)) is None
    assert index.choose(later(5)).engine.container_id == "a"  # before its verdict goes stale at 35 s


def test_the_index_takes_the_deletion_of_an_engine_it_never_had_in_its_stride():
    # A view reports deletions it cannot match to a record it reported (a key written and deleted
    # between two looks, a delete marker seen twice): forgetting nothing must not fail.
    index = CandidateIndex(POLICY)
    index.update("ghost", None, NOW)
    index.update("a", engine("a"), NOW)
    index.update("a", None, NOW)
    index.update("a", None, NOW)
    assert index.choose(NOW) is None


def test_with_sharing_turned_off_the_index_starts_every_viewer_on_the_least_loaded_engine():
    index = CandidateIndex(SelectionPolicy(share_content=False))
    index.update("a", engine("a"), NOW)
    index.update("b", engine("b", streams=["s1"]), NOW)
    choice = index.choose(NOW, content_key="ch", playing={"ch": {"b"}})
    assert (choice.engine.container_id, choice.shared) == ("a", False)


def test_an_excluded_engine_is_passed_over_this_time_and_chosen_again_the_next():
    index = CandidateIndex(POLICY)
    index.update("a", engine("a"), NOW)
    index.update("b", engine("b", streams=["s1"]), NOW)
    index.update("c", engine("c", streams=["s1", "s2"]), NOW)
    assert index.choose(NOW, exclude={"a"}).engine.container_id == "b"
    assert index.choose(NOW, exclude={"a", "b"}).engine.container_id == "c"
    assert index.choose(NOW, exclude={"a", "b", "c"}) is None
    assert index.choose(NOW).engine.container_id == "a"  # the entries passed over are back in the heap
    # Nor is an excluded engine shared, though it plays the content.
    choice = index.choose(NOW, content_key="ch", playing={"ch": {"a"}}, exclude={"a"})
    assert (choice.engine.container_id, choice.shared) == ("b", False)


def test_lapses_re_rank_without_compacting_the_ranking_heap_before_its_threshold():
    # A lapse pops its deadline and re-ranks: the ranking heap grows twice as fast as the deadlines'
    # here, so it is the one that reaches twice the engines plus 64 and is compacted.
    index = CandidateIndex(POLICY)
    index.update("b", engine("b", health_status="unhealthy"), NOW)  # counted among the engines, never ranked
    longest = 0
    for n in range(200):
        probed, lapse = later(n), later(n + 0.5)
        index.update("a", engine("a", last_health_check=probed, reservations={"r": lapse}), probed)
        longest = max(longest, len(index._ranked))
        assert index.choose(lapse).engine.container_id == "a"
        longest = max(longest, len(index._ranked))
        assert len(index._ranked) <= 2 * 2 + 64 + 1
    assert longest == 2 * 2 + 64
