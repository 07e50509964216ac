"""A real stack for gateway tests: nats-server, state-keeper, gateway, acesim engines, health checks.

Health comes from the real prober when `services/prober` exists; until then a
small in-test loop probes the engines exactly as DESIGN §5 says (get_status,
timeout, one observation per probe) and publishes `engine.health` events.
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
from support import ROOT, NatsServer, Process, Processes, free_port, free_port_range, wait_for_port, wait_until

from shared import names
from shared.engine_client import probe
from shared.schemas import EngineHealth, encode, utcnow

PROBER_MAIN = ROOT / "services" / "prober" / "__main__.py"
# For stacks whose health a test reports by hand (no prober): a verdict older than interval + 2 x timeout
# + recheck reads unknown (shared.policy.freshness), so the one report must outlast the test.
HEALTH_BY_HAND = {"HEALTH_CHECK_INTERVAL_S": 300, "HEALTH_CHECK_TIMEOUT_S": 5, "HEALTH_RECHECK_S": 5}


@dataclass
class Stack:
    nats_server: NatsServer
    processes: Processes
    nc: nats.NATS
    tmp: Path
    env: dict[str, str]
    url: str = ""
    gateway: Process | None = None
    state_keeper: Process | None = None
    http: httpx.AsyncClient | None = None
    _health_task: asyncio.Task | None = None
    engines_started: list[Process] = field(default_factory=list)

    # ------------------------------------------------------------ processes

    async def start_gateway(self, **overrides: object) -> tuple[str, Process]:
        port = free_port()
        env = {**self.env, "GATEWAY_PORT": str(port), **{k: str(v) for k, v in overrides.items()}}
        proc = self.processes.service("gateway", env)
        url = f"http://127.0.0.1:{port}"
        await wait_until(lambda: _answers(url, proc), timeout=20, what=f"gateway on {url}")
        return url, proc

    def start_engines(self, count: int) -> list[int]:
        """`count` acesim engines in one process; their ports."""
        first = free_port_range(count)
        last = first + count - 1
        argv = [
            sys.executable,
            "-m",
            "deploy.acesim",
            "--ports",
            f"{first}-{last}",
            "--cache-dir",
            str(self.tmp / "cache"),
        ]
        self.engines_started.append(self.processes.start("acesim", argv))
        for port in range(first, last + 1):
            wait_for_port(port, timeout=20)
        return list(range(first, last + 1))

    async def start_health_checks(self) -> str:
        """Start probing every engine; returns which kind ("prober" process or "in-test loop")."""
        if PROBER_MAIN.exists():
            self.processes.service("prober", self.env)
            return "prober"
        self._health_task = asyncio.get_running_loop().create_task(self._probe_loop())
        return "in-test loop"

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.http is not None:
            await self.http.aclose()

    async def _probe_loop(self) -> None:
        interval = float(self.env["HEALTH_CHECK_INTERVAL_S"]) / 2
        timeout = float(self.env["HEALTH_CHECK_TIMEOUT_S"])
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    engines = (await self.http.get("/engines")).json()
                except httpx.HTTPError:
                    engines = []
                await asyncio.gather(*(self._probe_one(client, e, timeout) for e in engines))
                await asyncio.sleep(interval)

    async def _probe_one(self, client: httpx.AsyncClient, engine: dict, timeout: float) -> None:
        result = await probe(client, engine["host"], engine["port"], timeout)
        observation = EngineHealth(
            container_id=engine["container_id"],
            ok=result.ok,
            checked_at=utcnow(),
            latency_ms=result.latency_ms,
            error=result.error,
            version=result.version,
        )
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(names.ENGINE_HEALTH, encode(observation))

    # ------------------------------------------------------------ HTTP helpers

    async def register(self, port: int, name: str | None = None, host: str = "127.0.0.1") -> str:
        body = {"host": host, "port": port} | ({"container_name": name} if name else {})
        reply = await self.http.post("/engines", json=body)
        assert reply.status_code == 202, reply.text
        container_id = reply.json()["container_id"]
        await self.engine(container_id)
        return container_id

    async def engine(self, container_id: str, check=lambda record: True, timeout: float = 20.0, what: str = "") -> dict:
        """The engine's record once `check(record)` holds."""

        async def ready():
            reply = await self.http.get(f"/engines/{container_id}")
            return reply.json() if reply.status_code == 200 and check(reply.json()) else None

        return await wait_until(ready, timeout=timeout, interval=0.1, what=what or f"engine {container_id}")

    async def healthy(self, *container_ids: str, timeout: float = 20.0) -> None:
        for cid in container_ids:
            await self.engine(cid, lambda r: r["health_status"] == "healthy", timeout, f"{cid} healthy")

    async def report_health(self, container_id: str, ok: bool, error: str | None = None) -> None:
        """One engine.health observation, as the prober would publish it."""
        observation = EngineHealth(container_id=container_id, ok=ok, checked_at=utcnow(), latency_ms=3.0, error=error)
        await self.nc.jetstream().publish(names.ENGINE_HEALTH, encode(observation))


async def _answers(url: str, proc: Process) -> bool:
    if not proc.alive():
        raise AssertionError(f"gateway exited with {proc.popen.returncode}:\n{proc.log()}")
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/healthz", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


async def read_sse(response: httpx.Response):
    """(event, data) pairs from an open text/event-stream response; comments as ("comment", text)."""
    event, data = None, []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and (event or data):
            text = "\n".join(data)
            yield event or "message", json.loads(text) if text else None
            event, data = None, []
