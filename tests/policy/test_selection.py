"""select_engine: candidates, stickiness, least load, longest idle, reservations as load."""

import pytest
from records import NOW, ago, claim, engine, later

from shared.policy.selection import SelectionPolicy, reserve, retry_after_s, select_engine

POLICY = SelectionPolicy(max_streams_per_engine=3)


def chosen(engines, policy=POLICY, **kwargs):
    selection = select_engine(engines, NOW, policy, **kwargs)
    return None if selection is None else selection.engine.container_id


@pytest.mark.parametrize(
    "excluded",
    [
        engine("x", health_status="unhealthy"),
        engine("x", health_status="unknown"),
        engine("x", claim=claim("clean"), state="cleaning"),
        engine("x", claim=claim("reap"), state="draining"),
        engine("x", streams=["a", "b", "c"]),
        engine("x", streams=["a"], reservations={"r1": later(10), "r2": later(10)}),
    ],
    ids=["unhealthy", "unknown", "cleaning", "draining", "full-streams", "full-with-reservations"],
)
def test_engines_that_cannot_take_a_stream_are_never_chosen(excluded):
    assert chosen([excluded]) is None
    assert chosen([excluded, engine("ok")]) == "ok"


def test_expired_claim_and_reservations_do_not_hold_an_engine_back():
    lapsed = engine(
        "x", claim=claim("clean", expires_in=-1), state="cleaning", reservations={"r": ago(1)}, streams=["a", "b"]
    )
    assert chosen([lapsed]) == "x"


def test_least_load_wins():
    engines = [engine("a", streams=["s1", "s2"]), engine("b", streams=["s3"]), engine("c", streams=["s4", "s5"])]
    assert chosen(engines) == "b"


def test_live_reservations_count_as_load():
    engines = [engine("a", reservations={"r1": later(5)}), engine("b", streams=[])]
    assert chosen(engines) == "b"


def test_equal_load_prefers_the_longest_idle_and_never_used_first():
    engines = [
        engine("recent", last_stream_usage=ago(10)),
        engine("old", last_stream_usage=ago(3600)),
        engine("never", last_stream_usage=None),
    ]
    assert chosen(engines) == "never"
    assert chosen(engines[:2]) == "old"


def test_ties_break_by_container_id_unless_a_rank_is_given():
    assert chosen([engine("b"), engine("a")]) == "a"
    reverse = {"a": 2, "b": 1}
    assert chosen([engine("b"), engine("a")], tiebreak=reverse.__getitem__) == "b"


def test_the_rank_only_breaks_ties():
    engines = [engine("a", streams=["s"]), engine("b", streams=["s", "t"])]
    assert chosen(engines, tiebreak={"a": 9, "b": 0}.__getitem__) == "a"
    aged = [engine("a", last_stream_usage=ago(5)), engine("b", last_stream_usage=ago(50))]
    assert chosen(aged, tiebreak={"a": 0, "b": 9}.__getitem__) == "b"


def test_content_already_playing_is_shared():
    engines = [engine("a", streams=["s1", "s2"]), engine("b")]
    selection = select_engine(engines, NOW, POLICY, content_key="ch1", playing={"ch1": {"a"}})
    assert selection.engine.container_id == "a" and selection.shared is True


def test_sharing_can_be_turned_off():
    engines = [engine("a", streams=["s1"]), engine("b")]
    policy = SelectionPolicy(max_streams_per_engine=3, share_content=False)
    selection = select_engine(engines, NOW, policy, content_key="ch1", playing={"ch1": {"a"}})
    assert selection.engine.container_id == "b" and selection.shared is False


def test_a_full_engine_is_not_shared_even_if_it_plays_the_content():
    engines = [engine("a", streams=["s1", "s2", "s3"]), engine("b")]
    selection = select_engine(engines, NOW, POLICY, content_key="ch1", playing={"ch1": {"a"}})
    assert selection.engine.container_id == "b" and selection.shared is False


def test_unknown_content_falls_back_to_least_load():
    selection = select_engine([engine("a", streams=["s"]), engine("b")], NOW, POLICY, content_key="zz", playing={})
    assert selection.engine.container_id == "b" and not selection.shared


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_max_streams_per_engine_is_the_limit(limit):
    policy = SelectionPolicy(max_streams_per_engine=limit)
    record = engine("a")
    for i in range(limit):
        assert select_engine([record], NOW, policy) is not None
        record = reserve(record, f"r{i}", NOW, 30)
    assert select_engine([record], NOW, policy) is None


def test_reserve_adds_a_reservation_that_expires_after_the_ttl_and_drops_expired_ones():
    record = engine("a", reservations={"old": ago(1)})
    reserved = reserve(record, "new", NOW, 30)
    assert reserved.reservations == {"new": later(30)}


def test_retry_after_is_the_soonest_reservation_expiry_clamped():
    full = engine("a", reservations={"r1": later(12), "r2": later(4), "r3": later(20)})
    assert retry_after_s([full], NOW) == 4.0
    assert retry_after_s([engine("b", health_status="unhealthy")], NOW) == 5.0
    assert retry_after_s([engine("c", reservations={"r": later(0.2)})], NOW) == 1.0


def test_an_excluded_engine_is_never_chosen_even_when_it_is_the_best():
    engines = [engine("best"), engine("busy", streams=["s1", "s2"])]
    assert chosen(engines, exclude={"best"}) == "busy"
    assert chosen(engines, exclude={"best", "busy"}) is None


def test_an_excluded_engine_is_not_shared_even_when_it_plays_the_content():
    engines = [engine("stalled", streams=["s1"]), engine("other", streams=["s2", "s3"])]
    selection = select_engine(
        engines, NOW, POLICY, content_key="ch1", playing={"ch1": {"stalled"}}, exclude=["stalled"]
    )
    assert selection.engine.container_id == "other" and selection.shared is False


def test_excluding_an_unknown_engine_changes_nothing():
    assert chosen([engine("a"), engine("b", streams=["s"])], exclude={"gone"}) == "a"
