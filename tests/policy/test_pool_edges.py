"""Pool sizing at its edges: the settings it is built from, and the moment it reads claims and reservations at.

Complements test_pool.py and the provisioner part of test_naming.py with the
cases those leave open (found by `make mutate`).
"""

import pytest
from records import NOW, ago, claim, engine, later

from shared.config import Config
from shared.policy.pool import PoolPolicy, engines_to_add, engines_to_start, is_pending

POLICY = PoolPolicy(min_replicas=2, min_free_replicas=1, max_replicas=4)
NO_FREE_FLOOR = PoolPolicy(min_replicas=2, min_free_replicas=0, max_replicas=4)


def busy(cid):
    return engine(cid, streams=[f"s-{cid}"], idle_since=None)


def unprobed(cid, **fields):
    return engine(cid, health_status="unknown", **fields)


# ---------------------------------------------------------------- settings


def test_the_pool_policy_takes_each_floor_ceiling_and_delay_from_its_own_setting():
    # Every value differs from its default and from the others, so a swapped or dropped wire-up shows.
    config = Config(
        min_replicas=3, min_free_replicas=2, max_replicas=7, engine_grace_period_s=45.0, unhealthy_replace_after_s=90.0
    )
    assert PoolPolicy.from_config(config) == PoolPolicy(
        min_replicas=3, min_free_replicas=2, max_replicas=7, grace_period_s=45.0, unhealthy_replace_after_s=90.0
    )


def test_the_pool_policy_defaults_are_the_settings_defaults():
    assert PoolPolicy.from_config(Config()) == PoolPolicy()


# ---------------------------------------------------------------- demand


def test_the_provisioner_starts_nothing_for_a_busy_pool_at_its_floors_unless_a_request_is_waiting():
    pool = [busy("a"), busy("b")]
    assert engines_to_start(pool, NOW, NO_FREE_FLOOR) == 0
    assert engines_to_start(pool, NOW, NO_FREE_FLOOR, demand=True) == 1
    assert engines_to_add(pool, NOW, NO_FREE_FLOOR) == 0
    assert engines_to_add(pool, NOW, NO_FREE_FLOOR, demand=True) == 1
    # A free engine serves the waiting request: nothing to start.
    assert engines_to_add([busy("a"), engine("b")], NOW, NO_FREE_FLOOR, demand=True) == 0


def test_demand_is_met_by_an_unprobed_engine_already_on_its_way():
    pool = [busy("a"), busy("b"), unprobed("c")]
    assert engines_to_start(pool, NOW, NO_FREE_FLOOR, demand=True) == 0


# ---------------------------------------------------------------- the ceiling


def test_engines_still_starting_count_against_the_ceiling():
    policy = PoolPolicy(min_replicas=0, min_free_replicas=4, max_replicas=4)
    # Two exist, one is starting: room for exactly one more, though the free floor wants three.
    assert engines_to_add([busy("a"), busy("b")], NOW, policy, starting=1) == 1
    assert engines_to_start([busy("a"), busy("b")], NOW, policy, unregistered=1) == 1
    assert engines_to_start([busy("a"), busy("b"), unprobed("c")], NOW, policy) == 1


# ---------------------------------------------------------------- claims and reservations are read at `now`


@pytest.mark.parametrize(
    "reservation, pending",
    [(ago(5), True), (later(5), False)],
    ids=["lapsed-reservation", "live-reservation"],
)
def test_an_unprobed_engine_is_a_free_one_to_come_unless_a_live_reservation_holds_it(reservation, pending):
    assert is_pending(unprobed("a", reservations={"r": reservation}), NOW) is pending


def test_an_unprobed_engine_with_a_lapsed_reservation_counts_towards_the_free_floor():
    pool = [busy("a"), unprobed("b", reservations={"r": ago(5)})]
    assert engines_to_start(pool, NOW, POLICY) == 0
    # Held by a live reservation it is spoken for, so the free floor still wants one more.
    pool = [busy("a"), unprobed("b", reservations={"r": later(5)})]
    assert engines_to_start(pool, NOW, POLICY) == 1


def test_engines_being_cleaned_stay_free_for_the_provisioner_too():
    pool = [engine("a", claim=claim("clean"), state="cleaning"), engine("b", claim=claim("clean"), state="cleaning")]
    assert engines_to_start(pool, NOW, POLICY) == 0


def test_an_engine_being_reaped_leaves_the_count_only_while_its_claim_lasts():
    pool = [engine("a"), engine("b", claim=claim("reap", expires_in=60), state="draining")]
    assert engines_to_start(pool, NOW, POLICY) == 1  # b is on its way out: one successor
    assert engines_to_start(pool, later(61), POLICY) == 0  # the reaper gave up: b stays
