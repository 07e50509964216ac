"""Pool sizing shared by the provisioner and the reaper: additions, reaping, floors, replacement."""

from dataclasses import replace

import msgspec
import pytest
from records import NOW, ago, claim, engine, later

from shared.policy.pool import (
    PoolPolicy,
    above_floors_without,
    counted,
    engines_to_add,
    idle_for_s,
    is_free,
    is_outage,
    next_to_reap,
    next_to_replace,
    reapable,
    unhealthy_for_s,
)

POLICY = PoolPolicy(
    min_replicas=2, min_free_replicas=1, max_replicas=10, grace_period_s=30, unhealthy_replace_after_s=120
)


def idle(cid, seconds=3600, **fields):
    return engine(cid, **{"idle_since": ago(seconds), **fields})


def busy(cid, **fields):
    return engine(cid, streams=[f"s-{cid}"], idle_since=None, **fields)


def sick(cid, seconds=600, **fields):
    return engine(cid, **{"health_status": "unhealthy", "health_since": ago(seconds), **fields})


def ids(records):
    return sorted(r.container_id for r in records)


# ---------------------------------------------------------------- is_free / counted


@pytest.mark.parametrize(
    "record, free",
    [
        (engine("x"), True),
        (engine("x", health_status="unhealthy"), False),
        (engine("x", health_status="unknown"), False),
        (busy("x"), False),
        (engine("x", reservations={"r": later(5)}), False),
        (engine("x", reservations={"r": ago(5)}), True),
        (engine("x", claim=claim("clean"), state="cleaning"), True),
        (engine("x", claim=claim("reap"), state="draining"), False),
        (engine("x", claim=claim("reap", expires_in=-1), state="draining"), True),
    ],
    ids=[
        "healthy-idle",
        "unhealthy",
        "unknown",
        "streaming",
        "live-reservation",
        "expired-reservation",
        "being-cleaned",
        "being-reaped",
        "lapsed-reap-claim",
    ],
)
def test_is_free(record, free):
    assert is_free(record, NOW) is free


def test_counted_leaves_out_external_draining_and_the_engine_due_for_replacement():
    records = [
        engine("a"),
        engine("ext", runtime="external"),
        engine("gone", claim=claim("reap"), state="draining"),
        engine("clean", claim=claim("clean"), state="cleaning"),
        sick("due", 600),
        sick("recent", 10),
    ]
    assert ids(counted(records, NOW, POLICY)) == ["a", "clean", "recent"]


def test_every_engine_due_for_replacement_makes_room_for_a_successor():
    """A host cut off with two sick engines: its reaper can remove neither, so the fleet must start
    successors for both, not wait for the first removal (tests/reliability/test_chaos_partition.py)."""
    records = [engine("a"), engine("b"), sick("cut-1", 600), sick("cut-2", 500)]
    assert ids(counted(records, NOW, POLICY)) == ["a", "b"]
    assert engines_to_add(records, NOW, replace(POLICY, min_replicas=3)) == 1
    assert next_to_replace(records, NOW, POLICY).container_id == "cut-1"  # removal stays one at a time


def test_counted_keeps_unhealthy_engines_during_an_outage():
    records = [sick("a"), sick("b"), engine("c")]
    assert ids(counted(records, NOW, POLICY)) == ["a", "b", "c"]


# ---------------------------------------------------------------- engines_to_add


