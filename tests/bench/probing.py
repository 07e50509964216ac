"""Probing 1,000 acesim engines (one `--ports` process), 5% of them hung, with 1 and 3 prober replicas.

Per replica count, on a fresh NATS with one state-keeper:
1. the probers start, then 1,000 engines are registered at once: every new
   engine is due within a second, so the time until each has been probed
   once is the prober's raw round time (with 50 hung engines holding a
   probe slot for the full timeout);
2. once all are healthy, 50 engines hang; the clock runs until the
   state-keeper has marked all 50 unhealthy (bound: interval + 2 x timeout
   + recheck), and the probers' CPU time over two intervals gives the CPU
   seconds per steady round.
The interval is scaled down to 10 s (timeout and recheck keep their 5 s
defaults) so a run takes seconds; CPU per round does not depend on the
interval, so the share of a core at the default 30 s interval is
extrapolated: CPU seconds per round / 30.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from shared import names
from shared.schemas import EngineRegistered, encode
from tests.bench.harness import Results, Stack, Window, bounded_gather, free_port_block, wait_for
from tests.support import Process, Processes

BENCH = "probing"
ENGINES = 1000
HUNG_EVERY = 20  # 5%
INTERVAL_S = 10.0
TIMEOUT_S = 5.0
RECHECK_S = 5.0
DEFAULT_INTERVAL_S = 30.0
STEADY_ROUNDS = 2
TARGET_SHARE = 0.05
TARGET_ROUND_S = DEFAULT_INTERVAL_S / 2  # "well inside the 30 s interval"


class Fleet:
    """One acesim process running ENGINES engines on consecutive loopback ports."""

    def __init__(self, processes: Processes, workdir: Path) -> None:
        self.first = free_port_block(ENGINES)
        self.ports = list(range(self.first, self.first + ENGINES))
        # Two disjoint 5% sets: A hangs from the start, B hangs later (while A recovers).
        self.hung_a = self.ports[::HUNG_EVERY]
        self.hung_b = self.ports[HUNG_EVERY // 2 :: HUNG_EVERY]
        self.proc: Process = processes.start(
            "acesim",
            [
                sys.executable,
                "-m",
                "deploy.acesim",
                "--ports",
                f"{self.first}-{self.ports[-1]}",
                "--cache-dir",
                str(workdir / "acesim-cache"),
            ],
        )

    def engine_id(self, port: int) -> str:
        return f"sim-{port}"

    async def ready(self, http: httpx.AsyncClient) -> None:
        async def answering() -> bool:
            for port in (self.ports[0], self.ports[-1]):
                try:
                    await http.get(f"http://127.0.0.1:{port}/__sim/state", timeout=1)
                except httpx.HTTPError:
                    return False
            return True

        await wait_for(answering, 60, f"acesim with {ENGINES} engines", period_s=0.2)

    async def fault(self, http: httpx.AsyncClient, ports: list[int], mode: str) -> None:
        # Through another engine of the process: /__sim/ keeps answering, but a hung engine's
        # own port is not the place to send the command that clears it.
        control = self.ports[1]
        await bounded_gather(
            [
                lambda port=port: http.get(f"http://127.0.0.1:{control}/__sim/fault?mode={mode}&port={port}", timeout=5)
                for port in ports
            ],
            16,
        )


async def members(bus, group: str = "prober") -> int:
    try:
        keys = await bus.leases.keys()
    except Exception:  # no keys yet
        return 0
    return sum(1 for key in keys if key.startswith(f"members.{group}."))


async def statuses(nc) -> dict[str, str]:
    msg = await nc.request(names.ENGINE_LIST, b"{}", timeout=10)
    return {e["container_id"]: e["health_status"] for e in json.loads(msg.data)["engines"]}


async def run_replicas(results: Results, fleet: Fleet, http: httpx.AsyncClient, replicas: int) -> dict[str, float]:
    label = f"{replicas} prober{'s' if replicas > 1 else ''}"
    with Stack(f"{BENCH}-{replicas}") as stack:
        bus = await stack.bus("bench-probing")
        seen: dict[str, float] = {}
        observations = [0]

        async def on_health(msg) -> None:
            observations[0] += 1
            key = json.loads(msg.data)["container_id"]
            seen.setdefault(key, time.monotonic())

        try:
            await stack.keepers(bus.nc, 1)
            stack.gauge.track("acesim", fleet.proc.pid)
            await fleet.fault(http, fleet.hung_a, "hang")
            await bus.nc.subscribe(names.ENGINE_HEALTH, cb=on_health)
            env = dict(HEALTH_CHECK_INTERVAL_S=INTERVAL_S, HEALTH_CHECK_TIMEOUT_S=TIMEOUT_S, HEALTH_RECHECK_S=RECHECK_S)
            for _ in range(replicas):
                stack.service("prober", **env)
            await wait_for(lambda: _at_least(members(bus), replicas), 30, f"{replicas} prober member(s)", period_s=0.2)
            await asyncio.sleep(0.5)  # let every member hear the others' heartbeats
            idle = stack.gauge.now("prober")
            stack.gauge.reset()

            # 1. a round of 1,000 new engines, all due at once
            with Window(stack.gauge) as first:
                started = time.monotonic()
                await bounded_gather(
                    [
                        lambda port=port: bus.js.publish(
                            names.ENGINE_REGISTERED,
                            encode(
                                EngineRegistered(
                                    container_id=fleet.engine_id(port), host="127.0.0.1", port=port, runtime="external"
                                )
                            ),
                            headers={"Nats-Msg-Id": f"reg-{port}"},
                        )
                        for port in fleet.ports
                    ],
                    64,
                )
                await wait_for(_all_seen(seen, ENGINES), 120, f"a probe of each of {ENGINES} engines", period_s=0.05)
                round_s = max(seen.values()) - started
            results.add(
                BENCH,
                f"first round, {ENGINES} new engines ({label})",
                round_s,
                "s",
                digits=1,
                target=f"< {TARGET_ROUND_S:g} s",
                ok=round_s < TARGET_ROUND_S,
                note=f"from registration until each engine was probed once ({len(fleet.hung_a)} hung); "
                f"probers used {first.used.get('prober', 0.0):.2f} CPU s, acesim "
                f"{first.used.get('acesim', 0.0):.2f} CPU s",
            )
            healthy = ENGINES - len(fleet.hung_a)
            await wait_for(
                lambda: _count(statuses(bus.nc), "healthy", healthy), 120, f"{healthy} engines healthy", period_s=0.5
            )

            # 2. another 5% of (healthy) engines hang while the first 5% recover: until all of the
            #    newly hung are unhealthy, and CPU over two steady rounds
            observations[0] = 0
            with Window(stack.gauge) as steady:
                hung_at = time.monotonic()
                await asyncio.gather(fleet.fault(http, fleet.hung_a, "none"), fleet.fault(http, fleet.hung_b, "hang"))
                hung_ids = {fleet.engine_id(port) for port in fleet.hung_b}

                async def all_hung_unhealthy() -> bool:
                    now = await statuses(bus.nc)
                    return all(now.get(key) == "unhealthy" for key in hung_ids)

                await wait_for(all_hung_unhealthy, 120, f"{len(hung_ids)} hung engines unhealthy", period_s=0.5)
                unhealthy_s = time.monotonic() - hung_at
                rest = STEADY_ROUNDS * INTERVAL_S - (time.monotonic() - hung_at)
                if rest > 0:
                    await asyncio.sleep(rest)
            probes = observations[0]
            bound = INTERVAL_S + 2 * TIMEOUT_S + RECHECK_S
            results.add(
                BENCH,
                f"hung engines unhealthy after ({label})",
                unhealthy_s,
                "s",
                digits=1,
                target=f"<= {bound:g} s (interval + 2 x timeout + recheck)",
                ok=unhealthy_s <= bound + 0.05 * INTERVAL_S + 1,  # jitter and the keeper's share
                note=f"{len(hung_ids)} engines hung at once",
            )
            rounds = steady.seconds / INTERVAL_S
            cpu_round = steady.used.get("prober", 0.0) / rounds
            per_probe_ms = steady.used.get("prober", 0.0) / max(1, probes) * 1000
            results.add(
                BENCH,
                f"prober CPU per round ({label})",
                cpu_round,
                "CPU s",
                digits=2,
                note=f"{probes} probes in {steady.seconds:.1f}s ({rounds:.1f} rounds of {INTERVAL_S:g}s), "
                f"{per_probe_ms:.2f} ms CPU per probe, all replicas together",
            )
            share = cpu_round / DEFAULT_INTERVAL_S
            results.add(
                BENCH,
                f"prober share of a core at 30 s ({label})",
                share * 100,
                "%",
                digits=1,
                target=f"< {TARGET_SHARE:.0%}",
                ok=share < TARGET_SHARE,
                note="extrapolated: CPU s per round / 30 s"
                + (f"; {share / replicas * 100:.1f}% per replica" if replicas > 1 else ""),
            )
            results.memory("prober", idle, stack.gauge.peaks().get("prober"), f"probing 1,000 engines ({label})")
            await fleet.fault(http, fleet.hung_b, "none")
            return {"round_s": round_s, "unhealthy_s": unhealthy_s, "cpu_round": cpu_round}
        finally:
            await bus.close()


async def _at_least(count, wanted: int) -> bool:
    return await count >= wanted


def _all_seen(seen: dict[str, float], wanted: int):
    async def check() -> bool:
        return len(seen) >= wanted

    return check


async def _count(statuses_coro, status: str, wanted: int) -> bool:
    return sum(1 for s in (await statuses_coro).values() if s == status) >= wanted


async def bench(results: Results) -> None:
    print(
        f"\n== probing: {ENGINES} acesim engines in one process, {ENGINES // HUNG_EVERY} hung, "
        f"interval {INTERVAL_S:g}s, timeout {TIMEOUT_S:g}s, recheck {RECHECK_S:g}s",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="aceorch-bench-acesim-"))
    processes = Processes(workdir)
    try:
        fleet = Fleet(processes, workdir)
        async with httpx.AsyncClient(trust_env=False) as http:
            await fleet.ready(http)
            for replicas in (1, 3):
                await run_replicas(results, fleet, http, replicas)
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    from tests.bench.harness import run_alone

    sys.exit(run_alone(BENCH, bench))
