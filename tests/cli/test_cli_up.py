"""`aceorch up` as a user runs it: the whole system as child processes, then Ctrl-C.

Real everything: nats-server from the venv, the seven services, local acesim
engines started by the provisioner; the test talks to it over HTTP (the
gateway) and NATS, like a proxy, and through the CLI's client commands.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import httpx
import nats
import pytest
from proc_tree import TreeWatcher
from support import free_port, free_port_range, refusal, wait_until

from shared import auth

CLI = [sys.executable, "-m", "services.cli"]
SCALED_DOWN = {
    "HEALTH_CHECK_INTERVAL_S": "1",
    "HEALTH_CHECK_TIMEOUT_S": "0.5",
    "HEALTH_RECHECK_S": "0.5",
    "AUTOSCALE_INTERVAL_S": "1",
    "MIN_REPLICAS": "2",
    "MIN_FREE_REPLICAS": "1",
    "MAX_REPLICAS": "4",
    "ENGINE_GRACE_PERIOD_S": "600",  # nothing is reaped while the test looks
    "LOG_LEVEL": "INFO",
}


class UpRun:
    """One `aceorch up` child with its ports and log."""

    def __init__(self, processes, tmp_path, data_dir, **env):
        self.nats_port, self.gateway_port, self.proxy_port = free_port(), free_port(), free_port()
        first = free_port_range(20)
        self.env = {
            **SCALED_DOWN,
            "NATS_PORT": str(self.nats_port),
            "GATEWAY_PORT": str(self.gateway_port),
            "PROXY_PORT": str(self.proxy_port),
            "ENGINE_PORT_RANGE": f"{first}-{first + 19}",
            **env,
        }
        self.keys = data_dir / "auth"
        argv = [*CLI, "up", "--data-dir", str(data_dir), "--stop-timeout", "15"]
        self.process = processes.start("aceorch-up", argv, self.env)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.gateway_port}", timeout=5)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def log(self) -> str:
        return self.process.log()

    async def get(self, path: str, **params):
        reply = await self.http.get(path, params=params)
        reply.raise_for_status()
        return reply.json()

    async def healthy_engines(self, count: int) -> list[dict]:
        async def enough():
            try:
                engines = await self.get("/engines", health_status="healthy")
            except httpx.HTTPError:
                return None
            return engines if len(engines) >= count else None

        return await wait_until(enough, timeout=90, interval=0.3, what=f"{count} healthy engines on /engines")

    async def engine(self, container_id: str) -> dict:
        return await self.get(f"/engines/{container_id}")

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """A client command as a user on this machine runs it: with the operator key `up` made
        (found under $DATA_DIR, as the CLI does by default)."""
        env = {**os.environ, "DATA_DIR": str(self.keys.parent)}
        env.pop("NATS_NKEY", None)
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            "--nats-url",
            self.nats_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode, out.decode(), err.decode()

    async def stop(self, sig: int) -> int:
        self.process.popen.send_signal(sig)
        return await asyncio.to_thread(self.process.popen.wait, 120)

    async def __aenter__(self) -> UpRun:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()


async def start_stream_like_a_proxy(nc, content: str, stream_id: str) -> dict:
    """engine.select → the engine's getstream → stream.started with the reservation id."""
    msg = await nc.request(
        "engine.select", json.dumps({"content_key": content, "key_type": "content_id"}).encode(), timeout=5
    )
    assert not (msg.headers or {}).get("Nats-Service-Error-Code"), msg.data
    choice = json.loads(msg.data)
    engine = choice["engine"]
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.get(
            f"http://{engine['host']}:{engine['port']}/ace/getstream", params={"id": content, "format": "json"}
        )
    session = reply.json()["response"]
    event = {
        "stream_id": stream_id,
        "container_id": engine["container_id"],
        "content_key": content,
        "key_type": "content_id",
        "playback_session_id": session["playback_session_id"],
        "stat_url": session["stat_url"],
        "command_url": session["command_url"],
        "is_live": True,
        "reservation_id": choice["reservation_id"],
    }
    await nc.jetstream().publish(
        "stream.started", json.dumps(event).encode(), headers={"Nats-Msg-Id": f"started-{stream_id}"}
    )
    return engine