@pytest.mark.parametrize(
    "records, kwargs, expected",
    [
        ([], {}, 2),
        ([engine("a")], {}, 1),
        ([engine("a"), engine("b")], {}, 0),
        ([engine("a"), engine("b"), engine("c")], {}, 0),
        ([busy("a"), busy("b")], {}, 1),
        ([busy("a"), busy("b"), busy("c")], {}, 1),
        ([engine("a", health_status="unknown"), busy("b")], {}, 1),
        ([busy("a"), busy("b")], {"starting": 1}, 0),
        ([], {"starting": 1}, 1),
        ([], {"starting": 2}, 0),
        ([engine("a"), engine("b")], {"demand": True}, 0),
        ([busy("a"), busy("b")], {"demand": True}, 1),
        ([busy("a"), busy("b")], {"demand": True, "starting": 1}, 0),
        ([engine("ext", runtime="external"), engine("ext2", runtime="external")], {}, 2),
        (
            [engine("a", claim=claim("clean"), state="cleaning"), engine("b", claim=claim("clean"), state="cleaning")],
            {},
            0,
        ),
        ([engine("a"), engine("b", claim=claim("reap"), state="draining")], {}, 1),
        ([engine("a"), sick("b", 600)], {}, 1),
        ([engine("a"), sick("b", 10)], {}, 0),
        ([sick("a", 600), sick("b", 600), engine("c")], {}, 0),
        ([busy(f"e{i}") for i in range(10)], {"demand": True}, 0),
        ([busy(f"e{i}") for i in range(9)], {"demand": True}, 1),
        ([busy(f"e{i}") for i in range(9)], {"demand": True, "starting": 1}, 0),
        ([busy(f"e{i}") for i in range(9)] + [sick("due", 600)], {}, 0),
        ([busy(f"e{i}") for i in range(9)] + [engine("x", claim=claim("reap"), state="draining")], {"demand": True}, 0),
    ],
    ids=[
        "empty-pool-fills-min",
        "one-short-of-min",
        "at-min-with-free",
        "above-min",
        "all-busy-needs-a-free-one",
        "all-busy-above-min",
        "unknown-is-not-free",
        "a-starting-engine-is-a-free-one-to-come",
        "starting-counts-towards-min",
        "enough-starting",
        "demand-with-a-free-engine-adds-nothing",
        "demand-with-none-free-adds-one",
        "demand-already-served-by-a-start",
        "external-engines-are-not-the-pool",
        "engines-being-cleaned-stay-free",
        "an-engine-being-reaped-is-leaving",
        "an-engine-due-for-replacement-makes-room-for-its-successor",
        "a-recently-unhealthy-engine-still-counts",
        "no-successors-during-an-outage",
        "never-above-max",
        "up-to-max",
        "max-counts-starting-engines",
        "max-counts-an-engine-due-for-replacement",
        "max-counts-an-engine-being-reaped",
    ],
)
def test_engines_to_add(records, kwargs, expected):
    assert engines_to_add(records, NOW, POLICY, **kwargs) == expected


@pytest.mark.parametrize(
    "policy, records, expected",
    [
        (PoolPolicy(min_replicas=0, min_free_replicas=0, max_replicas=3), [], 0),
        (PoolPolicy(min_replicas=0, min_free_replicas=0, max_replicas=3), [busy("a")], 0),
        (PoolPolicy(min_replicas=5, min_free_replicas=1, max_replicas=3), [], 3),
        (PoolPolicy(min_replicas=1, min_free_replicas=3, max_replicas=10), [engine("a")], 2),
        (PoolPolicy(min_replicas=1, min_free_replicas=3, max_replicas=2), [engine("a")], 1),
    ],
    ids=["no-floors", "no-floors-busy", "min-capped-by-max", "free-floor-above-min", "free-floor-capped-by-max"],
)
def test_engines_to_add_with_other_policies(policy, records, expected):
    assert engines_to_add(records, NOW, policy) == expected


# ---------------------------------------------------------------- reaping


def test_idle_time_counts_from_idle_since_then_created_at():
    assert idle_for_s(engine("a", idle_since=ago(40)), NOW) == 40
    assert idle_for_s(engine("a", idle_since=None, created_at=ago(50)), NOW) == 50
    assert idle_for_s(engine("a", idle_since=None, created_at=None), NOW) == 0


@pytest.mark.parametrize(
    "record, expected",
    [
        (idle("x", 31), True),
        (idle("x", 30), True),
        (idle("x", 29), False),
        (busy("x"), False),
        (idle("x", reservations={"r": later(1)}), False),
        (idle("x", reservations={"r": ago(1)}), True),
        (idle("x", claim=claim("clean"), state="cleaning"), False),
        (idle("x", claim=claim("reap"), state="draining"), False),
        (idle("x", claim=claim("clean", expires_in=-1), state="cleaning"), True),
        (idle("x", runtime="external"), False),
        (idle("x", health_status="unhealthy"), True),
        (idle("x", runtime="docker"), True),
        (engine("x", idle_since=None, created_at=None), False),
    ],
    ids=[
        "past-grace",
        "exactly-grace",
        "within-grace",
        "streaming",
        "live-reservation",
        "expired-reservation",
        "being-cleaned",
        "being-reaped",
        "lapsed-claim",
        "external",
        "unhealthy-idle",
        "docker",
        "no-timestamps",
    ],
)
def test_reapable(record, expected):
    assert reapable(record, NOW, POLICY) is expected


