"""engine.select with 100 healthy engines vs a raw echo and an echo-plus-CAS, same concurrency and size.

Reservations pile up by design (each selection writes one and nothing turns
it into a stream), so the keepers run with MAX_STREAMS_PER_ENGINE=1000000
and RESERVATION_TTL_S=0.1: a record then holds a handful of live
reservations, as an engine of a busy real fleet does (at most
MAX_STREAMS_PER_ENGINE=3 of them with the defaults), and no selection is
refused for capacity (503s are counted; expect 0).

The machine may be shared with other work, so each selection point is
measured right after its two baselines at the same concurrency, and every
ratio compares neighbours in time.
"""

from __future__ import annotations

import sys

from shared import names
from shared.schemas import EngineHealth, EngineRegistered, encode, utcnow
from tests.bench.harness import LoadResult, Results, Stack, Window, bounded_gather, request_load, wait_for
from tests.bench.responders import SUBJECTS
from tests.support import keeper_stats, wait_for_service

BENCH = "selection"
ENGINES = 100
CONCURRENCY = (1, 4, 16)
SECONDS = 2.5
RESERVATION_TTL_S = 0.1
# No prober runs in this bench: the one health report per engine must hold for the whole run
# (shared.policy.freshness: a verdict older than interval + 2 x timeout + recheck reads unknown).
KEEPER_ENV = {
    "MAX_STREAMS_PER_ENGINE": 1_000_000,
    "RESERVATION_TTL_S": RESERVATION_TTL_S,
    "HEALTH_CHECK_INTERVAL_S": 3600,
}
SELECT_PAYLOAD = b'{"content_key":"bench-content","key_type":"content_id","client":"bench"}'
TARGET_RATIO = 0.6  # of echo+CAS at 16 requesters
TARGET_P99_MS = 5.0  # at 4 requesters


async def register_engines(
    stack: Stack, count: int, port_base: int = 6000, prefix: str = "bench-engine", healthy: bool = True
) -> list[str]:
    """engine.registered (+ engine.health ok) for `count` engines; returns once the keeper has them all."""
    bus = await stack.bus("bench-register")
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    try:
        await bounded_gather(
            [
                lambda cid=cid, i=i: bus.js.publish(
                    names.ENGINE_REGISTERED,
                    encode(
                        EngineRegistered(container_id=cid, host="127.0.0.1", port=port_base + i, runtime="external")
                    ),
                    headers={"Nats-Msg-Id": f"reg-{cid}"},
                )
                for i, cid in enumerate(ids)
            ],
            64,
        )
        if healthy:
            await bounded_gather(
                [
                    lambda cid=cid: bus.js.publish(
                        names.ENGINE_HEALTH, encode(EngineHealth(container_id=cid, ok=True, checked_at=utcnow()))
                    )
                    for cid in ids
                ],
                64,
            )
        query = b'{"health_status":"healthy"}' if healthy else b"{}"

        async def all_there() -> bool:
            msg = await bus.nc.request(names.ENGINE_LIST, query, timeout=5)
            return msg.data.count(b'"container_id"') >= count

        await wait_for(all_there, 120, f"{count} registered engines", period_s=0.2)
    finally:
        await bus.close()
    return ids


async def start_responder(stack: Stack, nc, mode: str, size: int):
    proc = stack.start(
        f"{mode}-responder",
        [sys.executable, "-m", "tests.bench.responders", mode, "--url", stack.url, "--size", str(size)],
    )

    async def answering() -> bool:
        try:
            await nc.request(SUBJECTS[mode], b"{}", timeout=1)
            return True
        except Exception:
            return False

    await wait_for(answering, 20, f"{mode} responder")
    return proc


async def point(stack: Stack, nc, subject: str, label: str, c: int) -> tuple[LoadResult, Window]:
    with Window(stack.gauge) as window:
        load = await request_load(nc, subject, SELECT_PAYLOAD, c, SECONDS)
    return load, window


async def _conflicts(nc) -> int:
    """Engine writes the keepers lost to each other so far (their $SRV.STATS)."""
    return (await keeper_stats(nc)).get("conflicts", {}).get("engine", 0)


