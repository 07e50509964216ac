"""The state-keeper applies the configured fall/rise thresholds, not the defaults (DESIGN §5).

Thresholds differ from each other and from the defaults (2/2), so a keeper wired to the
wrong setting, or to the defaults, turns the engine at the wrong report.
"""

from datetime import timedelta

from keeper_helpers import get_engine, publish, register_healthy
from support import wait_until

from shared import names
from shared.schemas import EngineHealth, utcnow

FALL = 3
RISE = 4


async def report(bus, nc, ok: bool, at, counter: str, count: int) -> dict:
    await publish(
        bus, names.ENGINE_HEALTH, EngineHealth(container_id="e1", ok=ok, checked_at=at, error=None if ok else "timeout")
    )

    async def applied():
        record, _ = await get_engine(nc, "e1")
        return record if record[counter] == count else None

    return await wait_until(applied, what=f"{counter} = {count}", timeout=15)


async def test_the_keeper_turns_an_engine_at_the_configured_fall_and_rise(start_keepers, bus, nc):
    await start_keepers(1, HEALTH_FAIL_THRESHOLD=FALL, HEALTH_RISE_THRESHOLD=RISE)
    await register_healthy(bus, nc, "e1")
    at = utcnow()
    for failures in range(1, FALL + 2):
        at += timedelta(seconds=1)
        record = await report(bus, nc, False, at, "consecutive_failures", failures)
        expected = "healthy" if failures < FALL else "unhealthy"
        assert record["health_status"] == expected, (failures, record["health_status"])
    for successes in range(1, RISE + 1):
        at += timedelta(seconds=1)
        record = await report(bus, nc, True, at, "consecutive_successes", successes)
        expected = "unhealthy" if successes < RISE else "healthy"
        assert record["health_status"] == expected, (successes, record["health_status"])
