"""CandidateIndex gives select_engine's answer, whatever happens to the records and however time passes."""

from datetime import timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from records import NOW, claim, engine

from shared.policy.selection import CandidateIndex, SelectionPolicy, select_engine
from shared.schemas import Claim

ENGINES = ["a", "b", "c", "d", "e"]
CONTENTS = ["ch1", "ch2"]
seconds = st.integers(-3, 12)
HEALTH_MAX_AGE_S = 10


def tiebreak(cid: str) -> int:
    return {"a": 3, "b": 1, "c": 3, "d": 0, "e": 2}[cid]  # ties on purpose: the id settles them


class IndexMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # A short freshness bound, so the steps of time_passes make verdicts go stale under the index.
        self.policy = SelectionPolicy(max_streams_per_engine=3, health_max_age_s=HEALTH_MAX_AGE_S)
        self.index = CandidateIndex(self.policy, tiebreak)
        self.records = {}
        self.in_flight = {}
        self.now = NOW

    def at(self, offset: int):
        return self.now + timedelta(seconds=offset)

    @rule(
        cid=st.sampled_from(ENGINES),
        healthy=st.booleans(),
        streams=st.integers(0, 3),
        reservations=st.lists(seconds, max_size=3),
        claimed=st.one_of(st.none(), st.tuples(st.sampled_from(["clean", "reap"]), seconds)),
        used=st.one_of(st.none(), st.integers(-100, 0)),
        checked=st.one_of(st.none(), st.integers(-HEALTH_MAX_AGE_S - 2, 0)),
    )
    def put(self, cid, healthy, streams, reservations, claimed, used, checked):
        record = engine(
            cid,
            health_status="healthy" if healthy else "unhealthy",
            streams=[f"s{i}" for i in range(streams)],
            reservations={f"r{i}": self.at(s) for i, s in enumerate(reservations)},
            claim=None
            if claimed is None
            else Claim(claim_id="c", purpose=claimed[0], holder="t", expires_at=self.at(claimed[1])),
            last_stream_usage=None if used is None else self.at(used),
            last_health_check=None if checked is None else self.at(checked),
        )
        self.records[cid] = record
        self.index.update(cid, record, self.now)

    @precondition(lambda self: self.records)
    @rule(data=st.data())
    def remove(self, data):
        cid = data.draw(st.sampled_from(sorted(self.records)))
        del self.records[cid]
        self.index.update(cid, None, self.now)

    @rule(cid=st.sampled_from(ENGINES), count=st.integers(0, 2))
    def in_flight_changes(self, cid, count):
        self.index.add_in_flight(cid, count - self.in_flight.get(cid, 0), self.now)
        if count:
            self.in_flight[cid] = count
        else:
            self.in_flight.pop(cid, None)

    @rule(step=st.sampled_from([0.5, 1, 3, 7]))
    def time_passes(self, step):
        self.now += timedelta(seconds=step)

    @rule(
        content=st.one_of(st.none(), st.sampled_from(CONTENTS)),
        hosts=st.dictionaries(st.sampled_from(CONTENTS), st.sets(st.sampled_from(ENGINES))),
        exclude=st.sets(st.sampled_from(ENGINES), max_size=2),
    )
    def choose(self, content, hosts, exclude):
        expected = select_engine(
            self.records.values(),
            self.now,
            self.policy,
            content_key=content,
            playing=hosts,
            tiebreak=tiebreak,
            in_flight=self.in_flight,
            exclude=exclude,
        )
        got = self.index.choose(self.now, content, hosts, exclude)
        summary = lambda s: None if s is None else (s.engine.container_id, s.shared)  # noqa: E731  # a one-line key for the comparisons below
        assert summary(got) == summary(expected)

    @invariant()
    def the_heaps_stay_bounded(self):
        assert len(self.index._ranked) <= 2 * len(self.records) + 65
        assert len(self.index._deadlines) <= 2 * len(self.records) + 65


TestCandidateIndex = IndexMachine.TestCase
TestCandidateIndex.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


def test_a_lapsing_reservation_brings_a_full_engine_back():
    index = CandidateIndex(SelectionPolicy(max_streams_per_engine=1))
    index.update("a", engine("a", reservations={"r": NOW + timedelta(seconds=5)}), NOW)
    assert index.choose(NOW) is None
    assert index.choose(NOW + timedelta(seconds=5)).engine.container_id == "a"


def test_a_lapsing_claim_brings_the_engine_back():
    index = CandidateIndex(SelectionPolicy())
    index.update("a", engine("a", claim=claim("clean", expires_in=2), state="cleaning"), NOW)
    assert index.choose(NOW) is None
    assert index.choose(NOW + timedelta(seconds=2)).engine.container_id == "a"


def test_a_removed_and_readded_engine_is_ranked_by_its_new_record():
    index = CandidateIndex(SelectionPolicy())
    index.update("a", engine("a"), NOW)
    index.update("b", engine("b", streams=["s1"]), NOW)
    index.update("a", None, NOW)
    index.update("a", engine("a", streams=["s1", "s2"]), NOW)
    assert index.choose(NOW).engine.container_id == "b"
