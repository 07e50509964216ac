"""A real stack for proxy tests: nats-server, state-keeper, prober, acesim engines and the proxy.

Engines (one acesim process) are registered by publishing `engine.registered`
(as the provisioner does); the prober makes them healthy; viewers are httpx
streams (`Watcher`) or ffprobe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
from support import (
    Process,
    Processes,
    base_env,
    free_port,
    free_port_range,
    wait_for_port,
    wait_for_service,
    wait_until,
)

from shared import names
from shared.schemas import EngineRegistered, encode

FAST = {
    "PROXY_LINGER_S": 0.5,
    "STAT_INTERVAL_S": 0.5,
    "STALL_TIMEOUT_S": 1.5,
    "STARVATION_S": 1.5,
    "PROXY_START_TIMEOUT_S": 8,
    "FAILOVER_ATTEMPTS": 3,
    "RESERVATION_TTL_S": 30,
}


@dataclass
class ProxyStack:
    processes: Processes
    nc: nats.NATS
    tmp: Path
    env: dict[str, str]
    url: str = ""
    proxy: Process | None = None
    engines: dict[str, int] = field(default_factory=dict)  # container_id → port
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=10))

    async def start_proxy(self, port: int | None = None, **overrides: object) -> tuple[str, Process]:
        port = port or free_port()
        env = {**self.env, "PROXY_PORT": str(port), **{k: str(v) for k, v in overrides.items()}}
        proc = self.processes.service("proxy", env)
        url = f"http://127.0.0.1:{port}"
        await wait_until(lambda: _answers(url, proc), timeout=20, what=f"proxy on {url}")
        return url, proc

    async def add_engines(self, count: int) -> list[str]:
        """`count` healthy engines in one acesim process (a crash fault kills one of them only); their ids."""
        first = free_port_range(count)
        self.processes.start(
            "acesim",
            [
                sys.executable,
                "-m",
                "deploy.acesim",
                "--ports",
                f"{first}-{first + count - 1}",
                "--cache-dir",
                str(self.tmp / f"cache-{first}"),
            ],
        )
        added = []
        for port in range(first, first + count):
            wait_for_port(port, timeout=20)
            cid = f"sim-{port}"
            self.engines[cid] = port
            event = EngineRegistered(container_id=cid, host="127.0.0.1", port=port, runtime="external")
            await self.nc.jetstream().publish(
                names.ENGINE_REGISTERED, encode(event), headers={"Nats-Msg-Id": f"reg-{cid}"}
            )
            added.append(cid)
        for cid in added:
            await self.wait_engine(cid, lambda r: r["health_status"] == "healthy", what=f"{cid} healthy")
        return added

    async def engine_record(self, cid: str) -> dict | None:
        kv = await self.nc.jetstream().key_value(names.ENGINES_BUCKET)
        try:
            entry = await kv.get(cid)
        except Exception:
            return None
        return json.loads(entry.value) if entry.value else None

    async def wait_engine(self, cid: str, check, timeout: float = 20.0, what: str = "") -> dict:
        async def ok():
            record = await self.engine_record(cid)
            return record if record is not None and check(record) else None

        return await wait_until(ok, timeout=timeout, interval=0.1, what=what or cid)

    async def streams(self, status: str | None = None) -> list[dict]:
        payload = {"status": status} if status else {}
        msg = await self.nc.request(names.STREAM_LIST, json.dumps(payload).encode(), timeout=5)
        return json.loads(msg.data)["streams"]

    async def started(self, count: int) -> list[dict]:
        """The started streams, once there are `count` of them (the state-keeper applies events a moment later)."""

        async def enough():
            streams = await self.streams("started")
            return streams if len(streams) == count else None

        return await wait_until(enough, timeout=10, what=f"{count} started stream(s)")

    async def sim_state(self, cid: str) -> dict:
        port = self.engines[cid]
        return (await self.http.get(f"http://127.0.0.1:{port}/__sim/state")).json()

    async def sim_sessions(self) -> int:
        """Open sessions over every live engine."""
        total = 0
        for cid in self.engines:
            with contextlib.suppress(httpx.HTTPError):
                total += len((await self.sim_state(cid))["sessions"])
        return total

    async def fault(self, cid: str, mode: str, **params: str) -> httpx.Response:
        port = self.engines[cid]
        return await self.http.get(f"http://127.0.0.1:{port}/__sim/fault", params={"mode": mode, **params})

    async def status(self) -> dict:
        return (await self.http.get(f"{self.url}/ace/status")).json()


async def _answers(url: str, proc: Process) -> bool:
    if not proc.alive():
        raise AssertionError(f"proxy exited with {proc.popen.returncode}:\n{proc.log()}")
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/healthz", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


class Watcher:
    """One viewer: reads a proxied stream in a task, keeping every byte (or only counting)."""

    def __init__(self, url: str, keep: bool = True) -> None:
        self.url = url
        self.keep = keep
        self.data = bytearray()
        self.count = 0
        self.status: int | None = None
        self.ended = asyncio.Event()
        self.error: str | None = None
        self._paused = asyncio.Event()
        self._paused.set()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
                async with client.stream("GET", self.url) as response:
                    self.status = response.status_code
                    async for chunk in response.aiter_raw():
                        self.count += len(chunk)
                        if self.keep:
                            self.data += chunk
                        await self._paused.wait()
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.ended.set()

    def pause(self) -> None:
        self._paused.clear()

    async def got(self, at_least: int, timeout: float = 15.0) -> None:
        await wait_until(
            lambda: self.count >= at_least or self.ended.is_set(),
            timeout=timeout,
            what=f"{at_least} bytes from {self.url} (got {self.count}, error {self.error})",
        )
        assert self.count >= at_least, f"stream ended after {self.count} bytes ({self.error})"

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def make_stack(processes: Processes, nc: nats.NATS, nats_url: str, tmp: Path, **overrides: object) -> ProxyStack:
    env = base_env(nats_url, **{**FAST, **overrides})
    stack = ProxyStack(processes, nc, tmp, env)
    processes.service("state_keeper", env)
    await wait_for_service(nc, names.SERVICE_NAME, 1)
    processes.service("prober", env)
    return stack
