"""The prober against real engines: hung engines leave selection in time and delay nobody.

Real nats-server, state-keeper, acesim and prober processes, with the
scaled-down intervals of `base_env` (1 s interval, 0.5 s timeout, 0.5 s recheck).
"""

import asyncio
import time
from itertools import pairwise

import httpx
from prober_fleet import INTERVAL_S, RECHECK_S, TIMEOUT_S, engine_id
from support import free_port, wait_for_service, wait_until

# DESIGN §5: out of selection within about interval + 2 × timeout + recheck.
UNHEALTHY_BOUND_S = INTERVAL_S + 2 * TIMEOUT_S + RECHECK_S
SLACK_S = 3.0  # a shared 2-core machine; the bound itself is 2.5 s here


async def test_hung_engine_turns_unhealthy_in_time_without_delaying_the_others(fleet):
    await fleet.start_state_keeper()
    hung, *others = fleet.start_engines(6)
    await fleet.register(fleet.ports)
    prober = fleet.start_prober()
    await fleet.wait_healthy(fleet.ports)
    observations = await fleet.observe()
    await asyncio.sleep(2 * INTERVAL_S)  # settle into the steady cadence

    hung_at = time.monotonic()
    before = {port: (await fleet.engine(port))["last_health_check"] for port in others}
    await fleet.fault(hung, "hang")

    async def hung_is_unhealthy():
        record = await fleet.engine(hung)
        return record if record["health_status"] == "unhealthy" else None

    record = await wait_until(
        hung_is_unhealthy, timeout=UNHEALTHY_BOUND_S + SLACK_S, interval=0.1, what="the hung engine to turn unhealthy"
    )
    took = time.monotonic() - hung_at
    assert record["last_error"] == "timeout"
    assert record["consecutive_failures"] >= 2
    assert took <= UNHEALTHY_BOUND_S + SLACK_S

    # Keep it hung for a few more intervals and look at everybody else.
    await asyncio.sleep(3 * INTERVAL_S)
    window_end = time.monotonic()
    for port in others:
        times = observations.between(engine_id(port), hung_at, window_end)
        gaps = [b - a for a, b in pairwise(times)]
        assert len(times) >= (window_end - hung_at) / INTERVAL_S - 2, (port, times)
        assert max(gaps) < 2 * INTERVAL_S, (port, gaps)
        assert sum(gaps) / len(gaps) < 1.25 * INTERVAL_S, (port, gaps)
        record = await fleet.engine(port)
        assert record["health_status"] == "healthy"
        assert record["last_health_check"] > before[port]

    # Clear the fault: healthy again after `rise` (2) consecutive successes.
    cleared_at = time.monotonic()
    await fleet.fault(hung, "none")

    async def hung_is_healthy():
        record = await fleet.engine(hung)
        return record if record["health_status"] == "healthy" else None

    # settled-unhealthy engines are probed every interval; the first success is re-checked after RECHECK_S
    record = await wait_until(
        hung_is_healthy,
        timeout=INTERVAL_S + TIMEOUT_S + RECHECK_S + SLACK_S,
        interval=0.1,
        what="the engine to be healthy again",
    )
    assert record["consecutive_successes"] >= 2
    assert time.monotonic() - cleared_at <= INTERVAL_S + TIMEOUT_S + RECHECK_S + SLACK_S
    assert "Health monitor started with 1s interval" in prober.log()


FAULTS = [  # (mode, parameters, the error kind the record must show)
    ("error", {"code": 500}, "http_500"),
    ("error", {"code": 503}, "http_503"),
    ("badjson", {}, "bad_json"),
    ("refuse", {}, "refused"),
    ("crash", {}, "refused"),  # the engine is gone: nothing listens on its port any more
    ("slow", {"ms": 2000}, "timeout"),
]


