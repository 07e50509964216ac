"""Engines across hosts: placement of new engines, per-host floors for reaping and adding."""

from hypothesis import example, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from records import NOW, ago, claim, engine

from shared.policy.hosts import UNKNOWN_HOST, host_floor_deficit, keeps_host_floor, loads, place
from shared.policy.pool import (
    PoolPolicy,
    above_floors_without,
    engines_to_add,
    engines_to_start,
    is_free,
    next_to_reap,
    plan_starts,
)


def on(host, n, streams=0, prefix=None):
    """`n` idle engines on `host`, the first `streams` of them carrying one stream each."""
    prefix = prefix or host or "none"
    return [
        engine(
            f"{prefix}-{i}",
            host_id=host or None,
            streams=[f"s-{prefix}-{i}"] if i < streams else [],
            idle_since=None if i < streams else ago(3600),
        )
        for i in range(n)
    ]


def test_a_new_engine_goes_to_the_live_host_running_the_fewest():
    records = on("a", 3) + on("b", 1) + on("c", 2)
    assert place(records, {"a", "b", "c"}, 1) == ["b"]


def test_engines_spread_one_at_a_time_recounting_after_each():
    records = on("a", 3) + on("b", 1)
    assert place(records, {"a", "b"}, 3) == ["b", "b", "a"]


def test_between_equally_full_hosts_the_one_carrying_fewer_streams_gets_it():
    records = on("a", 2, streams=2) + on("b", 2, streams=1)
    assert place(records, {"a", "b"}, 1) == ["b"]


def test_a_full_tie_goes_to_the_smaller_host_id_so_every_replica_agrees():
    assert place(on("b", 1) + on("a", 1), {"b", "a"}, 1) == ["a"]


def test_a_host_without_records_is_the_emptiest():
    assert place(on("a", 1), {"a", "new"}, 1) == ["new"]


def test_hosts_nobody_hears_get_nothing():
    assert place(on("a", 5), {"a"}, 2) == ["a", "a"]
    assert place(on("a", 5) + on("b", 0), {"a"}, 1) == ["a"]


def test_hosts_at_their_cap_get_nothing_and_the_list_is_short_when_all_are_full():
    records = on("a", 2) + on("b", 3)
    assert place(records, {"a", "b"}, 5, host_max=3) == ["a"]
    assert place(records, {"a", "b"}, 1, host_max=2) == []


def test_no_cap_means_no_limit_per_host():
    assert place(on("a", 100), {"a"}, 2, host_max=0) == ["a", "a"]


def test_engines_of_no_recorded_host_count_apart_and_never_receive_new_ones():
    records = on(None, 4) + on("a", 1)
    assert loads(records)[UNKNOWN_HOST].engines == 4
    assert place(records, {UNKNOWN_HOST, "a"}, 2) == ["a", "a"]


def test_nothing_is_placed_for_a_count_of_zero_or_without_live_hosts():
    assert place(on("a", 1), {"a"}, 0) == []
    assert place(on("a", 1), set(), 3) == []


@given(
    layout=st.dictionaries(
        st.sampled_from("abcdef"), st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=6
    ),
    live=st.sets(st.sampled_from("abcdefg")),
    count=st.integers(0, 12),
    host_max=st.integers(0, 8),
)
def test_placement_respects_caps_and_liveness_and_always_fills_the_emptiest(layout, live, count, host_max):
    records = [r for host, (n, busy) in layout.items() for r in on(host, n, streams=min(n, busy))]
    placed = place(records, live, count, host_max)
    engines = {h: loads(records, live)[h].engines for h in live}
    room = sum(max(0, host_max - engines[h]) for h in live) if host_max else (count if live else 0)
    assert len(placed) == min(count, room)
    assert set(placed) <= live
    for host in placed:
        # Each engine went to a host running the fewest engines among those with room, at that moment.
        open_hosts = [h for h in live if not host_max or engines[h] < host_max]
        assert engines[host] == min(engines[h] for h in open_hosts)
        engines[host] += 1
    if host_max:
        assert all(engines[h] <= max(host_max, loads(records, live)[h].engines) for h in live)


def test_a_host_keeps_its_floor_when_others_remain_there():
    records = on("a", 2) + on("b", 1)
    assert keeps_host_floor(records, records[0], 1)
    assert not keeps_host_floor(records, records[2], 1)
    assert keeps_host_floor(records, records[2], 0)