async def test_up_runs_the_system_and_ctrl_c_leaves_no_process(tmp_path, processes):
    data_dir = tmp_path / "data"
    async with UpRun(processes, tmp_path, data_dir) as up:
        with TreeWatcher(up.process.pid) as tree:
            await _first_run(up, tree)
    log = up.log()
    assert "SIGINT: stopping" in log and "all stopped" in log, log[-3000:]
    _assert_stop_order(log)
    assert len(tree.seen) >= 9, tree.commands  # nats-server, seven services, two engines at least
    assert any("deploy.acesim" in cmd for cmd in tree.commands.values()), tree.commands
    assert tree.survivors() == {}

    # A second `up` on the same data dir finds what the first recorded.
    async with UpRun(processes, tmp_path, data_dir) as again:
        with TreeWatcher(again.process.pid) as tree:
            await _second_run(again, tree)
    assert "SIGTERM: stopping" in again.log() and "all stopped" in again.log()
    assert tree.survivors() == {}


async def _first_run(up: UpRun, tree: TreeWatcher) -> None:
    engines = await up.healthy_engines(2)
    await wait_until(
        lambda: f"dashboard: http://127.0.0.1:{up.gateway_port}/" in up.log(), timeout=30, what="dashboard URL"
    )
    assert f"watch: http://127.0.0.1:{up.proxy_port}/ace/getstream?id=" in up.log()
    assert all(e["runtime"] == "local" and e["host"] == "127.0.0.1" for e in engines)

    await _only_known_keys_get_in(up)
    nc = await nats.connect(up.nats_url, **auth.client_options(str(up.keys / "proxy.nk")))
    try:
        engine = await start_stream_like_a_proxy(nc, "channel-one", "proxy-1")
        kv = await nc.jetstream(timeout=1).key_value("ace_engines")
        with pytest.raises(nats.errors.TimeoutError):  # the proxy reads the records, never writes them
            await kv.put(engine["container_id"], b"{}")
    finally:
        await nc.close()
    used = await wait_until(
        lambda: _with_stream(up, engine["container_id"], "proxy-1"), timeout=30, what="proxy-1 on /engines"
    )
    assert used["last_stream_usage"] is not None
    assert used["reservations"] == {}  # the reservation became the stream

    code, table, err = await up.cli("engines")
    assert code == 0, err
    row = next(line for line in table.splitlines() if line.startswith(engine["container_name"] + " "))
    assert " 1 " in row and ("just now" in row or "s ago" in row), table

    code, out, err = await up.cli("engines", "--nkey", str(up.keys / "prober.nk"))  # a role without engine.list
    assert code == 1 and "permission denied" in err and "role prober" in err and "engine.list" in err, err

    code, out, err = await up.cli("stream", "end", "proxy-1")
    assert code == 0, err
    assert "proxy-1 ended" in out
    await wait_until(
        lambda: _without_streams(up, engine["container_id"]), timeout=30, what="proxy-1 gone from the engine"
    )
    ended = await up.get("/streams", status="ended")
    assert [s["stream_id"] for s in ended] == ["proxy-1"]

    code, out, err = await up.cli("stream", "start", "channel-two", "--stream-id", "cli-2", "--json")
    assert code == 0, err
    started = json.loads(out)
    assert started["stream_id"] == "cli-2" and started["playback_url"].startswith("http://127.0.0.1:")
    await wait_until(lambda: _with_stream(up, started["engine"]["container_id"], "cli-2"), timeout=30, what="cli-2")
    await _shared_session_survives_one_viewer_leaving(up)

    code, out, err = await up.cli("demo", "--duration", "3", "--viewers", "3", "--watch", "0.5-1", "--pause", "0-0.5")
    assert code == 0, err
    done = out.strip().splitlines()[-1]
    assert done.startswith("demo: done, ") and done.split()[2] == done.split()[5] and int(done.split()[2]) >= 3, out
    assert not [s for s in await up.get("/streams", status="started") if s["content_key"].startswith("demo-")]

    await _watch_through_the_proxy(up)
    tree.scan()
    assert await up.stop(signal.SIGINT) == 0


async def _only_known_keys_get_in(up: UpRun) -> None:
    """`up`'s server is secure by default: no key, or a key it does not know, is refused."""
    for options in ({}, {"nkeys_seed_str": auth.new_seed()}):
        refused = await refusal(up.nats_url, **options)
        assert refused is not None and auth.refused(refused), options
    assert all((up.keys / f"{role}.nk").stat().st_mode & 0o077 == 0 for role in auth.ROLES)


