"""Rendezvous partition of engines over prober replicas, and the probe schedule."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records import engine

from shared.policy.partition import (
    ProbeSchedule,
    Streak,
    after_probe,
    first_due,
    jittered,
    next_due,
    overdue,
    owned_keys,
    owner,
    rescue_position,
    settled,
    streak_of,
    weight,
)

KEYS = [f"acestream-{i}" for i in range(3000)]
members_st = st.lists(st.text("abcdef0123456789-", min_size=1, max_size=12), min_size=1, max_size=8, unique=True)
keys_st = st.lists(st.text("abcxyz0123456789-_", min_size=1, max_size=20), max_size=60, unique=True)
u_st = st.floats(0, 1, exclude_max=True)

S = ProbeSchedule(interval_s=30, recheck_s=5, jitter=0.1, new_engine_window_s=1, fall=2, rise=2)
I, R = S.interval_s, S.recheck_s  # noqa: E741  # I and R: the interval and recheck of the formulas below
MID = 0.5  # u that yields no jitter

# ---------------------------------------------------------------- partition


def test_weights_are_the_same_in_every_process():
    # A pinned value: replicas must agree, so no per-process salted hash() may creep in.
    assert weight("prober-a", "acestream-1") == 0x5478CA6FD2DE818B
    assert weight("a", "b") != weight("b", "a")


def test_no_members_means_no_owner_and_one_member_owns_everything():
    assert owner("acestream-1", []) is None
    assert {owner(key, ["solo"]) for key in KEYS} == {"solo"}


@given(members_st, keys_st)
def test_owner_ignores_member_order_and_duplicates(members, keys):
    for key in keys:
        assert owner(key, members) == owner(key, list(reversed(members))) == owner(key, members + members)
        assert owner(key, members) in members


@given(members_st, keys_st)
def test_owned_keys_partition_the_fleet(members, keys):
    shares = [owned_keys(keys, members, me) for me in members]
    assert set().union(*shares) == set(keys)
    assert sum(len(share) for share in shares) == len(keys)  # disjoint


@given(members_st, keys_st, st.data())
def test_removing_a_member_moves_only_its_own_keys(members, keys, data):
    gone = data.draw(st.sampled_from(members))
    survivors = [m for m in members if m != gone]
    for key in keys:
        before, after = owner(key, members), owner(key, survivors)
        if before != gone:
            assert after == before


@given(members_st, keys_st, st.text("ghijk", min_size=1, max_size=6))
def test_a_joining_member_only_takes_keys(members, keys, newcomer):
    for key in keys:
        before, after = owner(key, members), owner(key, members + [newcomer])
        assert after in (before, newcomer)


@pytest.mark.parametrize("count", [2, 3, 5, 10])
def test_shares_are_even(count):
    members = [f"prober-{i}" for i in range(count)]
    shares = Counter(owner(key, members) for key in KEYS)
    fair = len(KEYS) / count
    assert set(shares) == set(members)
    assert all(0.8 * fair <= share <= 1.2 * fair for share in shares.values()), shares


def test_a_dead_members_share_spreads_over_all_survivors():
    members = [f"prober-{i}" for i in range(4)]
    orphans = [key for key in KEYS if owner(key, members) == "prober-0"]
    heirs = Counter(owner(key, members[1:]) for key in orphans)
    assert set(heirs) == set(members[1:])
    assert min(heirs.values()) >= 0.2 * len(orphans)


def test_owned_keys_counts_me_as_a_member_even_before_my_heartbeat_is_seen():
    assert owned_keys(["a", "b", "c"], [], "me") == {"a", "b", "c"}
    assert owned_keys(KEYS, ["other"], "me") == {key for key in KEYS if owner(key, ["other", "me"]) == "me"}


# ---------------------------------------------------------------- hysteresis mirror


@pytest.mark.parametrize(
    "start, outcomes, expected",
    [
        # (status after each probe, settled?) — settled means "probe again in an interval"
        ("unknown", [True], [("healthy", True)]),
        ("unknown", [False, False], [("unknown", False), ("unhealthy", True)]),
        ("healthy", [True, True], [("healthy", True), ("healthy", True)]),
        ("healthy", [False, False, False], [("healthy", False), ("unhealthy", True), ("unhealthy", True)]),
        ("healthy", [False, True], [("healthy", False), ("healthy", True)]),
        ("unhealthy", [True, True, True], [("unhealthy", False), ("healthy", True), ("healthy", True)]),
        ("unhealthy", [True, False], [("unhealthy", False), ("unhealthy", True)]),
    ],
)
def test_transitions_are_rechecked_and_settled_states_wait_an_interval(start, outcomes, expected):
    streak, seen = Streak(start), []
    for ok in outcomes:
        streak = after_probe(streak, ok, S)
        seen.append((streak.status, settled(streak, ok)))
    assert seen == expected


def test_streak_starts_from_the_record():
    record = engine(health_status="unhealthy", consecutive_failures=3, consecutive_successes=0)
    assert streak_of(record) == Streak("unhealthy", 3, 0)
    assert streak_of(None) == Streak()


# ---------------------------------------------------------------- when


@given(st.floats(0.1, 3600), st.floats(0, 1), u_st)
def test_jitter_stays_within_its_band(base, jitter, u):
    assert base * (1 - jitter / 2) <= jittered(base, jitter, u) <= base * (1 + jitter / 2)


def test_jitter_is_centred():
    assert jittered(30, 0.1, MID) == 30


@pytest.mark.parametrize(
    "ok, status, finished, expected",
    [
        (True, "healthy", 100.01, 100 + I),  # settled: keep the cadence from the due time
        (True, "healthy", 104.9, 100 + I),  # a slow success does not push the phase
        (False, "unhealthy", 105, 100 + I),  # down and still failing: an interval (HAProxy downinter = inter)
        (False, "healthy", 105, 105 + R),  # first failure: confirm quickly
        (True, "unhealthy", 100.01, 100.01 + R),  # first success after being down: confirm quickly
        (True, "healthy", 200, 200 + I / 2),  # after a long stall: half an interval, not back to back
    ],
)
def test_next_due(ok, status, finished, expected):
    assert next_due(100, finished, ok, Streak(status), S, MID) == pytest.approx(expected)


def test_a_hung_engine_is_unhealthy_within_interval_plus_two_timeouts_plus_recheck():
    timeout = 5.0
    streak, due = Streak("healthy"), 0.0
    now = due  # the last good probe; the engine hangs right after it
    streak = after_probe(streak, True, S)
    due = next_due(due, now + 0.01, True, streak, S, MID)
    while streak.status != "unhealthy":
        finished = due + timeout
        streak = after_probe(streak, False, S)
        due, now = next_due(due, finished, False, streak, S, MID), finished
    assert now == pytest.approx(I + 2 * timeout + R)


@pytest.mark.parametrize(
    "age, arrival, u, expected",
    [
        (None, "startup", 0.5, 1000 + I / 2),  # the fleet is spread over an interval at start-up
        (None, "startup", 0.99, 1000 + 0.99 * I),
        (None, "registered", 0.99, 1000 + 0.99),  # a new engine: within new_engine_window_s
        (None, "adopted", 0.5, 1000 + 0.5),
        (10, "startup", 0.7, 1000 + I - 10),  # recently probed (by anyone): keep its phase
        (10, "adopted", 0.2, 1000 + I - 10),
        (-5, "adopted", 0.2, 1000 + I),  # a clock ahead of ours: at most an interval
        (I, "adopted", 0.5, 1000 + I / 8),  # overdue: caught up within a quarter interval
        (500, "startup", 0.99, 1000 + 0.99 * I / 4),
    ],
)
def test_first_due(age, arrival, u, expected):
    assert first_due(1000, age, arrival, S, u) == pytest.approx(expected)


@given(st.one_of(st.none(), st.floats(-100, 10_000)), st.sampled_from(["startup", "registered", "adopted"]), u_st)
def test_first_probe_is_never_more_than_an_interval_away(age, arrival, u):
    assert 1000 <= first_due(1000, age, arrival, S, u) <= 1000 + I


@settings(max_examples=500)
@given(st.floats(0, 1.05), st.floats(0, 1.5), u_st)
def test_a_killed_members_engines_are_probed_within_two_intervals(last_probe_before_kill, detected_after, u):
    """The survivors drop a killed member within its heartbeat TTL (1.5 intervals) and
    adopt its engines; each is then probed within two intervals of the kill."""
    kill = 10_000.0
    last_probe = kill - last_probe_before_kill * I
    detected = kill + detected_after * I
    assert first_due(detected, detected - last_probe, "adopted", S, u) <= kill + 2 * I


def test_batching_stays_inside_the_jitter():
    assert S.batch_s <= I * S.jitter / 2
    assert ProbeSchedule(interval_s=1, jitter=0.1).batch_s == pytest.approx(0.025)
    assert ProbeSchedule(interval_s=3600).batch_s == 0.5


# ---------------------------------------------------------------- rescue

RESCUE = ProbeSchedule(interval_s=30, recheck_s=5, new_engine_window_s=1)


def test_rescue_positions_are_the_rendezvous_order_and_agree_everywhere():
    members = ["m0", "m1", "m2", "m3"]
    for key in [f"engine-{i}" for i in range(50)]:
        positions = sorted(rescue_position(key, members, me) for me in members)
        assert positions == [0, 1, 2, 3]
        assert [m for m in members if rescue_position(key, members, m) == 0] == [owner(key, members)]


def test_a_never_probed_engine_is_rescued_in_turns_after_its_first_probe_window():
    step = 1 + 1  # timeout + the report's way
    assert not overdue(None, 100, "registered", 0, RESCUE, 1, 45)  # the owner never "rescues"
    assert not overdue(None, 1 + step - 0.1, "registered", 1, RESCUE, 1, 45)
    assert overdue(None, 1 + step, "registered", 1, RESCUE, 1, 45)
    assert not overdue(None, 1 + step, "registered", 2, RESCUE, 1, 45)  # the next one waits its turn
    assert overdue(None, 1 + 2 * step, "registered", 2, RESCUE, 1, 45)


def test_engines_known_at_start_up_get_the_whole_interval_their_owner_spreads_first_probes_over():
    assert not overdue(None, 10, "startup", 1, RESCUE, 1, 45)
    assert overdue(None, 30 + 2, "startup", 1, RESCUE, 1, 45)


def test_a_stale_engine_is_rescued_and_a_fresh_one_never():
    known = RESCUE.catch_up_s + 2
    assert not overdue(44.9, known, "registered", 1, RESCUE, 1, 45)
    assert overdue(45, known, "registered", 1, RESCUE, 1, 45)
    assert not overdue(45, known, "registered", 2, RESCUE, 1, 45)
    assert overdue(47, known, "registered", 2, RESCUE, 1, 45)
    assert not overdue(100, 1, "startup", 1, RESCUE, 1, 45)  # just learned of it: its owner catches it up first