def test_the_reaper_takes_an_idle_engine_from_a_host_above_its_floor_only():
    # b's single engine is the longest idle, but taking it would leave b with none.
    records = on("a", 3) + [engine("b-0", host_id="b", idle_since=ago(9000))]
    policy = PoolPolicy(min_replicas=1, min_free_replicas=0, max_replicas=10, min_replicas_per_host=1)
    assert next_to_reap(records, NOW, policy).host_id == "a"
    without_floor = PoolPolicy(min_replicas=1, min_free_replicas=0, max_replicas=10)
    assert next_to_reap(records, NOW, without_floor).container_id == "b-0"


@given(
    layout=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 5), min_size=1, max_size=4),
    floor=st.integers(0, 3),
    fleet_floor=st.integers(0, 6),
)
def test_reaping_until_nothing_is_left_to_reap_never_takes_a_host_below_its_floor(layout, floor, fleet_floor):
    records = [r for host, n in layout.items() for r in on(host, n)]
    policy = PoolPolicy(
        min_replicas=fleet_floor, min_free_replicas=0, max_replicas=30, grace_period_s=0, min_replicas_per_host=floor
    )
    while (victim := next_to_reap(records, NOW, policy)) is not None:
        records = [r for r in records if r.container_id != victim.container_id]
    for host, n in layout.items():
        left = sum(r.host_id == host for r in records)
        assert left >= min(n, floor)
        # Reaping stops only at a floor: the host's own, or the fleet's.
        assert left == min(n, floor) or len(records) <= fleet_floor or left == n


def test_live_hosts_below_their_floor_add_up_to_the_deficit():
    records = on("a", 3) + on("b", 1)
    assert host_floor_deficit(records, {"a", "b", "c"}, 2) == 1 + 2
    assert host_floor_deficit(records, {"a", "b", "c"}, 0) == 0
    assert host_floor_deficit(on(None, 1), {UNKNOWN_HOST}, 2) == 0


def test_the_provisioner_adds_what_the_short_hosts_lack_counting_starting_ones():
    records = on("a", 4)
    policy = PoolPolicy(min_replicas=2, min_free_replicas=1, max_replicas=10, min_replicas_per_host=2)
    deficit = host_floor_deficit(records, {"a", "b", "c"}, 2)
    assert engines_to_add(records, NOW, policy, host_deficit=deficit) == 4
    assert engines_to_add(records, NOW, policy, starting=3, host_deficit=deficit) == 1
    # The ceiling still holds.
    assert engines_to_add(records, NOW, PoolPolicy(max_replicas=5, min_replicas_per_host=2), host_deficit=4) == 1


# ---------------------------------------------------------------- plan_starts: sizing fleet-wide, then placement

layouts = st.dictionaries(st.sampled_from("abcd"), st.integers(0, 5), max_size=4)
starts = st.dictionaries(st.sampled_from("abcde"), st.integers(0, 3), max_size=5)


def test_engines_starting_elsewhere_count_towards_the_fleet_and_their_hosts_room():
    policy = PoolPolicy(min_replicas=4, min_free_replicas=0, max_replicas=10)
    # Two engines on b are still starting: only one more is needed, and a (emptier once b's count) gets it.
    assert plan_starts(on("a", 1), NOW, policy, {"a", "b"}, {"b": 2}) == ["a"]
    assert plan_starts(on("a", 1), NOW, policy, {"a", "b"}, {}) == ["b", "a", "b"]
    assert plan_starts(on("a", 1), NOW, policy, {"a", "b"}, {"b": 2}, host_max=1) == []


@given(layout=layouts, starting=starts, unregistered=st.integers(0, 4), demand=st.booleans(), floor=st.integers(0, 4))
def test_with_one_host_the_plan_is_todays_sizing_all_on_that_host(layout, starting, unregistered, demand, floor):
    records = [r for host, n in layout.items() for r in on(host, n)]
    policy = PoolPolicy(min_replicas=floor, min_free_replicas=1, max_replicas=8)
    expected = engines_to_start(records, NOW, policy, unregistered=unregistered, demand=demand)
    assert plan_starts(records, NOW, policy, {"h"}, {"h": unregistered}, demand=demand) == ["h"] * expected


@given(
    layout=layouts,
    starting=starts,
    live=st.sets(st.sampled_from("abcde"), min_size=1),
    turns=st.lists(st.sampled_from("abcde"), max_size=8),
    max_replicas=st.integers(1, 12),
    host_max=st.integers(0, 6),
    per_host=st.integers(0, 2),
    demand=st.booleans(),
)
def test_holders_taking_turns_never_pass_the_ceiling_or_a_hosts_cap(
    layout, starting, live, turns, max_replicas, host_max, per_host, demand
):
    """Each turn one live host holds the lock, plans fleet-wide and starts only its own entries."""
    records = [r for host, n in layout.items() for r in on(host, n)]
    policy = PoolPolicy(min_replicas=3, min_free_replicas=1, max_replicas=max_replicas, min_replicas_per_host=per_host)
    starting = dict(starting)
    before = len(records) + sum(starting.values())
    per_host_before = {h: loads(records, live, starting)[h].engines for h in live}
    for holder in (h for h in turns if h in live):
        plan = plan_starts(records, NOW, policy, live, starting, host_max, demand)
        assert set(plan) <= live
        starting[holder] = starting.get(holder, 0) + plan.count(holder)
        total = len(records) + sum(starting.values())
        assert total <= max(before, max_replicas)
        for host in live:
            now_there = loads(records, live, starting)[host].engines
            assert not host_max or now_there <= max(host_max, per_host_before[host])


