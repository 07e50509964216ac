"""Clients report while the state-keeper is down; it applies the reports when it is back (issue 16).

Real nats-server, real state-keeper processes (SIGKILLed), a real acesim engine,
and the CLI as a user runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import nats
import pytest
from support import base_env, free_port_range, request_json, wait_for_port, wait_for_service, wait_until
from test_cli_up import UpRun

from shared import auth, names
from shared.schemas import utcnow

CLI = [sys.executable, "-m", "services.cli"]


async def cli(url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, "--nats-url", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    return proc.returncode, out.decode(), err.decode()


def keeper_env(nats_url: str) -> dict[str, str]:
    # Health is reported once, by hand: DESIGN's timings keep that verdict fresh (45 s) for the whole test.
    return base_env(nats_url, HEALTH_CHECK_INTERVAL_S=30, HEALTH_CHECK_TIMEOUT_S=5, HEALTH_RECHECK_S=5)


async def stream_status(nc, stream_id: str) -> str | None:
    for status in ("started", "ended"):
        body, _ = await request_json(nc, names.STREAM_LIST, {"status": status})
        if any(s["stream_id"] == stream_id for s in body["streams"]):
            return status
    return None


async def one_engine_and_a_keeper(nats_server, processes, nc, tmp_path, count: int = 1):
    """acesim on `count` ports registered as healthy sim-1…; the keeper process."""
    first = free_port_range(count)
    where = ["--port", str(first)] if count == 1 else ["--ports", f"{first}-{first + count - 1}"]
    processes.start("acesim", [sys.executable, "-m", "deploy.acesim", *where, "--cache-dir", str(tmp_path / "sim")])
    wait_for_port(first + count - 1)
    keeper = processes.service("state_keeper", keeper_env(nats_server.url))
    await wait_for_service(nc)
    for n in range(count):
        engine = {"container_id": f"sim-{n + 1}", "host": "127.0.0.1", "port": first + n, "runtime": "external"}
        await nc.jetstream().publish("engine.registered", json.dumps(engine).encode())
        await nc.jetstream().publish(
            "engine.health",
            json.dumps({"container_id": f"sim-{n + 1}", "ok": True, "checked_at": utcnow().isoformat()}).encode(),
        )
    return keeper


async def test_stream_end_with_no_state_keeper_is_stored_and_applied_when_it_is_back(
    nats_server, processes, nc, tmp_path
):
    keeper = await one_engine_and_a_keeper(nats_server, processes, nc, tmp_path)

    code, out, err = await cli(nats_server.url, "stream", "start", "outage-channel", "--stream-id", "out-1", "--json")
    assert code == 0, err
    stat_url = json.loads(out)["stat_url"]
    await wait_until(lambda: _status_is(nc, "out-1", "started"), timeout=30, what="out-1 started")

    keeper.kill()  # SIGKILL: the only state-keeper is gone
    code, out, err = await cli(nats_server.url, "stream", "end", "out-1")
    assert code == 0, err + out
    assert "stream out-1 ended on sim-1" in out
    assert "the state-keeper will apply it when it is back" in out
    async with httpx.AsyncClient(timeout=5) as http:  # nobody else played it: the session was stopped
        assert (await http.get(stat_url)).json()["error"] is not None

    processes.service("state_keeper", keeper_env(nats_server.url))
    await wait_for_service(nc)
    await wait_until(lambda: _status_is(nc, "out-1", "ended"), timeout=30, what="out-1 ended once the keeper is back")
    record, _ = await request_json(nc, names.ENGINE_GET, {"container_id": "sim-1"})
    assert record["streams"] == []


async def _status_is(nc, stream_id: str, status: str) -> bool:
    try:
        return await stream_status(nc, stream_id) == status
    except Exception:  # the keeper is still starting
        return False


async def test_demo_interrupted_during_an_outage_ends_every_stream_it_started(nats_server, processes, nc, tmp_path):
    keeper = await one_engine_and_a_keeper(nats_server, processes, nc, tmp_path, count=2)
    demo = processes.start(
        "demo",
        [
            *CLI,
            "demo",
            "--nats-url",
            nats_server.url,
            "--viewers",
            "3",
            "--channels",
            "2",
            "--duration",
            "300",
            "--watch",
            "120-120",
            "--pause",
            "0-0",
        ],
    )
    playing = await wait_until(lambda: _started_demo_streams(nc, 3), timeout=60, what="3 demo streams started")
    keeper.kill()
    demo.popen.send_signal(signal.SIGINT)  # Ctrl-C while no state-keeper runs
    assert await asyncio.to_thread(demo.popen.wait, 120) == 0, demo.log()
    done = next(line for line in demo.log().splitlines() if line.startswith("demo: done, "))
    assert done == "demo: done, 3 streams started, 3 ended", demo.log()

    processes.service("state_keeper", keeper_env(nats_server.url))
    await wait_for_service(nc)
    await wait_until(
        lambda: _all_ended(nc, playing), timeout=30, what="every demo stream ended once the keeper is back"
    )
    for engine in ("sim-1", "sim-2"):
        record, _ = await request_json(nc, names.ENGINE_GET, {"container_id": engine})
        assert record["streams"] == [], record


async def _started_demo_streams(nc, count: int) -> set[str] | None:
    body, _ = await request_json(nc, names.STREAM_LIST, {"status": "started"})
    ids = {s["stream_id"] for s in body["streams"]}
    return ids if len(ids) >= count else None


async def _all_ended(nc, stream_ids: set[str]) -> bool:
    try:
        body, _ = await request_json(nc, names.STREAM_LIST, {"status": "ended"})
    except Exception:  # the keeper is still starting
        return False
    return stream_ids <= {s["stream_id"] for s in body["streams"]}


def child_pids(parent: int, needle: str) -> list[int]:
    """Live children of `parent` whose command line contains `needle`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] not in (b"Z", b"X") and needle in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.slow
