"""What reference-API proxies are told: stream slots, whether an engine can be provisioned, when to retry."""

import pytest
from records import NOW, ago, claim, engine, later

from shared.policy.pool import PoolPolicy
from shared.policy.provisioning import (
    ENGINE_INTERNAL_PORT,
    NO_PROVISIONER,
    NO_PROVISIONER_ETA_S,
    PROVISIONING_DISABLED,
    Capacity,
    capacity,
    engine_ports,
    max_replicas_eta_s,
    provision_budget_s,
    provisioning_blocked,
    status_word,
)

POOL = PoolPolicy(min_replicas=1, min_free_replicas=0, max_replicas=2, grace_period_s=30, unhealthy_replace_after_s=120)
SLOTS = 3
SWEEP_S = 30.0


def streams(cid, count, **fields):
    return engine(cid, streams=[f"{cid}-s{i}" for i in range(count)], idle_since=None, **fields)


def blocked(records, alive=True, runtime="local"):
    return provisioning_blocked(records, NOW, POOL, SLOTS, alive, runtime, SWEEP_S)


# ---------------------------------------------------------------- capacity


def test_capacity_is_slots_of_healthy_active_engines_used_by_streams_and_live_reservations():
    records = [
        streams("a", 1, reservations={"r1": later(10), "old": ago(1)}),  # 1 stream + 1 live reservation
        engine("b"),
        engine("sick", health_status="unhealthy"),
        engine("unknown", health_status="unknown"),
        engine("cleaning", claim=claim("clean")),
        engine("draining", claim=claim("reap")),
    ]
    assert capacity(records, NOW, SLOTS) == Capacity(total=6, used=2, available=4)


def test_an_expired_claim_gives_the_engine_back():
    assert capacity([engine("a", claim=claim("clean", expires_in=-1))], NOW, SLOTS).total == SLOTS


def test_an_overfull_engine_counts_as_full_not_as_negative_room():
    assert capacity([streams("a", 5), engine("b")], NOW, SLOTS) == Capacity(total=6, used=3, available=3)


def test_no_engines_no_slots():
    assert capacity([], NOW, SLOTS) == Capacity(0, 0, 0)


def test_external_engines_count_as_slots():
    assert capacity([engine("x", runtime="external")], NOW, SLOTS).total == SLOTS


# ---------------------------------------------------------------- provisioning_blocked


def test_below_max_replicas_with_a_provisioner_nothing_blocks():
    assert blocked([streams("a", 3)]) is None


def test_without_a_provisioner_proxies_are_told_to_wait():
    result = blocked([streams("a", 3)], alive=False)
    assert result == NO_PROVISIONER
    assert result.should_wait and result.recovery_eta_seconds == NO_PROVISIONER_ETA_S


def test_external_runtime_never_provisions_and_waiting_does_not_help():
    result = blocked([], alive=True, runtime="external")
    assert result == PROVISIONING_DISABLED and not result.should_wait and result.recovery_eta_seconds == 0


def test_at_max_replicas_proxies_wait_with_an_eta():
    result = blocked([streams("a", 3), streams("b", 3)])
    assert result is not None and result.code == "max_replicas_reached" and result.should_wait
    assert "2" in result.message and result.recovery_eta_seconds == SWEEP_S


def test_external_engines_do_not_count_towards_max_replicas():
    assert blocked([streams("a", 3), streams("x", 3, runtime="external")]) is None


# ---------------------------------------------------------------- max_replicas_eta_s


def eta(records):
    return max_replicas_eta_s(records, NOW, POOL, SLOTS, SWEEP_S)


def test_a_free_slot_now_means_retry_at_once():
    assert eta([streams("a", 3), streams("b", 2)]) == 1


def test_a_lapsing_reservation_frees_its_slot():
    records = [streams("a", 3), streams("b", 2, reservations={"r1": later(7.2), "r2": later(20)})]
    assert eta(records) == 8


def test_reservations_on_an_engine_out_of_selection_free_nothing():
    records = [streams("a", 3), streams("b", 2, reservations={"r1": later(7)}, health_status="unhealthy")]
    assert eta(records) == SWEEP_S


def test_an_unhealthy_engine_due_for_replacement_makes_room_at_the_next_sweep():
    records = [streams("a", 3), engine("b", health_status="unhealthy", health_since=ago(100))]
    assert eta(records) == 20 + SWEEP_S  # 120 s allowed, 100 s gone, then the sweep
    overdue = [streams("a", 3), engine("b", health_status="unhealthy", health_since=ago(500))]
    assert eta(overdue) == SWEEP_S


def test_an_unhealthy_engine_with_streams_is_not_replaced():
    records = [streams("a", 3), streams("b", 1, health_status="unhealthy", health_since=ago(500))]
    assert eta(records) == SWEEP_S


def test_in_an_outage_nothing_is_replaced():
    records = [
        engine("a", health_status="unhealthy", health_since=ago(500)),
        engine("b", health_status="unhealthy", health_since=ago(500)),
    ]
    assert eta(records) == SWEEP_S


def test_without_anything_to_wait_for_the_eta_is_the_next_sweep_and_at_least_one_second():
    assert eta([streams("a", 3), streams("b", 3)]) == SWEEP_S
    assert max_replicas_eta_s([streams("a", 3)], NOW, POOL, SLOTS, 0.2) == 1


# ---------------------------------------------------------------- status_word


@pytest.mark.parametrize(
    ("connected", "available", "is_blocked", "word"),
    [
        (False, 3, False, "unhealthy"),
        (True, 0, True, "degraded"),
        (True, 1, True, "healthy"),
        (True, 0, False, "healthy"),
    ],
)
def test_status_word(connected, available, is_blocked, word):
    slots = Capacity(total=3, used=3 - available, available=available)
    assert status_word(connected, slots, NO_PROVISIONER if is_blocked else None) == word


# ---------------------------------------------------------------- engine_ports


def test_local_and_host_network_engines_listen_on_their_port():
    assert engine_ports(40001, {}, "local", "") == (40001, 40001)
    assert engine_ports(40001, {"aceorch.port": "40001"}, "docker", "host") == (40001, 40001)


def test_bridged_docker_engines_listen_inside_on_the_engine_port():
    assert engine_ports(40001, {"aceorch.port": "40001"}, "docker", "") == (40001, ENGINE_INTERNAL_PORT)


def test_docker_engines_on_a_named_network_are_published_at_their_label_port():
    assert engine_ports(ENGINE_INTERNAL_PORT, {"aceorch.port": "40002"}, "docker", "aceorch") == (
        40002,
        ENGINE_INTERNAL_PORT,
    )
    assert engine_ports(ENGINE_INTERNAL_PORT, {}, "docker", "aceorch") == (ENGINE_INTERNAL_PORT, ENGINE_INTERNAL_PORT)


def test_provision_budget_covers_the_lock_the_start_and_health():
    assert provision_budget_s(10) == 25
