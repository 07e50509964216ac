"""What one probe report writes into the engine record besides its status (pure, no I/O).

Complements test_health.py (the status itself) with the fields the dashboard and the
provisioner read: when the check ran, since when the status holds, the last error (found by
`make mutate`).
"""

from records import NOW, ago, engine

from shared.policy.health import HealthPolicy, observe
from shared.schemas import EngineHealth

POLICY = HealthPolicy(fall=3, rise=3)


FOUR_S_AGO = ago(4)


def report(ok: bool, checked_at=FOUR_S_AGO, error: str | None = None) -> EngineHealth:
    return EngineHealth(container_id="e1", ok=ok, checked_at=checked_at, error=error)


def test_the_record_says_when_the_reported_check_ran_by_the_probers_stamp():
    record = observe(engine(last_health_check=ago(60)), report(True, checked_at=ago(4)), POLICY, NOW, seq=1)
    assert record.last_health_check == ago(4)
    failed = observe(record, report(False, checked_at=ago(2), error="timeout"), POLICY, NOW, seq=2)
    assert failed.last_health_check == ago(2)


def test_health_since_moves_only_when_the_status_changes():
    steady = engine(health_status="healthy", health_since=ago(600))
    assert observe(steady, report(True), POLICY, NOW, seq=1).health_since == ago(600)
    one_failure = observe(steady, report(False, error="timeout"), POLICY, NOW, seq=1)
    assert one_failure.health_status == "healthy" and one_failure.health_since == ago(600)
    fresh = engine(health_status="unknown", health_since=None)
    assert observe(fresh, report(True), POLICY, NOW, seq=1).health_since == NOW


def test_a_success_keeps_the_last_error_on_record():
    failing = engine(health_status="healthy", last_error="timeout", consecutive_failures=1)
    recovered = observe(failing, report(True), POLICY, NOW, seq=1)
    assert recovered.last_error == "timeout" and recovered.consecutive_failures == 0


def test_a_failure_without_a_message_is_recorded_as_unknown_error():
    record = observe(engine(last_error="timeout"), report(False, error=None), POLICY, NOW, seq=1)
    assert record.last_error == "unknown error"
    assert observe(engine(), report(False, error="refused"), POLICY, NOW, seq=1).last_error == "refused"
