"""After a failed probe the prober re-checks after HEALTH_RECHECK_S, not a full interval (DESIGN §5).

The interval is long (8 s) next to the recheck (0.5 s), so a prober that waited a full
interval after a failure shows a gap of ~8 s between the two failing reports.
"""

from prober_fleet import engine_id
from support import wait_until

INTERVAL_S = 8.0
RECHECK_S = 0.5


async def test_a_failed_probe_is_rechecked_quickly_and_the_engine_leaves_selection(fleet):
    await fleet.start_state_keeper()
    [port] = fleet.start_engines(1)
    await fleet.register([port])
    fleet.start_prober(HEALTH_CHECK_INTERVAL_S=INTERVAL_S, HEALTH_RECHECK_S=RECHECK_S)
    await fleet.wait_healthy([port], timeout=30)
    observations = await fleet.observe()
    await fleet.fault(port, "error", code=500)

    def failures() -> list[float]:
        return [t for t, payload in observations.seen.get(engine_id(port), []) if not payload["ok"]]

    await wait_until(lambda: len(failures()) >= 2, timeout=3 * INTERVAL_S, interval=0.1, what="two failed probes")
    first, second = failures()[:2]
    assert second - first < INTERVAL_S / 2, f"re-checked after {second - first:.1f} s, not after ~{RECHECK_S} s"

    async def unhealthy():
        return (await fleet.engine(port))["health_status"] == "unhealthy"

    await wait_until(unhealthy, timeout=15, interval=0.1, what="the failing engine unhealthy")
