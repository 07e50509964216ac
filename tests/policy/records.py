"""Record builders for pure tests: one obvious default, override what the case is about."""

from datetime import UTC, datetime, timedelta

from shared.schemas import Claim, EngineRecord

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def engine(container_id: str = "e1", **fields) -> EngineRecord:
    defaults = dict(
        container_name=container_id,
        host="127.0.0.1",
        port=6878,
        runtime="local",
        health_status="healthy",
        last_health_check=ago(10),  # a fresh verdict (shared.policy.freshness), unless the case says otherwise
        created_at=ago(3600),
        idle_since=ago(3600),
    )
    defaults.update(fields)
    return EngineRecord(container_id=container_id, **defaults)


def claim(purpose: str = "clean", expires_in: float = 60) -> Claim:
    return Claim(claim_id="c1", purpose=purpose, holder="test", expires_at=later(expires_in))
