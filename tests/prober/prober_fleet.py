"""A real fleet for prober tests: nats-server, state-keeper, acesim engines, prober processes."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from support import base_env, free_port_range, request_json, wait_for_port, wait_for_service, wait_until

from shared.schemas import EngineRegistered, EngineRemoved, encode

INTERVAL_S = 1.0
TIMEOUT_S = 0.5
RECHECK_S = 0.5


def engine_id(port: int) -> str:
    return f"sim-{port}"


@dataclass
class Observations:
    """engine.health messages seen on a core subscription: container_id → [(arrival, payload)]."""

    seen: dict[str, list[tuple[float, dict]]] = field(default_factory=lambda: defaultdict(list))

    async def on_msg(self, msg) -> None:
        payload = json.loads(msg.data)
        self.seen[payload["container_id"]].append((time.monotonic(), payload))

    def between(self, key: str, start: float, end: float) -> list[float]:
        return [t for t, _ in self.seen.get(key, []) if start <= t <= end]


@dataclass
class Fleet:
    nc: object
    processes: object
    nats_url: str
    tmp_path: object
    http: httpx.AsyncClient
    ports: list[int] = field(default_factory=list)
    probers: list = field(default_factory=list)

    def env(self, **overrides):
        return base_env(self.nats_url, **overrides)

    async def start_state_keeper(self) -> None:
        self.processes.service("state_keeper", self.env())
        await wait_for_service(self.nc, "state-keeper")

    def start_engines(self, count: int) -> list[int]:
        # Below Linux's ephemeral range, so the prober's own outgoing sockets can't take them.
        first = free_port_range(count, start=20000, stop=32000)
        ports = list(range(first, first + count))
        where = ["--port", str(first)] if count == 1 else ["--ports", f"{first}-{ports[-1]}"]
        cache = str(self.tmp_path / f"cache-{first}")
        self.processes.start("acesim", [sys.executable, "-m", "deploy.acesim", *where, "--cache-dir", cache])
        for port in ports:
            wait_for_port(port, timeout=30)
        self.ports += ports
        return ports

    async def register(self, ports: list[int]) -> None:
        js = self.nc.jetstream()
        for port in ports:
            event = EngineRegistered(
                container_id=engine_id(port),
                container_name=engine_id(port),
                host="127.0.0.1",
                port=port,
                runtime="external",
            )
            await js.publish("engine.registered", encode(event), headers={"Nats-Msg-Id": f"reg-{port}-{time.time()}"})

    async def remove(self, port: int) -> None:
        event = EngineRemoved(container_id=engine_id(port), reason="test")
        await self.nc.jetstream().publish("engine.removed", encode(event))

    def start_prober(self, **overrides):
        proc = self.processes.service("prober", self.env(**overrides))
        self.probers.append(proc)
        return proc

    async def fault(self, port: int, mode: str, **params) -> None:
        query = {"mode": mode, **{key: str(value) for key, value in params.items()}}
        response = await self.http.get(f"http://127.0.0.1:{port}/__sim/fault", params=query)
        assert response.status_code == 200, response.text

    async def engines(self, **filters) -> dict[str, dict]:
        body, _ = await request_json(self.nc, "engine.list", filters)
        return {record["container_id"]: record for record in body["engines"]}

    async def engine(self, port: int) -> dict:
        body, _ = await request_json(self.nc, "engine.get", {"container_id": engine_id(port)})
        return body

    async def wait_healthy(self, ports: list[int], timeout: float = 20) -> None:
        wanted = {engine_id(port) for port in ports}

        async def all_healthy():
            healthy = await self.engines(health_status="healthy")
            return wanted <= set(healthy)

        await wait_until(all_healthy, timeout=timeout, interval=0.2, what=f"{len(wanted)} engines healthy")

    async def wait_probed(self, ports: list[int], timeout: float = 20) -> None:
        """Until every engine's record shows a probe (healthy or not)."""
        wanted = {engine_id(port) for port in ports}

        async def all_probed():
            probed = {key for key, record in (await self.engines()).items() if record["last_health_check"]}
            return wanted <= probed

        await wait_until(all_probed, timeout=timeout, interval=0.2, what=f"{len(wanted)} engines probed")

    async def observe(self) -> Observations:
        observations = Observations()
        await self.nc.subscribe("engine.health", cb=observations.on_msg)
        return observations
