"""New engines are probed within seconds whatever the prober membership history says.

Real nats-server, state-keeper, acesim and one prober with the production interval
(30 s: a heartbeat TTL of 45 s), so only age-based membership and the rescue of a
silent owner's engines explain a quick first probe. The heartbeats of other
"probers" are written by hand, without a TTL, as a restarted nats-server that
stopped enforcing TTLs keeps them (DESIGN §9).
"""

from __future__ import annotations

import json
import time

from support import wait_until

from shared.policy.partition import RESCUE_SLACK_S

ENGINES = 12
PHANTOMS = 4
FIRST_PROBE_WITHIN_S = 10.0  # DESIGN: new engines are probed within seconds (here: 1 s window + 1 s timeout + slack)
PROBER_ENV = {"HEALTH_CHECK_INTERVAL_S": "30", "HEALTH_CHECK_TIMEOUT_S": "1", "HEALTH_RECHECK_S": "1"}
# With members killed moments ago, the rescuers take turns: the survivor may come after every phantom in
# an engine's rendezvous order, and waits one probe-and-report time (timeout + RESCUE_SLACK_S) for each
# (shared.policy.partition.overdue): 1 s window + 4 x 2 s = 9 s at worst before it probes, on an idle
# machine. The bound adds the same slack as above on top of that (a CI run missed 10 s).
RESCUED_WITHIN_S = 1.0 + PHANTOMS * (1.0 + RESCUE_SLACK_S) + FIRST_PROBE_WITHIN_S


async def write_phantoms(nc, sent_at: float) -> list[str]:
    leases = await nc.jetstream().key_value("ace_leases")
    names = [f"phantom-{i}" for i in range(PHANTOMS)]
    for name in names:
        beat = {"member": name, "host": "gone", "pid": 1, "sent_at": sent_at}
        await leases.put(f"members.prober.{name}", json.dumps(beat).encode())
    return names


async def start_prober_and_register(fleet) -> tuple[object, list[int], float]:
    prober = fleet.start_prober(**PROBER_ENV)
    await wait_until(lambda: "Health monitor started" in prober.log(), timeout=30, what="the prober started")
    ports = fleet.start_engines(ENGINES)
    registered = time.monotonic()
    await fleet.register(ports)
    return prober, ports, registered


async def test_heartbeats_left_by_dead_probers_are_dropped_at_once_and_the_living_one_probes_everything(fleet):
    await fleet.start_state_keeper()
    await write_phantoms(fleet.nc, sent_at=time.time() - 3600)  # probers of a run an hour ago
    prober, ports, registered = await start_prober_and_register(fleet)
    await fleet.wait_probed(ports, timeout=FIRST_PROBE_WITHIN_S)
    assert time.monotonic() - registered < FIRST_PROBE_WITHIN_S
    assert " 1 replica(s), probing" in prober.log(), _replica_lines(prober.log())
    assert "phantom" not in _replica_lines(prober.log())


async def test_engines_of_a_prober_killed_moments_ago_are_probed_by_a_rescuer(fleet):
    await fleet.start_state_keeper()
    phantoms = await write_phantoms(fleet.nc, sent_at=time.time())  # killed just now: within their TTL
    prober, ports, registered = await start_prober_and_register(fleet)
    await fleet.wait_probed(ports, timeout=RESCUED_WITHIN_S)
    assert time.monotonic() - registered < RESCUED_WITHIN_S
    assert " 5 replica(s), probing" in prober.log()  # the phantoms still count as members: rescue did it
    assert any(f"for {name}, which has not" in prober.log() for name in phantoms)


def _replica_lines(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if "replica(s)" in line)
