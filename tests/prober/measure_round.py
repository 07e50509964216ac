"""Measure one prober over a big acesim fleet: rounds, gaps, CPU (not a test; run by hand).

    .venv/bin/python tests/prober/measure_round.py --engines 1000 --hung 50 --interval 30 --rounds 3

Starts a fresh nats-server, a state-keeper, one `acesim --ports` process, a
single prober (HEALTH_CHECK_TIMEOUT_S=5, HEALTH_RECHECK_S=5), registers every
engine, hangs `--hung` of them, skips the first interval (the start-up spread),
then counts `engine.health` observations per round and reads the prober's CPU
seconds from /proc/<pid>/stat. Everything runs on 127.0.0.1 and is stopped at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import httpx
import nats

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from support import NatsServer, Processes, base_env, free_port, free_port_range, wait_for_port  # noqa: E402  # after sys.path

from shared.schemas import EngineRegistered, encode  # noqa: E402  # after sys.path


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def measure(args: argparse.Namespace, workdir: Path) -> None:
    processes = Processes(workdir)
    try:
        await _measure(args, workdir, processes)
    finally:
        processes.stop_all()


async def _measure(args: argparse.Namespace, workdir: Path, processes: Processes) -> None:
    server = NatsServer(port=free_port(), store=workdir / "js", processes=processes)
    server.start()
    env = base_env(server.url, HEALTH_CHECK_INTERVAL_S=args.interval, HEALTH_CHECK_TIMEOUT_S=5, HEALTH_RECHECK_S=5)
    processes.service("state_keeper", env)
    first = free_port_range(args.engines, start=20000, stop=32000)
    ports = list(range(first, first + args.engines))
    processes.start(
        "acesim",
        [
            sys.executable,
            "-m",
            "deploy.acesim",
            "--ports",
            f"{first}-{ports[-1]}",
            "--cache-dir",
            str(workdir / "cache"),
        ],
    )
    for port in ports:
        wait_for_port(port, timeout=60)
    hung = ports[1 :: max(len(ports) // max(args.hung, 1), 1)][: args.hung]
    async with httpx.AsyncClient(trust_env=False) as http:
        for port in hung:
            await http.get(f"http://127.0.0.1:{port}/__sim/fault", params={"mode": "hang"})

    nc = await nats.connect(server.url)
    await asyncio.sleep(2)  # the state-keeper's consumer
    js = nc.jetstream()
    for port in ports:
        event = EngineRegistered(container_id=f"sim-{port}", host="127.0.0.1", port=port, runtime="external")
        await js.publish("engine.registered", encode(event), headers={"Nats-Msg-Id": f"reg-{port}"})
    seen: dict[str, list[tuple[float, bool, str | None]]] = defaultdict(list)

    async def on_health(msg) -> None:
        obs = json.loads(msg.data)
        seen[obs["container_id"]].append((time.monotonic(), obs["ok"], obs.get("error")))

    await nc.subscribe("engine.health", cb=on_health)
    prober = processes.service("prober", env)
    await asyncio.sleep(args.interval + 2)  # skip the start-up spread
    seen.clear()
    before, started = cpu_seconds(prober.pid), time.monotonic()
    await asyncio.sleep(args.interval * args.rounds)
    after, elapsed = cpu_seconds(prober.pid), time.monotonic() - started
    report(seen, args, before, after, elapsed)
    reply = await nc.request("engine.list", b'{"health_status": "unhealthy"}', timeout=5)
    print(f"state-keeper: {len(json.loads(reply.data)['engines'])} engines unhealthy")
    await nc.close()


def report(seen, args, before, after, elapsed) -> None:
    total = sum(len(v) for v in seen.values())
    failures = Counter(error for v in seen.values() for _, ok, error in v if not ok)
    healthy = [key for key, v in seen.items() if all(ok for _, ok, _ in v)]
    gaps = sorted(b[0] - a[0] for key in healthy for a, b in pairwise(seen[key]))
    user, system = after[0] - before[0], after[1] - before[1]
    print(
        f"{args.engines} engines ({args.hung} hung), interval {args.interval:g}s, {args.rounds} rounds "
        f"over {elapsed:.1f}s: {len(seen)} engines observed, {total / args.rounds:.0f} observations/round, "
        f"failures {dict(failures)}"
    )
    if gaps:
        print(f"healthy engines: gap between probes median {statistics.median(gaps):.2f}s, max {gaps[-1]:.2f}s")
    print(
        f"prober CPU: {user + system:.2f}s ({user:.2f} user + {system:.2f} system) = "
        f"{100 * (user + system) / elapsed:.2f}% of one core, {1000 * (user + system) / max(total, 1):.2f} ms "
        f"per observation"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=1000)
    parser.add_argument("--hung", type=int, default=50)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="measure-prober-") as workdir:
        asyncio.run(measure(args, Path(workdir)))


if __name__ == "__main__":
    main()