def test_a_live_host_below_its_floor_gets_engines_though_the_fleet_floors_are_met():
    policy = PoolPolicy(min_replicas=2, min_free_replicas=1, max_replicas=10, min_replicas_per_host=1)
    assert plan_starts(on("a", 3), NOW, policy, {"a", "b"}, {}) == ["b"]
    assert plan_starts(on("a", 3), NOW, policy, {"a", "b"}, {"b": 1}) == []  # its engine is on the way
    assert plan_starts(on("a", 3), NOW, policy, {"a"}, {}) == []  # b's provisioner is gone: nothing to place there


# ---------------------------------------------------------------- reaping: each host's reaper, all at once


RACE = [("a", "claim"), ("b", "claim"), ("a", "recheck"), ("b", "recheck")]  # both picked before either's claim


@settings(max_examples=300)
@given(
    layout=st.dictionaries(st.sampled_from("abc"), st.tuples(st.integers(0, 4), st.integers(0, 1)), min_size=1),
    min_replicas=st.integers(0, 6),
    min_free=st.integers(0, 4),
    per_host=st.integers(0, 2),
    steps=st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["claim", "recheck", "look", "remove"]))),
)
@example(layout={"a": (2, 0), "b": (2, 0)}, min_replicas=3, min_free=0, per_host=0, steps=RACE)
@example(layout={"a": (2, 0), "b": (2, 0)}, min_replicas=0, min_free=3, per_host=0, steps=RACE)
@example(
    layout={"a": (3, 0), "b": (1, 0)}, min_replicas=1, min_free=0, per_host=1, steps=[("b", "claim"), ("b", "recheck")]
)
def test_hosts_reapers_claiming_from_stale_views_never_break_a_fleet_or_host_floor(
    layout, min_replicas, min_free, per_host, steps
):
    """Each host's reaper picks its own host's victim from what it last saw (`look` refreshes that), claims it
    (the state-keeper refuses an engine already claimed), later re-checks the floors on the records as they
    are then, and releases it or removes it. Steps of the hosts' reapers interleave in any order."""
    original = {r.container_id: r for host, (n, busy) in layout.items() for r in on(host, n, streams=busy)}
    records = dict(original)
    policy = PoolPolicy(min_replicas, min_free, max_replicas=30, grace_period_s=0, min_replicas_per_host=per_host)
    seen = {host: list(records.values()) for host in layout}
    claimed: dict[str, list[str]] = {host: [] for host in layout}  # not re-checked yet
    doomed: dict[str, list[str]] = {host: [] for host in layout}  # re-checked: will be removed
    for host, step in ((h, step) for h, step in steps if h in layout):
        if step == "look":
            seen[host] = list(records.values())
        elif step == "claim":
            skip = {r.container_id for r in seen[host] if r.host_id != host}
            victim = next_to_reap(seen[host], NOW, policy, skip=skip)
            if victim is None or victim.container_id not in records or records[victim.container_id].claim:
                continue  # 404 or 409
            records[victim.container_id] = replace(records[victim.container_id], claim=claim("reap"), state="draining")
            claimed[host].append(victim.container_id)
        elif step == "recheck" and claimed[host]:
            victim = claimed[host].pop(0)
            if above_floors_without(list(records.values()), records[victim], NOW, policy):
                doomed[host].append(victim)
            else:
                records[victim] = original[victim]  # released
        elif step == "remove":
            for victim in doomed[host]:
                del records[victim]
            doomed[host].clear()
        # What stays once every removal under way is done: the floors, or what there was if less.
        going = {victim for victims in doomed.values() for victim in victims}
        staying = [original[cid] for cid in records if cid not in going]
        assert len(staying) >= min(min_replicas, len(original))
        assert sum(is_free(r, NOW) for r in staying) >= min(min_free, sum(is_free(r, NOW) for r in original.values()))
        for h in layout:
            here = sum(r.host_id == h for r in original.values())
            assert sum(r.host_id == h for r in staying) >= min(per_host, here)
        assert all(original[victim].host_id == h for h, victims in doomed.items() for victim in victims)
