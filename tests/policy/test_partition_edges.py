"""The prober's hysteresis mirror and jitter at their edges: streaks copied whole, consecutive counts, u's mapping.

Complements test_partition.py with the cases it leaves open (found by `make mutate`).
"""

import pytest
from records import engine

from shared.policy.partition import ProbeSchedule, Streak, after_probe, jittered, streak_of

S = ProbeSchedule(interval_s=30, recheck_s=5, jitter=0.1, new_engine_window_s=1, fall=2, rise=2)


def run(streak, outcomes):
    for ok in outcomes:
        streak = after_probe(streak, ok, S)
    return streak


def test_a_streak_copies_both_counts_from_the_record():
    record = engine(health_status="unhealthy", consecutive_failures=0, consecutive_successes=1)
    assert streak_of(record) == Streak("unhealthy", 0, 1)


def test_an_unhealthy_engine_one_success_into_its_rise_turns_healthy_on_the_next_one():
    record = engine(health_status="unhealthy", consecutive_failures=0, consecutive_successes=1)
    assert after_probe(streak_of(record), True, S).status == "healthy"


def test_a_failure_resets_the_success_count():
    assert after_probe(Streak("unhealthy", 0, 1), False, S) == Streak("unhealthy", 1, 0)
    assert after_probe(Streak("healthy", 0, 5), False, S) == Streak("healthy", 1, 0)


def test_recovery_needs_rise_consecutive_successes_not_rise_successes_in_all():
    assert run(Streak("unhealthy"), [True, False, True]).status == "unhealthy"
    assert run(Streak("unhealthy"), [True, False, True, True]).status == "healthy"


def test_jitter_maps_u_onto_the_band_from_its_low_end_which_is_included_to_its_high_end_which_is_not():
    assert jittered(30, 0.1, 0.0) == pytest.approx(28.5)
    assert jittered(30, 0.1, 0.25) == pytest.approx(29.25)
    assert 31.49 < jittered(30, 0.1, 0.999) < 31.5