@pytest.mark.parametrize(
    "records, victim, expected",
    [
        ([idle("a"), idle("b"), idle("c")], "a", True),
        ([idle("a"), idle("b")], "a", False),
        ([idle("a"), busy("b"), busy("c")], "a", False),
        ([idle("a"), idle("b"), busy("c")], "a", True),
        ([sick("a", 10), idle("b"), busy("c")], "a", True),
        ([idle("a"), idle("b"), idle("x", runtime="external")], "a", False),
        ([idle("a"), idle("b"), idle("c", claim=claim("reap"), state="draining")], "a", False),
        ([idle("a"), idle("b"), idle("c", claim=claim("clean"), state="cleaning")], "a", True),
        ([idle("a"), idle("b"), sick("due", 600)], "a", False),
        ([idle("a"), idle("b"), sick("due", 600)], "due", True),
    ],
    ids=[
        "three-to-two",
        "would-drop-below-min",
        "would-leave-no-free-engine",
        "another-free-engine-remains",
        "an-unhealthy-engine-is-not-a-free-one",
        "external-engines-do-not-hold-the-floor",
        "another-reapers-victim-is-already-gone",
        "an-engine-being-cleaned-is-still-free",
        "an-engine-due-for-replacement-does-not-hold-the-floor",
        "the-engine-due-for-replacement-can-go",
    ],
)
def test_above_floors_without(records, victim, expected):
    target = next(r for r in records if r.container_id == victim)
    assert above_floors_without(records, target, NOW, POLICY) is expected


def reap_all(records, policy=POLICY, skip=()):
    """Run the reaper's loop: take the next victim, recount from what is left."""
    records = list(records)
    order = []
    while (victim := next_to_reap(records, NOW, policy, skip=skip)) is not None:
        order.append(victim.container_id)
        records = [r for r in records if r.container_id != victim.container_id]
    return order, ids(records)


def test_nothing_to_reap_at_the_floors():
    assert next_to_reap([idle("a"), idle("b")], NOW, POLICY) is None
    assert next_to_reap([], NOW, POLICY) is None


def test_the_longest_idle_engine_goes_first_ties_by_id():
    records = [idle("b", 100), idle("a", 100), idle("c", 500), idle("d", 50)]
    assert next_to_reap(records, NOW, POLICY).container_id == "c"
    assert reap_all(records)[0] == ["c", "a"]


def test_twelve_engines_idle_at_once_are_reaped_to_exactly_the_floors():
    records = [idle(f"e{i:02}", 60) for i in range(12)]
    order, left = reap_all(records)
    assert len(order) == 10 and len(left) == 2
    order, left = reap_all(records, PoolPolicy(min_replicas=2, min_free_replicas=5, grace_period_s=30))
    assert len(left) == 5
    order, left = reap_all(records, PoolPolicy(min_replicas=0, min_free_replicas=0, grace_period_s=30))
    assert left == []


def test_busy_engines_count_towards_min_but_not_towards_free():
    records = [busy("b1"), busy("b2"), busy("b3"), idle("i1"), idle("i2"), idle("i3")]
    order, left = reap_all(records)
    assert order == ["i1", "i2"] and left == ["b1", "b2", "b3", "i3"]


def test_engines_within_grace_or_in_use_are_never_picked():
    records = [
        idle("young", 5),
        busy("streaming"),
        idle("reserved", reservations={"r": later(10)}),
        idle("cleaning", claim=claim("clean"), state="cleaning"),
        idle("ext", runtime="external"),
        idle("old1"),
        idle("old2"),
        idle("old3"),
    ]
    order, left = reap_all(records, PoolPolicy(min_replicas=0, min_free_replicas=0, grace_period_s=30))
    assert sorted(order) == ["old1", "old2", "old3"]


def test_an_unhealthy_idle_engine_can_go_when_the_free_floor_is_tight():
    records = [idle("healthy", 100), sick("bad", 10, idle_since=ago(50)), busy("b")]
    assert next_to_reap(records, NOW, POLICY).container_id == "bad"


def test_skipped_engines_are_not_picked_but_still_hold_the_floor():
    records = [idle("a", 300), idle("b", 200), idle("c", 100)]
    assert next_to_reap(records, NOW, POLICY, skip={"a"}).container_id == "b"
    assert next_to_reap(records, NOW, POLICY, skip={"a", "b"}).container_id == "c"
    order, left = reap_all(records, skip={"a"})
    assert order == ["b"] and left == ["a", "c"]


