"""How far a reporter's stamp lies outside the skew the state-keeper allows (`off_by`, for its logs).

Complements test_events.py and test_health.py, which cover how stamps are bounded, with the
measure the state-keeper logs (found by `make mutate`).
"""

from records import NOW, ago, later

from shared.policy.clock import off_by

SKEW = 30.0


def test_a_missing_stamp_is_never_off():
    assert off_by(None, NOW, SKEW) is None


def test_a_stamp_within_the_skew_either_way_is_not_off_including_at_the_bound():
    for stamp in (NOW, later(10), ago(10), later(SKEW), ago(SKEW)):
        assert off_by(stamp, NOW, SKEW) is None, stamp


def test_a_stamp_beyond_the_skew_is_off_by_its_whole_distance_signed_ahead_positive():
    assert off_by(later(31), NOW, SKEW) == 31.0
    assert off_by(ago(45), NOW, SKEW) == -45.0
