"""GET /engines: 1,000 engines (throughput, p99, reply size), and p99 with 10 engines while 3 hang.

The gateway answers reads from its watch-fed views, never by calling
engines; the second part checks that with a prober hitting three hung
acesim engines (interval 2 s, timeout 1 s) while the requests run.
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from shared import names
from shared.schemas import EngineRegistered, encode
from tests.bench.harness import Results, Stack, Window, bounded_gather, free_port_block, percentile, wait_for
from tests.bench.selection import register_engines
from tests.support import free_port

BENCH = "http"
CONCURRENCY = 4
BIG_FLEET = 1000
BIG_REQUESTS = 300
SMALL_FLEET = 10
HUNG = 3
SMALL_REQUESTS = 2000
TARGET_P99_MS = 10.0


async def hammer(url: str, count: int, concurrency: int) -> tuple[list[float], int, float, dict[int, int]]:
    """(latencies s, reply bytes of the last reply, elapsed s, status counts) for `count` GETs."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    size = [0]
    remaining = [count]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=30) as client:
        await client.get(url)  # connect and warm up

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                size[0] = len(response.content)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return latencies, size[0], elapsed, statuses


def start_gateway(stack: Stack, **env) -> str:
    port = free_port()
    stack.service("gateway", GATEWAY_PORT=port, GATEWAY_HOST="127.0.0.1", **env)
    return f"http://127.0.0.1:{port}"


async def engines_listed(client: httpx.AsyncClient, url: str, count: int, status: str | None = None) -> bool:
    try:
        response = await client.get(f"{url}/engines", params={"health_status": status} if status else None)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and len(response.json()) >= count


async def big_fleet(results: Results) -> None:
    with Stack(f"{BENCH}-1000") as stack:
        bus = await stack.bus("bench-http")
        try:
            await stack.keepers(bus.nc, 1)
            url = start_gateway(stack)
            await register_engines(stack, BIG_FLEET)
            async with httpx.AsyncClient(trust_env=False) as client:
                await wait_for(
                    lambda: engines_listed(client, url, BIG_FLEET), 60, f"{BIG_FLEET} engines on /engines", period_s=0.3
                )
            idle = stack.gauge.now("gateway")
            stack.gauge.reset()
            with Window(stack.gauge) as window:
                latencies, size, elapsed, statuses = await hammer(f"{url}/engines", BIG_REQUESTS, CONCURRENCY)
            rate = len(latencies) / elapsed
            cpu_ms = window.used.get("gateway", 0.0) / len(latencies) * 1000
            results.add(
                BENCH,
                f"GET /engines, {BIG_FLEET} engines",
                rate,
                "req/s",
                note=f"{CONCURRENCY} concurrent, {len(latencies)} requests, statuses {statuses}; "
                f"gateway {window.share('gateway'):.0%} of a core, {cpu_ms:.1f} ms CPU per request; "
                f"this client {window.own / window.seconds:.0%}, other work on the machine "
                f"{window.foreign_share:.0%} of a core",
            )
            results.add(
                BENCH, f"GET /engines p50, {BIG_FLEET} engines", percentile(latencies, 50) * 1000, "ms", digits=1
            )
            results.add(
                BENCH, f"GET /engines p99, {BIG_FLEET} engines", percentile(latencies, 99) * 1000, "ms", digits=1
            )
            results.add(
                BENCH,
                f"GET /engines reply, {BIG_FLEET} engines",
                size / 1024,
                "KiB",
                digits=0,
                note=f"{size / BIG_FLEET:.0f} B per engine record",
            )
            results.memory(
                "gateway", idle, stack.gauge.peaks().get("gateway"), f"GET /engines with {BIG_FLEET} engines"
            )
        finally:
            await bus.close()


async def hung_engines(results: Results) -> None:
    with Stack(f"{BENCH}-hung") as stack:
        bus = await stack.bus("bench-http")
        first = free_port_block(SMALL_FLEET)
        ports = list(range(first, first + SMALL_FLEET))
        stack.start(
            "acesim",
            [
                sys.executable,
                "-m",
                "deploy.acesim",
                "--ports",
                f"{first}-{ports[-1]}",
                "--cache-dir",
                str(stack.workdir / "acesim-cache"),
            ],
        )
        try:
            env = dict(HEALTH_CHECK_INTERVAL_S=2, HEALTH_CHECK_TIMEOUT_S=1, HEALTH_RECHECK_S=1)
            await stack.keepers(bus.nc, 1, **env)
            stack.service("prober", **env)
            url = start_gateway(stack, **env)
            async with httpx.AsyncClient(trust_env=False) as client:
                await wait_for(lambda: _answers(client, ports), 30, f"acesim on {SMALL_FLEET} ports", period_s=0.2)
                await bounded_gather(
                    [
                        lambda port=port: bus.js.publish(
                            names.ENGINE_REGISTERED,
                            encode(
                                EngineRegistered(
                                    container_id=f"sim-{port}", host="127.0.0.1", port=port, runtime="external"
                                )
                            ),
                        )
                        for port in ports
                    ],
                    16,
                )
                await wait_for(
                    lambda: engines_listed(client, url, SMALL_FLEET, "healthy"),
                    60,
                    f"{SMALL_FLEET} healthy engines",
                    period_s=0.3,
                )
                for port in ports[:HUNG]:
                    await client.get(f"http://127.0.0.1:{ports[-1]}/__sim/fault?mode=hang&port={port}")
                await wait_for(
                    lambda: engines_listed(client, url, HUNG, "unhealthy"),
                    60,
                    f"{HUNG} hung engines unhealthy",
                    period_s=0.3,
                )
            with Window(stack.gauge) as window:
                latencies, size, elapsed, statuses = await hammer(f"{url}/engines", SMALL_REQUESTS, CONCURRENCY)
            p99 = percentile(latencies, 99) * 1000
            results.add(
                BENCH,
                f"GET /engines p99, {SMALL_FLEET} engines, {HUNG} hung",
                p99,
                "ms",
                digits=2,
                target=f"< {TARGET_P99_MS:g} ms",
                ok=p99 < TARGET_P99_MS,
                note=f"{len(latencies) / elapsed:,.0f} req/s, p50 {percentile(latencies, 50) * 1000:.2f} ms, "
                f"max {max(latencies) * 1000:.1f} ms, {size} B reply, statuses {statuses}; "
                f"gateway {window.share('gateway'):.0%} of a core, this client {window.own / window.seconds:.0%}, "
                f"other work on the machine {window.foreign_share:.0%} of a core; "
                "a prober keeps probing the hung engines meanwhile",
            )
        finally:
            await bus.close()


async def _answers(client: httpx.AsyncClient, ports: list[int]) -> bool:
    try:
        for port in (ports[0], ports[-1]):
            await client.get(f"http://127.0.0.1:{port}/__sim/state", timeout=1)
    except httpx.HTTPError:
        return False
    return True


async def bench(results: Results) -> None:
    print(
        f"\n== http: GET /engines with {BIG_FLEET} engines, and with {SMALL_FLEET} engines of which {HUNG} hang",
        flush=True,
    )
    await big_fleet(results)
    await hung_engines(results)


if __name__ == "__main__":
    from tests.bench.harness import run_alone

    sys.exit(run_alone(BENCH, bench))