async def test_sigkilled_state_keeper_under_demo_load_leaves_no_phantom_stream(tmp_path, processes):
    """Issue 16, scaled down: `aceorch up`, a demo, the only state-keeper SIGKILLed three times."""
    async with UpRun(processes, tmp_path, tmp_path / "data") as up:
        await up.healthy_engines(2)
        demo = await asyncio.create_subprocess_exec(
            *CLI,
            "demo",
            "--nats-url",
            up.nats_url,
            "--nkey",
            str(up.keys / "operator.nk"),
            "--viewers",
            "4",
            "--channels",
            "3",
            "--duration",
            "25",
            "--watch",
            "1-3",
            "--pause",
            "0-0.5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = asyncio.ensure_future(demo.communicate())
        # As admin: the test also reads the durable consumer's backlog, which no client role may.
        nc = await nats.connect(up.nats_url, **auth.client_options(str(up.keys / "admin.nk")))
        try:
            seen = 0
            for kill in range(1, 4):
                await wait_for_service(nc, timeout=60)
                # Under load: the demo started streams since the keeper came back.
                seen = await wait_until(lambda: _more_streams(up, seen + 2), timeout=90, what="demo streams recorded")
                await wait_until(
                    lambda: len(child_pids(up.process.pid, "services.state_keeper")) == 1,
                    timeout=60,
                    what="one state-keeper running",
                )
                [keeper] = child_pids(up.process.pid, "services.state_keeper")
                os.kill(keeper, signal.SIGKILL)
                await wait_until(
                    lambda: up.log().count("state-keeper restarted") >= kill,
                    timeout=60,
                    what=f"state-keeper restarted after kill {kill}",
                )
            out = (await asyncio.wait_for(output, timeout=180))[0].decode()
            assert demo.returncode == 0, out
            done = next(line for line in out.splitlines() if line.startswith("demo: done, "))
            started, ended = int(done.split()[2]), int(done.split()[5])
            assert started == ended and started >= 4, out
            assert "could not end" not in out, out

            await wait_for_service(nc, timeout=60)
            await wait_until(lambda: _drained(nc), timeout=90, what="the state-keeper drained ACE_EVENTS")
            phantoms = [
                s["stream_id"]
                for s in await up.get("/streams", status="started")
                if s["content_key"].startswith("demo-")
            ]
            assert phantoms == []
            ended_ids = {s["stream_id"] for s in await up.get("/streams", status="ended")}
            listed = {sid for engine in await up.get("/engines") for sid in engine["streams"]}
            assert listed & ended_ids == set()
        finally:
            await nc.close()
            if demo.returncode is None:
                demo.kill()
                await demo.wait()
        assert "it was unavailable for" in up.log()
        assert await up.stop(signal.SIGINT) == 0


async def _more_streams(up, at_least: int) -> int:
    try:
        count = len(await up.get("/streams"))
    except httpx.HTTPError:
        return 0
    return count if count >= at_least else 0


async def _drained(nc) -> bool:
    info = await nc.jetstream().consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0