def test_a_second_reaper_sees_the_first_ones_victim_as_gone():
    records = [idle("a", 300, claim=claim("reap"), state="draining"), idle("b", 200), idle("c", 100)]
    assert next_to_reap(records, NOW, POLICY) is None
    records.append(idle("d", 50))
    assert next_to_reap(records, NOW, POLICY).container_id == "b"


def test_reaping_never_takes_the_last_free_engine_whatever_the_order():
    records = [busy("b1"), busy("b2"), idle("i1", 40), idle("i2", 35)]
    order, left = reap_all(records)
    assert order == ["i1"] and left == ["b1", "b2", "i2"]


# ---------------------------------------------------------------- unhealthy engines


@pytest.mark.parametrize(
    "records, expected",
    [
        ([], False),
        ([engine("a")], False),
        ([sick("a")], True),
        ([sick("a"), engine("b")], False),
        ([sick("a"), sick("b"), engine("c")], True),
        ([sick("a"), engine("b"), engine("c")], False),
        ([sick("a"), sick("b"), engine("c"), engine("d")], False),
        ([sick("a"), engine("b", health_status="unknown"), engine("c", health_status="unknown")], False),
        ([sick("a"), sick("x", runtime="external"), sick("y", runtime="external"), engine("b")], False),
        ([sick("x", runtime="external")], False),
    ],
    ids=[
        "empty",
        "healthy",
        "one-of-one",
        "half-is-not-more-than-half",
        "two-of-three",
        "one-of-three",
        "two-of-four",
        "unknown-is-not-unhealthy",
        "external-engines-ignored",
        "only-external",
    ],
)
def test_is_outage(records, expected):
    assert is_outage(records) is expected


@pytest.mark.parametrize(
    "record, seconds",
    [
        (sick("a", 600), 600),
        (sick("a", 600, health_since=None), 0),
        (engine("a", health_since=ago(600)), 0),
    ],
    ids=["unhealthy", "no-since", "healthy"],
)
def test_unhealthy_for_s(record, seconds):
    assert unhealthy_for_s(record, NOW) == seconds


@pytest.mark.parametrize(
    "records, expected",
    [
        ([sick("a", 121), engine("b"), engine("c")], "a"),
        ([sick("a", 120), engine("b"), engine("c")], None),
        ([sick("a", 60), engine("b"), engine("c")], None),
        ([sick("a", 600, streams=["s"]), engine("b"), engine("c")], None),
        ([sick("a", 300), sick("b", 900), engine("c"), engine("d"), engine("e")], "b"),
        ([sick("b", 300), sick("a", 300), engine("c"), engine("d"), engine("e")], "b"),
        ([sick("a", 600), sick("b", 600), engine("c")], None),
        ([sick("x", 600, runtime="external"), engine("b")], None),
        ([sick("a", 600, health_since=None), engine("b")], None),
        ([sick("a", 600, claim=claim("reap"), state="draining"), engine("b"), engine("c")], "a"),
    ],
    ids=[
        "overdue",
        "exactly-at-the-limit",
        "not-yet",
        "with-a-stream",
        "longest-first",
        "ties-by-id",
        "outage",
        "external",
        "unknown-since",
        "already-claimed-is-still-reported",
    ],
)
def test_next_to_replace(records, expected):
    found = next_to_replace(records, NOW, POLICY)
    assert (found.container_id if found else None) == expected


def test_an_unhealthy_engine_is_replaced_by_adding_first_then_removing():
    """The provisioner and the reaper agree step by step: a successor, then the removal, no churn."""
    records = [engine("a"), sick("bad", 600)]
    assert engines_to_add(records, NOW, POLICY) == 1  # the successor
    assert not above_floors_without(records, records[1], NOW, POLICY)  # the reaper waits for it
    records.append(engine("new", idle_since=NOW, created_at=NOW))
    assert engines_to_add(records, NOW, POLICY) == 0
    assert above_floors_without(records, records[1], NOW, POLICY)
    # Only the unhealthy engine may go; no healthy one is reaped to make up for the successor.
    assert next_to_reap(records, NOW, POLICY).container_id == "bad"
    assert next_to_reap(records, NOW, POLICY, skip={"bad"}) is None
    records = [r for r in records if r.container_id != "bad"]
    assert engines_to_add(records, NOW, POLICY) == 0


def test_records_are_not_mutated():
    record = idle("a")
    before = msgspec.json.encode(record)
    next_to_reap([record, idle("b"), idle("c")], NOW, POLICY)
    engines_to_add([record], NOW, POLICY)
    assert msgspec.json.encode(record) == before
