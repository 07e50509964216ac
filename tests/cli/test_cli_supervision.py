"""`aceorch up`'s supervision (issue 21 item 7): metrics ports, a crash loop that trips, a dead NATS at once.

The supervisor runs in-process over real child processes (a real nats-server,
services that crash at once as real interpreters); the metrics test runs the
whole `aceorch up`.
"""

from __future__ import annotations

import asyncio
import io
import re
import signal
import sys

import httpx
from support import free_port, free_port_range, nats_server_binary, wait_for_port, wait_until
from test_cli_up import UpRun

from services.cli.children import Child
from services.cli.logs import Output
from services.cli.plan import RESTART_LIMIT, SERVICES, UpOptions
from services.cli.up import Supervisor
from shared.config import load_config

CRASH = [sys.executable, "-c", "import sys; sys.exit(1)"]


def supervisor(tmp_path) -> tuple[Supervisor, io.StringIO]:
    options = UpOptions(tmp_path, free_port(), free_port(), "local", keep_engines=True, stop_timeout_s=5)
    text = io.StringIO()
    return Supervisor(options, load_config({}), Output(["nats", "crasher"], text, color=False)), text


async def start_nats(sup: Supervisor, tmp_path) -> Child:
    argv = [
        nats_server_binary(),
        "-a",
        "127.0.0.1",
        "-p",
        str(sup.options.nats_port),
        "-js",
        "-sd",
        str(tmp_path / "js"),
    ]
    sup.nats = Child("nats", argv, {}, sup.out.emit, sup.exited.set)
    await sup.nats.start()
    await asyncio.to_thread(wait_for_port, sup.options.nats_port)
    return sup.nats


async def crashers(sup: Supervisor, count: int) -> list[Child]:
    for n in range(count):
        child = Child(f"crasher-{n}", CRASH, {}, sup.out.emit, sup.exited.set)
        await child.start()
        sup.services.append(child)
    return sup.services


async def stop_all(sup: Supervisor) -> None:
    sup.stop.set()
    for task in list(sup.restarting.values()):
        await task
    for child in [*sup.services, sup.nats]:
        if child is not None:
            await child.stop(5)


async def test_services_crashing_together_trip_the_restart_limit(tmp_path):
    """Five services in a crash loop: each backoff waits in its own task, so every crash is seen as quick."""
    sup, text = supervisor(tmp_path)
    try:
        await start_nats(sup, tmp_path)
        await crashers(sup, 5)
        await asyncio.wait_for(sup._watch(), timeout=150)  # 1+2+4+8+16 s of backoff, with room for a slow machine
        sup.out.flush()
        assert sup.exit_code == 1
        assert "keeps exiting" in text.getvalue(), text.getvalue()
        assert f"{RESTART_LIMIT} quick restarts in a row" in text.getvalue(), text.getvalue()
        for child in sup.services:  # no crash of the loop was taken for a stable run (that resets the backoff)
            delays = re.findall(
                rf"\| {child.name} exited with code 1 after [0-9.]+s; restarting in (\d+)s", text.getvalue()
            )
            assert delays == ["1", "2", "4", "8", "16"][: len(delays)], (child.name, delays)
    finally:
        await stop_all(sup)


async def test_a_dead_nats_server_is_noticed_while_a_restart_waits(tmp_path):
    sup, text = supervisor(tmp_path)
    try:
        nats = await start_nats(sup, tmp_path)
        [crasher] = await crashers(sup, 1)
        crasher.restarts = 4  # its next restart waits 16 s
        watch = asyncio.ensure_future(sup._watch())
        await wait_until(lambda: "restarting in 16s" in text.getvalue(), timeout=30, what="a long restart wait")
        loop = asyncio.get_running_loop()
        nats.proc.send_signal(signal.SIGKILL)
        killed_at = loop.time()
        await asyncio.wait_for(watch, timeout=60)
        noticed_after = loop.time() - killed_at
        sup.out.flush()
        assert "nats-server exited" in text.getvalue(), text.getvalue()
        assert sup.exit_code == 1
        assert noticed_after < 8, (
            f"a dead nats-server was noticed only after {noticed_after:.1f}s (a restart waits 16 s)"
        )
    finally:
        await stop_all(sup)


async def test_metrics_port_gives_every_service_its_own_port(tmp_path, processes):
    count = len(SERVICES)  # the state-keeper first … the gateway last
    first = free_port_range(count)
    async with UpRun(processes, tmp_path, tmp_path / "data", METRICS_PORT=str(first)) as up:
        await wait_until(
            lambda: f"dashboard: http://127.0.0.1:{up.gateway_port}/" in up.log(), timeout=90, what="dashboard"
        )
        async with httpx.AsyncClient(timeout=5) as http:
            for port in range(first, first + count):
                await wait_until(lambda: _serves_metrics(http, port), timeout=60, what=f"metrics on :{port}")
        assert "exited with code" not in up.log(), up.log()[-3000:]
        assert f"state-keeper :{first}" in up.log() and f"gateway :{first + count - 1}" in up.log()
        assert await up.stop(signal.SIGINT) == 0


async def _serves_metrics(http: httpx.AsyncClient, port: int) -> bool:
    try:
        reply = await http.get(f"http://127.0.0.1:{port}/metrics")
    except httpx.HTTPError:
        return False
    return reply.status_code == 200
