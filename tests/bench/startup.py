"""Start-up: from `aceorch up` (MIN_REPLICAS=10, local acesim engines) to the first engine selection and
to 10 healthy engines; then each service's resident memory at rest, and a clean stop.

Everything runs under a temporary data dir on free loopback ports; `up` is
stopped with SIGINT (as Ctrl-C would), and anything it leaves behind is
stopped by pid.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.harness import Results, free_port_block, rss_mb
from tests.support import free_port

BENCH = "startup"
ENGINES = 10
TARGET_HEALTHY_S = 10.0
TARGET_API_S = 2.0
GIVE_UP_S = 90.0
SERVICE_NAMES = ("state_keeper", "prober", "provisioner", "janitor", "reaper", "gateway")


def descendants(root: int) -> list[int]:
    """Every process below `root` (from /proc), children first."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def label_of(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    text = [a.decode(errors="replace") for a in argv]
    for name in SERVICE_NAMES:
        if f"services.{name}" in text:
            return name.replace("_", "-")
    if any("acesim" in a for a in text):
        return "engine"
    if any(a.endswith("nats-server") for a in text):
        return "nats-server"
    return None


async def healthy_engines(client: httpx.AsyncClient, url: str) -> int | None:
    """Healthy engines listed by the API, None while it does not answer."""
    try:
        response = await client.get(f"{url}/engines", params={"health_status": "healthy"}, timeout=1)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return len(response.json())


async def selection_answers(client: httpx.AsyncClient, url: str) -> bool:
    """True once `POST /engines/select` hands out an engine: gateway, state-keeper and a healthy engine all up."""
    try:
        response = await client.post(f"{url}/engines/select", json={}, timeout=1)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and "engine" in response.json()


async def bench(results: Results) -> None:
    print(f"\n== startup: `aceorch up` with MIN_REPLICAS={ENGINES} (local acesim engines)", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="aceorch-bench-up-"))
    gateway = free_port()
    first = free_port_block(40)
    env = {
        **os.environ,
        "MIN_REPLICAS": str(ENGINES),
        "MAX_REPLICAS": str(ENGINES + 5),
        "ENGINE_RUNTIME": "local",
        "ENGINE_PORT_RANGE": f"{first}-{first + 39}",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "PROXY_PORT": str(free_port()),
    }
    argv = [
        sys.executable,
        "-m",
        "services.cli",
        "up",
        "--data-dir",
        str(workdir / "data"),
        "--nats-port",
        str(free_port()),
        "--gateway-port",
        str(gateway),
    ]
    log = open(workdir / "up.log", "wb")
    started = time.monotonic()
    up = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[2])
    log.close()
    seen: set[int] = set()
    url = f"http://127.0.0.1:{gateway}"
    api_s = healthy_s = None
    ok = False
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() - started < GIVE_UP_S and up.poll() is None:
                if api_s is None and await selection_answers(client, url):
                    api_s = time.monotonic() - started
                count = await healthy_engines(client, url)
                now = time.monotonic() - started
                if api_s is not None and count is not None and count >= ENGINES:
                    healthy_s = now
                    break
                await asyncio.sleep(0.05)
        seen.update(descendants(up.pid))
        if healthy_s is not None:
            await asyncio.sleep(2.0)  # at rest: no stream, nothing to probe soon
            footprint(results, up.pid, seen)
            ok = True
    finally:
        seen.update(descendants(up.pid))
        stopped = stop(up, seen)
        if not ok:
            print(
                f"  (`aceorch up` log: {workdir / 'up.log'})\n"
                + (workdir / "up.log").read_text(errors="replace")[-3000:]
            )
    results.add(
        BENCH,
        "API answers after",
        api_s,
        "s",
        digits=2,
        target=f"< {TARGET_API_S:g} s",
        ok=api_s is not None and api_s < TARGET_API_S,
        note="first engine handed out by POST /engines/select after `aceorch up`",
    )
    results.add(
        BENCH,
        f"{ENGINES} healthy local engines after",
        healthy_s,
        "s",
        digits=2,
        target=f"< {TARGET_HEALTHY_S:g} s",
        ok=healthy_s is not None and healthy_s < TARGET_HEALTHY_S,
    )
    results.add(
        BENCH,
        "clean stop on SIGINT",
        stopped,
        "s",
        digits=1,
        note="until `aceorch up` exited with every service and engine stopped",
    )
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)


def footprint(results: Results, root: int, pids: set[int]) -> None:
    engines = []
    for pid in sorted(pids):
        label = label_of(pid)
        value = rss_mb(pid)
        if label is None or value is None:
            continue
        if label == "engine":
            engines.append(value)
        else:
            results.memory(label, value, None, "idle after `aceorch up`")
    if engines:
        results.add(
            BENCH,
            "acesim engine RSS (each, at rest)",
            max(engines),
            "MB",
            digits=1,
            note=f"{len(engines)} engine processes",
        )
    up_rss = rss_mb(root)
    if up_rss is not None:
        results.memory("aceorch-up", up_rss, None, "idle after `aceorch up`")


def stop(up: subprocess.Popen, pids: set[int]) -> float | None:
    """SIGINT, wait; then make sure nothing we saw is left running (by pid). Seconds until up exited."""
    began = time.monotonic()
    exited = None
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(45)
            exited = time.monotonic() - began
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
    leftovers = [pid for pid in pids if Path(f"/proc/{pid}").exists() and label_of(pid) is not None]
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if leftovers:
        print(f"  warning: {len(leftovers)} process(es) outlived `aceorch up` and were killed: {leftovers}", flush=True)
        return None
    return exited


if __name__ == "__main__":
    from tests.bench.harness import run_alone

    sys.exit(run_alone(BENCH, bench))
