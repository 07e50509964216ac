"""Several prober replicas share the fleet: about one probe per engine per interval in
total, none left two intervals unprobed — and the same again two intervals after a
replica is killed with SIGKILL (no goodbye: its heartbeat just stops).
"""

import asyncio
import os
import signal
import time
from collections import Counter
from itertools import pairwise

import pytest
from prober_fleet import Observations, engine_id
from support import wait_until

ENGINES = 300
REPLICAS = 3
WINDOW_INTERVALS = 4
# At base_env's 1 s interval, 300 engines are 300 probes, health events and KV
# writes a second on a 2-core machine, and a busy machine turns that into
# probe timeouts; 2 s (timeout 1 s) keeps the test about how work is shared.
INTERVAL_S = 2.0
TIMEOUT_S = 1.0


def coverage(observations: Observations, keys: list[str], start: float, end: float) -> tuple[float, dict]:
    """(observations per engine per interval, the engines with a gap of two intervals or more → gap)."""
    total, holes = 0, {}
    for key in keys:
        times = [start, *observations.between(key, start, end), end]
        total += len(times) - 2
        widest = max(b - a for a, b in pairwise(times))
        if widest >= 2 * INTERVAL_S:
            holes[key] = round(widest, 2)
    return total / len(keys) / ((end - start) / INTERVAL_S), holes


async def watch_window(observations: Observations, keys: list[str]) -> tuple[float, dict, str]:
    """Coverage over the next few intervals, and a summary that explains a failure."""
    start = time.monotonic()
    await asyncio.sleep(WINDOW_INTERVALS * INTERVAL_S)
    end = time.monotonic()
    rate, holes = coverage(observations, keys, start, end)
    failed = Counter(
        payload["error"]
        for key in keys
        for t, payload in observations.seen.get(key, [])
        if start <= t <= end and not payload["ok"]
    )
    return rate, holes, f"rate {rate:.2f}, {len(holes)} holes (e.g. {list(holes.items())[:5]}), failed probes {failed}"


@pytest.mark.slow  # 300 engines probed by 3 replicas: a rate measured under the load it makes, so alone
async def test_replicas_share_the_fleet_and_cover_for_a_killed_one(fleet):
    await fleet.start_state_keeper()
    ports = fleet.start_engines(ENGINES)
    keys = [engine_id(port) for port in ports]
    await fleet.register(ports)
    probers = [
        fleet.start_prober(HEALTH_CHECK_INTERVAL_S=INTERVAL_S, HEALTH_CHECK_TIMEOUT_S=TIMEOUT_S)
        for _ in range(REPLICAS)
    ]
    await fleet.wait_probed(ports, timeout=60)
    observations = await fleet.observe()
    await asyncio.sleep(2 * INTERVAL_S)  # membership settled, start-up spread over

    rate, holes, summary = await watch_window(observations, keys)
    assert 0.8 <= rate <= 1.5, summary  # observations per engine per interval
    assert holes == {}, summary

    probers[0].kill()
    await asyncio.sleep(2 * INTERVAL_S)

    rate, holes, summary = await watch_window(observations, keys)
    assert 0.8 <= rate <= 1.5, f"after the kill: {summary}"
    assert holes == {}, f"after the kill: {summary}"
    # Every survivor drops the killed one. The first to see its beat expire says so and deletes the
    # beat; the other may learn it from that deletion instead, without the expiry line.
    assert any("stopped renewing its heartbeat" in survivor.log() for survivor in probers[1:])
    for survivor in probers[1:]:
        assert "2 prober replica(s) now" in survivor.log()
    expired_before = probers[2].log().count("stopped renewing its heartbeat")

    # A replica stopped cleanly says goodbye: the last one takes over at once, not after the TTL.
    stopping_at = time.monotonic()
    os.kill(probers[1].pid, signal.SIGTERM)  # without waiting for it to exit
    await wait_until(lambda: "1 prober replica(s) now" in probers[2].log(), timeout=10, what="the hand-over")
    assert time.monotonic() - stopping_at < 1.5 * INTERVAL_S  # the heartbeat TTL
    # The clean stop is a goodbye, never seen as an expiry.
    assert probers[2].log().count("stopped renewing its heartbeat") == expired_before
