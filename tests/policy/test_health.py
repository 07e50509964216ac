"""Health hysteresis: fall, rise, first success, stale observations, reporters' clocks."""

from datetime import UTC, datetime

import pytest
from records import NOW, ago, engine, later

from shared.policy.clock import ClockSkewed
from shared.policy.health import HealthPolicy, check_report, next_status, observe
from shared.schemas import EngineHealth

POLICY = HealthPolicy(fall=2, rise=2)


def obs(ok: bool, seconds_ago: float = 0, error: str | None = None) -> EngineHealth:
    return EngineHealth(container_id="e1", ok=ok, checked_at=ago(seconds_ago), error=None if ok else error or "timeout")


def run(record, outcomes, first_seq=1):
    statuses = []
    for i, ok in enumerate(outcomes):
        record = observe(record, obs(ok, seconds_ago=len(outcomes) - i), POLICY, NOW, seq=first_seq + i)
        statuses.append(record.health_status)
    return record, statuses


@pytest.mark.parametrize(
    "start, outcomes, expected",
    [
        ("unknown", [True], ["healthy"]),
        ("unknown", [False], ["unknown"]),
        ("unknown", [False, False], ["unknown", "unhealthy"]),
        ("healthy", [False], ["healthy"]),
        ("healthy", [False, False], ["healthy", "unhealthy"]),
        ("healthy", [False, True, False], ["healthy", "healthy", "healthy"]),
        ("unhealthy", [True], ["unhealthy"]),
        ("unhealthy", [True, True], ["unhealthy", "healthy"]),
        ("unhealthy", [True, False, True], ["unhealthy", "unhealthy", "unhealthy"]),
        ("healthy", [False, False, True, True], ["healthy", "unhealthy", "unhealthy", "healthy"]),
    ],
)
def test_status_follows_rise_and_fall(start, outcomes, expected):
    _, statuses = run(engine(health_status=start), outcomes)
    assert statuses == expected


@pytest.mark.parametrize("current", ["unknown", "healthy", "unhealthy"])
@pytest.mark.parametrize("streak", [1, 2, 3])
def test_next_status_is_exhaustive_over_small_streaks(current, streak):
    after_success = "unhealthy" if current == "unhealthy" and streak < POLICY.rise else "healthy"
    after_failure = "unhealthy" if streak >= POLICY.fall else current
    assert next_status(current, True, 0, streak, POLICY) == after_success
    assert next_status(current, False, streak, 0, POLICY) == after_failure


def test_counters_and_error_are_recorded():
    record, _ = run(engine(), [False, False])
    assert record.consecutive_failures == 2 and record.consecutive_successes == 0
    assert record.last_error == "timeout"
    assert record.health_since == NOW


def test_stale_and_duplicate_observations_change_nothing():
    record = observe(engine(), obs(False, seconds_ago=1), POLICY, NOW, seq=10)
    assert record.health_seq == 10
    assert observe(record, obs(False, seconds_ago=1), POLICY, NOW, seq=10) is record  # redelivered
    assert observe(record, obs(True, seconds_ago=0), POLICY, NOW, seq=7) is record  # overtaken by seq 10


def test_version_is_kept_from_the_latest_success():
    record = observe(
        engine(), EngineHealth(container_id="e1", ok=True, checked_at=NOW, version="3.2.11"), POLICY, NOW, 1
    )
    assert record.version == "3.2.11"


def test_a_report_stamped_in_the_future_does_not_freeze_health():
    """Order is the event sequence, not the prober's clock: later reports still count (issue 20, item 3)."""
    from_2099 = EngineHealth(container_id="e1", ok=True, checked_at=datetime(2099, 1, 1, tzinfo=UTC))
    record = observe(engine(health_status="healthy"), from_2099, POLICY, NOW, seq=1)
    for seq in (2, 3):  # the engine hangs: two ordinary failed probes
        record = observe(record, obs(False), POLICY, NOW, seq=seq)
    assert record.health_status == "unhealthy" and record.consecutive_failures == 2


def test_reports_too_far_ahead_of_the_state_keepers_clock_are_refused():
    check_report(EngineHealth(container_id="e1", ok=True, checked_at=later(30)), NOW, max_skew_s=30)
    check_report(EngineHealth(container_id="e1", ok=True, checked_at=ago(86400)), NOW, max_skew_s=30)
    with pytest.raises(ClockSkewed, match="checked_at 2099-01-01T00:00:00\\+00:00 is [0-9]+s ahead"):
        check_report(
            EngineHealth(container_id="e1", ok=True, checked_at=datetime(2099, 1, 1, tzinfo=UTC)), NOW, max_skew_s=30
        )
    with pytest.raises(ClockSkewed, match="MAX_CLOCK_SKEW_S=30"):
        check_report(EngineHealth(container_id="e1", ok=True, checked_at=later(31)), NOW, max_skew_s=30)