def report(results: Results, label: str, load: LoadResult, window: Window, process: str, extra: str = "") -> None:
    c = load.concurrency
    cpu_us = window.used.get(process, 0.0) / max(1, load.ok) * 1e6 * (SECONDS / window.seconds)
    refused = load.errors.get("503", 0)
    others = {k: v for k, v in load.errors.items() if k != "503"}
    note = (
        f"{process} {window.share(process):.0%} of a core (~{cpu_us:.0f} us/request), reply {load.mean_reply:.0f} B"
        f", other work on the machine {window.foreign_share:.0%} of a core"
    )
    if refused or label.startswith("select"):
        note += f", 503s {refused}"
    if others:
        note += f", errors {dict(others)}"
    note += extra
    results.add(BENCH, f"{label} c={c} throughput", load.rate, "req/s", note=note)
    results.add(BENCH, f"{label} c={c} p50", load.percentile_ms(50), "ms", digits=2)
    results.add(BENCH, f"{label} c={c} p99", load.percentile_ms(99), "ms", digits=2)


async def bench(results: Results) -> None:
    print(f"\n== selection: engine.select, {ENGINES} healthy engines, {SECONDS:g}s per point", flush=True)
    runs: dict[tuple[str, int], LoadResult] = {}
    with Stack(BENCH) as stack:
        nc = await stack.client()
        try:
            keepers = await stack.keepers(nc, 1, **KEEPER_ENV)
            await register_engines(stack, ENGINES)
            idle = stack.gauge.now("state-keeper")
            warm = await request_load(nc, names.ENGINE_SELECT, SELECT_PAYLOAD, 4, 0.5, warmup_s=0.2)
            size = round(warm.mean_reply)
            print(f"  (baselines reply {size} B, the mean engine.select reply under load)", flush=True)
            await start_responder(stack, nc, "echo", size)
            await start_responder(stack, nc, "cas", size)
            stack.gauge.reset()
            for replicas in (1, 2):
                if replicas == 2:
                    keepers.append(stack.service("state_keeper", **KEEPER_ENV))
                    await wait_for_service(nc, names.SERVICE_NAME, 2, timeout=30)
                keeper_label = f"select {replicas} keeper{'s' if replicas > 1 else ''}"
                for c in CONCURRENCY:
                    for mode, label, process in (
                        ("echo", "echo", "echo-responder"),
                        ("cas", "echo+CAS", "cas-responder"),
                    ):
                        load, window = await point(stack, nc, SUBJECTS[mode], label, c)
                        report(results, f"{label} [{replicas}]", load, window, process)
                        runs[(f"{mode}{replicas}", c)] = load
                    before = await _conflicts(nc)
                    load, window = await point(stack, nc, names.ENGINE_SELECT, keeper_label, c)
                    conflicts = (await _conflicts(nc) - before) / max(1, load.ok)
                    report(
                        results,
                        keeper_label,
                        load,
                        window,
                        "state-keeper",
                        f", CAS conflicts/selection {conflicts:.2f}",
                    )
                    runs[(f"select{replicas}", c)] = load
            results.memory("state-keeper", idle, stack.gauge.peaks().get("state-keeper"), "selection")
        finally:
            await nc.close()
    summarize(results, runs)


def summarize(results: Results, runs: dict[tuple[str, int], LoadResult]) -> None:
    for replicas in (1, 2):
        label = f"{replicas} keeper{'s' if replicas > 1 else ''}"
        for c in CONCURRENCY:
            select, cas, echo = (
                runs[(f"select{replicas}", c)],
                runs[(f"cas{replicas}", c)],
                runs[(f"echo{replicas}", c)],
            )
            if not cas.rate:
                continue
            ratio = select.rate / cas.rate
            target = dict(target=f">= {TARGET_RATIO} x echo+CAS", ok=ratio >= TARGET_RATIO) if c == 16 else {}
            note = f"select/echo {select.rate / echo.rate:.2f} x" if echo.rate else ""
            results.add(BENCH, f"select/echo+CAS c={c} ({label})", ratio, "x", digits=2, note=note, **target)
        p99 = runs[(f"select{replicas}", 4)].percentile_ms(99)
        results.add(
            BENCH,
            f"select p99 c=4 ({label})",
            p99,
            "ms",
            digits=2,
            target=f"< {TARGET_P99_MS:g} ms",
            ok=p99 is not None and p99 < TARGET_P99_MS,
        )
    refused = sum(load.errors.get("503", 0) for (kind, _), load in runs.items() if kind.startswith("select"))
    results.add(BENCH, "select 503 replies", refused, "", target="0", ok=refused == 0)


if __name__ == "__main__":
    from tests.bench.harness import run_alone

    sys.exit(run_alone(BENCH, bench))
