"""A health verdict holds for interval + 2 × timeout + recheck after its probe, and not a moment longer."""

from datetime import timedelta

import pytest
from records import NOW, ago, engine, later

from shared.config import load_config
from shared.policy.freshness import (
    DEFAULT_HEALTH_MAX_AGE_S,
    effective_health,
    health_max_age_of,
    health_max_age_s,
    is_health_fresh,
    stale_at,
    with_effective_health,
)
from shared.policy.selection import CandidateIndex, SelectionPolicy, is_candidate, retry_after_s, select_engine

MAX_AGE = 45.0


def test_the_bound_is_interval_plus_two_timeouts_plus_recheck():
    assert health_max_age_s(30, 5, 5) == 45
    assert DEFAULT_HEALTH_MAX_AGE_S == 45
    config = load_config({"HEALTH_CHECK_INTERVAL_S": "2", "HEALTH_CHECK_TIMEOUT_S": "0.5", "HEALTH_RECHECK_S": "1"})
    assert health_max_age_of(config) == 4


@pytest.mark.parametrize("status", ["healthy", "unhealthy"])
def test_a_verdict_holds_until_its_probe_is_max_age_old(status):
    record = engine(health_status=status, last_health_check=ago(MAX_AGE - 0.001))
    assert is_health_fresh(record, NOW, MAX_AGE)
    assert effective_health(record, NOW, MAX_AGE) == status
    record = engine(health_status=status, last_health_check=ago(MAX_AGE))
    assert not is_health_fresh(record, NOW, MAX_AGE)
    assert effective_health(record, NOW, MAX_AGE) == "unknown"
    assert stale_at(record, MAX_AGE) == NOW


def test_healthy_without_any_probe_is_no_verdict():
    record = engine(health_status="healthy", last_health_check=None)
    assert effective_health(record, NOW, MAX_AGE) == "unknown"
    assert stale_at(record, MAX_AGE) is None


def test_unknown_stays_unknown():
    assert effective_health(engine(health_status="unknown", last_health_check=None), NOW, MAX_AGE) == "unknown"
    assert effective_health(engine(health_status="unknown", last_health_check=ago(1)), NOW, MAX_AGE) == "unknown"


def test_a_probe_stamped_slightly_ahead_of_our_clock_is_fresh():
    assert is_health_fresh(engine(last_health_check=later(2)), NOW, MAX_AGE)


def test_rendering_shows_a_stale_verdict_as_unknown_and_keeps_the_check_time():
    stale = engine(health_status="healthy", last_health_check=ago(60))
    shown = with_effective_health(stale, NOW, MAX_AGE)
    assert shown.health_status == "unknown"
    assert shown.last_health_check == ago(60)
    fresh = engine(health_status="healthy", last_health_check=ago(5))
    assert with_effective_health(fresh, NOW, MAX_AGE) is fresh


def test_a_stale_healthy_engine_is_not_selected():
    policy = SelectionPolicy(health_max_age_s=MAX_AGE)
    stale = engine("old", last_health_check=ago(MAX_AGE + 1))  # the previous run's last word
    fresh = engine("new", last_health_check=ago(1), streams=["s1", "s2"])
    assert not is_candidate(stale, NOW, policy)
    assert select_engine([stale], NOW, policy) is None
    assert select_engine([stale, fresh], NOW, policy).engine.container_id == "new"
    # Nor shared, even when it plays the content.
    choice = select_engine([stale, fresh], NOW, policy, content_key="ch", playing={"ch": {"old"}})
    assert (choice.engine.container_id, choice.shared) == ("new", False)


def test_the_index_drops_an_engine_when_its_verdict_goes_stale_without_any_new_record():
    policy = SelectionPolicy(health_max_age_s=MAX_AGE)
    index = CandidateIndex(policy)
    index.update("a", engine("a", last_health_check=NOW, streams=["s1"]), NOW)
    index.update("b", engine("b", last_health_check=ago(30)), NOW)  # idle: preferred while fresh
    assert index.choose(NOW).engine.container_id == "b"
    assert index.choose(later(14.9)).engine.container_id == "b"
    assert index.choose(later(15)).engine.container_id == "a"  # b's probe is 45 s old now
    assert index.choose(later(MAX_AGE - 0.1)).engine.container_id == "a"
    assert index.choose(later(MAX_AGE)) is None


def test_the_index_takes_a_stale_engine_back_once_it_is_probed_again():
    policy = SelectionPolicy(health_max_age_s=MAX_AGE)
    index = CandidateIndex(policy)
    index.update("a", engine("a", last_health_check=ago(MAX_AGE + 5)), NOW)
    assert index.choose(NOW) is None
    index.update("a", engine("a", last_health_check=NOW), NOW)
    assert index.choose(NOW).engine.container_id == "a"


def test_retry_after_ignores_reservations_on_stale_engines():
    reservations = {"r": NOW + timedelta(seconds=3)}
    stale = engine(last_health_check=ago(MAX_AGE + 1), reservations=reservations)
    assert retry_after_s([stale], NOW, default=5.0, health_max_age_s=MAX_AGE) == 5.0
    fresh = engine(last_health_check=ago(1), reservations=reservations)
    assert retry_after_s([fresh], NOW, default=5.0, health_max_age_s=MAX_AGE) == 3.0