async def test_each_fault_leads_to_unhealthy_with_its_error_kind(fleet):
    await fleet.start_state_keeper()
    *faulty, healthy = fleet.start_engines(len(FAULTS) + 1)
    await fleet.register(fleet.ports)
    fleet.start_prober()
    await fleet.wait_healthy(fleet.ports)

    for port, (mode, params, _) in zip(faulty, FAULTS, strict=True):
        await fleet.fault(port, mode, **params)

    async def all_unhealthy():
        unhealthy = await fleet.engines(health_status="unhealthy")
        return unhealthy if {engine_id(port) for port in faulty} <= set(unhealthy) else None

    unhealthy = await wait_until(
        all_unhealthy, timeout=UNHEALTHY_BOUND_S + SLACK_S, interval=0.1, what="every faulty engine to turn unhealthy"
    )
    errors = {
        mode_and_params(mode, params): unhealthy[engine_id(port)]["last_error"]
        for port, (mode, params, _) in zip(faulty, FAULTS, strict=True)
    }
    assert errors == {mode_and_params(mode, params): expected for mode, params, expected in FAULTS}
    assert (await fleet.engine(healthy))["health_status"] == "healthy"


def mode_and_params(mode: str, params: dict) -> str:
    return " ".join([mode, *(f"{key}={value}" for key, value in params.items())])


async def test_new_engine_is_probed_within_seconds_and_a_removed_one_no_longer(fleet):
    await fleet.start_state_keeper()
    first, second = fleet.start_engines(2)
    interval = 4.0  # long enough that an arrival can't hide in it, short enough to see probes stop
    prober = fleet.start_prober(HEALTH_CHECK_INTERVAL_S=interval)
    await wait_until(lambda: "Health monitor started" in prober.log(), timeout=15, what="the prober to start")
    await fleet.register([first])
    await fleet.wait_healthy([first], timeout=5)
    observations = await fleet.observe()

    registered_at = time.monotonic()
    await fleet.register([second])
    await fleet.wait_healthy([second], timeout=5)
    probed_at = observations.seen[engine_id(second)][0][0]
    assert probed_at - registered_at < 2.5  # within new_engine_window_s (1 s), not some time in the interval

    await fleet.remove(second)

    async def gone():
        return engine_id(second) not in await fleet.engines()

    await wait_until(gone, timeout=10, what="the removed engine's record to disappear")
    removed_at = time.monotonic()
    await asyncio.sleep(interval + 1)
    late = [payload for t, payload in observations.seen[engine_id(second)] if t > removed_at + 0.2]
    assert late == []
    assert len(observations.between(engine_id(first), removed_at, time.monotonic())) >= 1  # the other one goes on


async def test_metrics_count_probes_by_result(fleet):
    await fleet.start_state_keeper()
    ok, broken = fleet.start_engines(2)
    await fleet.register(fleet.ports)
    await fleet.fault(broken, "error", code=500)
    port = free_port()
    fleet.start_prober(METRICS_PORT=port)

    async def counted():
        try:
            async with httpx.AsyncClient(trust_env=False) as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.TransportError:
            return None
        both = 'ace_prober_probes_total{result="http_500"}' in text and 'ace_prober_probes_total{result="ok"}' in text
        return text if both else None

    text = await wait_until(counted, timeout=15, interval=0.2, what="probe metrics for both results")
    assert "ace_prober_probe_latency_seconds_bucket" in text
    assert "ace_prober_engines_owned 2.0" in text


async def test_engines_registered_after_a_nats_restart_are_probed(fleet, nats_server, nc):
    """The KV watch and the membership watch are re-established after a reconnect."""
    await fleet.start_state_keeper()
    before, after = fleet.start_engines(2)
    await fleet.register([before])
    prober = fleet.start_prober()
    await fleet.wait_healthy([before])

    nats_server.restart()  # same port, same store
    await wait_until(lambda: nc.is_connected, timeout=20, what="the test client to reconnect")
    await wait_until(lambda: "nats: reconnected" in prober.log(), timeout=20, what="the prober to reconnect")
    # The state-keeper's endpoints come back with its own reconnect, which may come later under load
    # (engine.list then answered "no responders" in a CI run with four test workers).
    await wait_for_service(nc, timeout=20)
    await fleet.register([after])
    await fleet.wait_healthy([after], timeout=30)
    assert prober.alive()
