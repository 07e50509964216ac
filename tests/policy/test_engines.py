"""LoadMemo: always the same answer as `load`, however records change and time passes."""

from hypothesis import given, strategies as st

from records import engine, later
from shared.policy.engines import LoadMemo, load
from shared.policy.selection import SelectionPolicy, select_engine

records = st.builds(
    lambda cid, streams, expiries: engine(
        cid, streams=[f"s{i}" for i in range(streams)], reservations={f"r{i}": later(e) for i, e in enumerate(expiries)}
    ),
    st.sampled_from(["a", "b"]),
    st.integers(0, 3),
    st.lists(st.integers(-5, 20), max_size=5),
)


@given(st.lists(st.tuples(records, st.integers(0, 3)), min_size=1, max_size=30), st.integers(0, 20))
def test_memo_agrees_with_load_as_records_change_and_time_passes(steps, reuse_every):
    memo, seconds, previous = LoadMemo(), -6, {}
    for record, advance in steps:
        seconds += advance
        # Sometimes ask again about the record already seen for this engine (the memo's hit path).
        if reuse_every and seconds % (reuse_every + 1) == 0 and record.container_id in previous:
            record = previous[record.container_id]
        previous[record.container_id] = record
        now = later(seconds)
        assert memo(record, now) == load(record, now)


def test_a_reservation_lapsing_frees_the_memoised_engine():
    memo, record = LoadMemo(), engine("a", reservations={"r1": later(5)})
    assert memo(record, later(0)) == 1
    assert memo(record, later(4.9)) == 1
    assert memo(record, later(5)) == 0


def test_forgotten_engines_are_recomputed():
    memo, record = LoadMemo(), engine("a", streams=["s1"])
    assert memo(record, later(0)) == 1
    memo.forget("a")
    assert memo(record, later(0)) == 1


def test_selection_with_the_memo_picks_what_plain_load_picks():
    engines = [engine("a", streams=["s1"]), engine("b", reservations={"r": later(3)}), engine("c", streams=["s1", "s2"])]
    policy, memo = SelectionPolicy(max_streams_per_engine=3), LoadMemo()
    for seconds in (0, 2, 3, 4):
        plain = select_engine(engines, later(seconds), policy)
        memoised = select_engine(engines, later(seconds), policy, load_of=memo)
        assert plain.engine.container_id == memoised.engine.container_id
