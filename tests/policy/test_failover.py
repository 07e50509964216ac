"""When a proxied stream leaves its engine (shared.policy.failover), as table tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from shared.policy.failover import (
    FailoverPolicy,
    UpstreamView,
    failover_reason,
    may_fail_over,
    starving,
    starving_since,
)
from shared.schemas import Claim, EngineRecord, PlaybackStats

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = FailoverPolicy(stall_timeout_s=10, first_byte_timeout_s=30, starvation_s=30, attempts=3)
ENGINE = EngineRecord(container_id="e1", container_name="e1", host="127.0.0.1", port=6878, health_status="healthy")


def view(**changes) -> UpstreamView:
    base = dict(now=100.0, opened_at=90.0, last_byte_at=99.0, engine=ENGINE, wall_now=NOW)
    return UpstreamView(**{**base, **changes})


def claimed(expires_in_s: float) -> EngineRecord:
    claim = Claim(claim_id="c", purpose="reap", holder="reaper", expires_at=NOW + timedelta(seconds=expires_in_s))
    return msgspec.structs.replace(ENGINE, claim=claim)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"session_gone": True}, "session_gone"),
        ({"upstream_closed": "ended the playback"}, "upstream ended the playback"),
        ({"engine": None}, "engine_gone"),
        ({"engine": msgspec.structs.replace(ENGINE, health_status="unhealthy")}, "engine_unhealthy"),
        ({"engine": msgspec.structs.replace(ENGINE, health_status="unknown")}, None),
        ({"engine": claimed(60)}, "engine_claimed"),
        ({"engine": claimed(-1)}, None),  # an expired claim reads as active
        ({"last_byte_at": 90.0}, "stall"),  # exactly stall_timeout_s of silence
        ({"last_byte_at": 90.1}, None),
        ({"last_byte_at": None, "opened_at": 80.0}, None),  # prebuffering: the first byte may take 30 s
        ({"last_byte_at": None, "opened_at": 70.0}, "no_first_byte"),
        ({"starving_since": 70.0}, "starved"),
        ({"starving_since": 70.1}, None),
        # what the engine said outranks its record, which outranks silence
        ({"session_gone": True, "engine": None, "last_byte_at": 0.0}, "session_gone"),
        ({"upstream_closed": "failed: x", "engine": None}, "upstream failed: x"),
        (
            {"engine": msgspec.structs.replace(ENGINE, health_status="unhealthy"), "last_byte_at": 0.0},
            "engine_unhealthy",
        ),
    ],
)
def test_failover_reason(changes, reason):
    assert failover_reason(view(**changes), POLICY) == reason


@pytest.mark.parametrize(
    ("peers", "speed", "starved"),
    [(0, 0, True), (1, 0, False), (0, 5, False), (None, 0, False), (0, None, False)],
)
def test_starving_needs_both_zero_peers_and_zero_speed(peers, speed, starved):
    assert starving(PlaybackStats(peers=peers, speed_down=speed)) is starved


def test_the_starvation_clock_starts_keeps_and_stops():
    hungry, fed = PlaybackStats(peers=0, speed_down=0), PlaybackStats(peers=3, speed_down=50)
    assert starving_since(None, hungry, 5.0) == 5.0
    assert starving_since(5.0, hungry, 9.0) == 5.0
    assert starving_since(5.0, fed, 9.0) is None


@pytest.mark.parametrize(("done", "allowed"), [(0, True), (2, True), (3, False), (4, False)])
def test_failover_attempts_are_bounded(done, allowed):
    assert may_fail_over(done, POLICY) is allowed
    assert may_fail_over(0, FailoverPolicy(attempts=0)) is False
