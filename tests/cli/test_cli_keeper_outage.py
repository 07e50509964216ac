"""Clients report while the state-keeper is down; it applies the reports when it is back (issue 16).

Real nats-server, real state-keeper processes (SIGKILLed), a real acesim engine,
and the CLI as a user runs it.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx

from shared import names
from support import base_env, free_port_range, request_json, wait_for_port, wait_for_service, wait_until

CLI = [sys.executable, "-m", "services.cli"]


async def cli(url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, "--nats-url", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    return proc.returncode, out.decode(), err.decode()


async def stream_status(nc, stream_id: str) -> str | None:
    for status in ("started", "ended"):
        body, _ = await request_json(nc, names.STREAM_LIST, {"status": status})
        if any(s["stream_id"] == stream_id for s in body["streams"]):
            return status
    return None


async def test_stream_end_with_no_state_keeper_is_stored_and_applied_when_it_is_back(nats_server, processes, nc, tmp_path):
    port = free_port_range(1)
    processes.start("acesim", [sys.executable, "-m", "deploy.acesim", "--port", str(port), "--cache-dir", str(tmp_path / "sim")])
    wait_for_port(port)
    keeper = processes.service("state_keeper", base_env(nats_server.url))
    await wait_for_service(nc)
    engine = {"container_id": "sim-1", "host": "127.0.0.1", "port": port, "runtime": "external"}
    await nc.jetstream().publish("engine.registered", json.dumps(engine).encode())
    await nc.jetstream().publish("engine.health", json.dumps(
        {"container_id": "sim-1", "ok": True, "checked_at": "2026-01-01T00:00:00+00:00"}).encode())

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

    processes.service("state_keeper", base_env(nats_server.url))
    await wait_for_service(nc)
    await wait_until(lambda: _status_is(nc, "out-1", "ended"), timeout=30, what="out-1 ended once the keeper is back")
    record, _ = await request_json(nc, names.ENGINE_GET, {"container_id": "sim-1"})
    assert record["streams"] == []


async def _status_is(nc, stream_id: str, status: str) -> bool:
    try:
        return await stream_status(nc, stream_id) == status
    except Exception:  # the keeper is still starting
        return False