async def _watch_through_the_proxy(up: UpRun) -> None:
    """What a user does first: a player on the proxy's URL gets MPEG-TS; leaving ends the stream."""
    url = f"http://127.0.0.1:{up.proxy_port}/ace/getstream?id=first-watch"
    received = b""
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("GET", url) as response:
            assert response.status_code == 200 and response.headers["content-type"] == "video/mp2t"
            async for chunk in response.aiter_raw():
                received += chunk
                if len(received) >= 188 * 100:
                    break
    assert received[0] == 0x47 and received[188] == 0x47

    async def ended() -> bool:
        return any(s["content_key"] == "first-watch" for s in await up.get("/streams", status="ended"))

    await wait_until(ended, timeout=30, what="the proxied stream ended after the viewer left")


async def _shared_session_survives_one_viewer_leaving(up: UpRun) -> None:
    """Two viewers of one channel share the engine session; the first to leave must not stop it."""
    viewers = []
    for stream_id in ("share-a", "share-b"):
        code, out, err = await up.cli("stream", "start", "shared-channel", "--stream-id", stream_id, "--json")
        assert code == 0, err
        viewers.append(json.loads(out))
        await wait_until(
            lambda: _with_stream(up, viewers[-1]["engine"]["container_id"], stream_id), timeout=30, what=stream_id
        )
    assert viewers[1]["shared"] and viewers[0]["engine"]["container_id"] == viewers[1]["engine"]["container_id"]
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await up.cli("stream", "end", "share-a"))[0] == 0
        assert (await http.get(viewers[1]["stat_url"])).json()["error"] is None  # share-b still plays
        assert (await up.cli("stream", "end", "share-b"))[0] == 0
        assert (await http.get(viewers[1]["stat_url"])).json()["error"] == "unknown playback session id"


async def _second_run(again: UpRun, tree: TreeWatcher) -> None:
    await again.healthy_engines(2)
    streams = {s["stream_id"]: s for s in await again.get("/streams")}
    assert (streams["proxy-1"]["status"], streams["proxy-1"]["reason"]) == ("ended", "stopped by aceorch")
    # cli-2's engine was stopped with the first `up`: the provisioner reports it gone, which ends the stream.
    cli_2 = await wait_until(lambda: _ended(again, "cli-2"), timeout=30, what="cli-2 ended")
    assert cli_2["reason"].startswith("engine_removed"), cli_2
    tree.scan()
    assert await again.stop(signal.SIGTERM) == 0


async def _ended(up: UpRun, stream_id: str):
    return next((s for s in await up.get("/streams", status="ended") if s["stream_id"] == stream_id), None)


async def _with_stream(up: UpRun, container_id: str, stream_id: str):
    record = await up.engine(container_id)
    return record if stream_id in record["streams"] else None


async def _without_streams(up: UpRun, container_id: str):
    record = await up.engine(container_id)
    return record if record["streams"] == [] and record["idle_since"] else None


def _assert_stop_order(log: str) -> None:
    order = ["gateway", "proxy", "reaper", "janitor", "provisioner", "prober", "state-keeper", "nats"]
    positions = [log.index(f"| {name} stopped (exit") for name in order]
    assert positions == sorted(positions), positions
    assert log.index("acestream-1 stopped") < log.index("| nats stopped")


def test_up_refuses_a_port_that_is_taken(tmp_path, processes):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        proc = processes.start(
            "aceorch-up",
            [*CLI, "up", "--data-dir", str(tmp_path / "d")],
            {"NATS_PORT": str(taken), "GATEWAY_PORT": str(free_port())},
        )
        assert proc.popen.wait(30) == 1
    assert f"port {taken} (NATS) is already in use" in proc.log()
    assert "NATS_PORT" in proc.log()
    assert "nats-server starting" not in proc.log()


def test_up_refuses_an_invalid_setting_before_starting_anything(tmp_path, processes):
    proc = processes.start(
        "aceorch-up",
        [*CLI, "up", "--data-dir", str(tmp_path / "d")],
        {"NATS_PORT": str(free_port()), "GATEWAY_PORT": str(free_port()), "MIN_REPLICAS": "many"},
    )
    assert proc.popen.wait(30) == 2
    assert "MIN_REPLICAS must be an integer, got 'many'" in proc.log()
    assert "nats-server starting" not in proc.log()


@pytest.mark.parametrize(
    "command", [["engines"], ["select"], ["stream", "start"], ["stream", "end", "x"], ["demo", "--duration", "1"]]
)
def test_client_commands_fail_clearly_without_nats(command, processes):
    url = f"nats://127.0.0.1:{free_port()}"
    proc = processes.start("aceorch", [*CLI, *command, "--nats-url", url])
    assert proc.popen.wait(30) == 1
    assert f"cannot connect to NATS at {url}" in proc.log()
    assert "Traceback" not in proc.log()
