"""Real parts for the reliability scenarios: NATS (one server or a 3-node cluster), N replicas of
each service with scaled-down intervals, acesim engines — every process started here is stopped by
its pid, and every engine a provisioner started is killed by the pid in its state file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nats_cluster import Cluster
from support import (
    NatsServer,
    Process,
    Processes,
    base_env,
    create_open_layout,
    free_port,
    free_port_range,
    wait_for_port,
    wait_for_service,
    wait_until,
)

from shared import auth, names
from shared.bus import Bus, connect
from shared.config import load_config

# Scaled-down timings shared by every scenario (DESIGN §5 bound = 1 + 2×0.5 + 0.5 = 2.5 s).
INTERVAL_S = 1.0
TIMEOUT_S = 0.5
RECHECK_S = 0.5
HEALTH_BOUND_S = INTERVAL_S + 2 * TIMEOUT_S + RECHECK_S

SERVICES = ("state_keeper", "prober", "gateway", "provisioner", "reaper", "janitor")


def port_block(count: int) -> int:
    return free_port_range(count)


# ---------------------------------------------------------------- NATS


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    tmp: Path
    processes: Processes
    nats: NatsServer | Cluster | None = None
    replicas: int = 1  # NATS_REPLICAS for the stream and buckets
    overrides: dict[str, str] = field(default_factory=dict)
    services: dict[str, list[Process]] = field(default_factory=dict)
    engines: list[Process] = field(default_factory=list)  # acesim processes started by the test
    gateways: dict[int, Process] = field(default_factory=dict)  # port → gateway replica
    clients: list[Bus] = field(default_factory=list)

    # ------------------------------------------------------------ NATS

    def start_nats(self) -> None:
        """One node enforcing the role grants: each service gets its role's key (Processes.service)."""
        self.nats = NatsServer(port=free_port(), store=self.tmp / "jetstream", processes=self.processes)
        if os.environ.get("ACEORCH_TEST_AUTH", "1") != "0":
            self.processes.keys = self.nats.with_role_keys(self.tmp / "auth")
        self.nats.start()
        if self.nats.keys is not None:
            create_open_layout(self.nats.url, self.replicas)

    async def start_cluster(self) -> Cluster:
        """The shipped 3-node cluster (tests/nats_cluster.py: role grants, TLS on client and route
        connections) with the layout replicated ×3; services get their role's key and certificate."""
        self.nats = Cluster(self.tmp, self.processes)
        self.replicas = 3
        self.nats.start()
        await self.nats.create_layout(self.replicas)
        return self.nats

    @property
    def url(self) -> str:
        assert self.nats is not None, "start NATS first"
        return self.nats.url

    # ------------------------------------------------------------ services

    def env(self, **overrides: object) -> dict[str, str]:
        """Service environment: scaled-down intervals, local engines under this test's tmp dir."""
        if "ENGINE_PORT_RANGE" not in self.overrides:
            first = port_block(40)
            self.overrides["ENGINE_PORT_RANGE"] = f"{first}-{first + 39}"
        env = base_env(
            self.url,
            NATS_REPLICAS=self.replicas,
            HEALTH_CHECK_INTERVAL_S=INTERVAL_S,
            HEALTH_CHECK_TIMEOUT_S=TIMEOUT_S,
            HEALTH_RECHECK_S=RECHECK_S,
            AUTOSCALE_INTERVAL_S=INTERVAL_S,
            RESERVATION_TTL_S=5,
            UNKNOWN_ENGINE_RETRY_S=5,
            ENGINE_RUNTIME="local",
            ENGINE_STATE_DIR=self.tmp / "engines",
            ENGINE_START_TIMEOUT_S=20,
            NATS_CONNECT_TIMEOUT_S=10,
        )
        env.update(self.overrides)
        env.update({key: str(value) for key, value in overrides.items()})
        return env

    def configure(self, **overrides: object) -> None:
        """Settings every service started from now on gets."""
        self.overrides.update({key: str(value) for key, value in overrides.items()})

    def start(self, service: str, count: int = 1, **overrides: object) -> list[Process]:
        assert service in SERVICES, service
        started = []
        for _ in range(count):
            env = self.env(**overrides)
            if service == "gateway":
                port = free_port()
                env["GATEWAY_PORT"] = str(port)
            proc = self.processes.service(service, env)
            if service == "gateway":
                self.gateways[port] = proc
            started.append(proc)
        self.services.setdefault(service, []).extend(started)
        return started

    async def ready(self, nc, timeout: float = 30.0) -> None:
        """Until every live service replica has said it runs."""
        keepers = [p for p in self.services.get("state_keeper", []) if p.alive()]
        if keepers:
            await wait_for_service(nc, names.SERVICE_NAME, len(keepers), timeout=timeout)
        for port, proc in self.gateways.items():
            if proc.alive():
                await wait_until(lambda: _http_ok(port), timeout=timeout, what=f"gateway on :{port}")
        for service, marker in (("prober", "Health monitor started"),):
            for proc in self.services.get(service, []):
                await wait_until(
                    lambda: marker in proc.log() or not proc.alive(), timeout=timeout, what=f"{service} up"
                )
        for proc in self.all_services():
            if not getattr(proc, "killed_by_test", False):
                assert proc.alive(), f"{proc.name} exited at start-up:\n{proc.log()[-3000:]}"

    def all_services(self) -> list[Process]:
        return [proc for procs in self.services.values() for proc in procs]

    def live(self, service: str) -> list[Process]:
        return [p for p in self.services.get(service, []) if p.alive()]

    def gateway_url(self) -> str:
        for port, proc in self.gateways.items():
            if proc.alive():
                return f"http://127.0.0.1:{port}"
        raise AssertionError("no gateway replica is running")

    def crashed(self) -> list[str]:
        """Services that died by themselves (not killed by the test), with the end of their log."""
        return [
            f"{p.name} (exit {p.popen.returncode}):\n{p.log()[-2000:]}"
            for p in self.all_services()
            if not p.alive() and not getattr(p, "killed_by_test", False)
        ]

    @staticmethod
    def kill(proc: Process) -> None:
        proc.killed_by_test = True  # type: ignore[attr-defined]
        proc.kill()

    # ------------------------------------------------------------ engines

    def acesim(self, count: int) -> list[int]:
        """`count` simulated engines in one process; their ports."""
        first = port_block(count)
        argv = [
            sys.executable,
            "-m",
            "deploy.acesim",
            "--ports",
            f"{first}-{first + count - 1}",
            "--cache-dir",
            str(self.tmp / f"acesim-{first}"),
        ]
        self.engines.append(self.processes.start("acesim", argv))
        for port in range(first, first + count):
            wait_for_port(port, timeout=30)
        return list(range(first, first + count))

    def local_engines(self) -> dict[str, int]:
        """Live engines the local runtime started (state file + live pid naming its port): {id: pid}."""
        found = {}
        for path in sorted((self.tmp / "engines").glob("*.json")):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _is_engine(entry["pid"], entry["port"]):
                found[f"local-{entry['port']}"] = entry["pid"]
        return found

    # ------------------------------------------------------------ clients

    async def client(self, name: str = "chaos-client") -> Bus:
        """A client that may do anything: keyless on the one test server, admin on the cluster."""
        settings = self.nats.settings(auth.ADMIN) if isinstance(self.nats, Cluster) else {"NATS_URL": self.url}
        config = load_config({**settings, "NATS_REPLICAS": str(self.replicas)})
        bus = await connect(config, name)
        self.clients.append(bus)
        return bus

    # ------------------------------------------------------------ teardown

    async def close_clients(self) -> None:
        for bus in self.clients:
            try:
                await asyncio.wait_for(bus.nc.close(), 5)
            except Exception:
                pass

    def stop_all(self) -> None:
        """Services first (all at once, SIGTERM then SIGKILL), then engines, then NATS."""
        _stop_together(self.all_services())
        for pid in self.local_engines().values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _stop_together(self.engines)
        if isinstance(self.nats, Cluster):
            _stop_together([p for p in self.nats.nodes.values() if p is not None])
        elif self.nats is not None and self.nats.process is not None:
            self.nats.process.stop()


def _stop_together(procs: list[Process], timeout: float = 8.0) -> None:
    live = [p for p in procs if p.alive()]
    for proc in live:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for proc in live:
        try:
            proc.popen.wait(max(deadline - time.monotonic(), 0.1))
        except Exception:
            proc.kill()


def _is_engine(pid: int, port: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(port).encode() in cmdline


def _http_ok(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- engines and the live feed


async def register(bus: Bus, port: int, runtime: str = "external", container_id: str | None = None) -> str:
    """Publish `engine.registered` for an engine on 127.0.0.1:port; its container id."""
    from shared.schemas import EngineRegistered, encode

    container_id = container_id or f"sim-{port}"
    event = EngineRegistered(
        container_id=container_id, host="127.0.0.1", port=port, runtime=runtime, container_name=container_id
    )
    await bus.js.publish(names.ENGINE_REGISTERED, encode(event), headers={"Nats-Msg-Id": f"register-{container_id}"})
    return container_id


async def engine_records(bus: Bus) -> dict:
    """{container_id: EngineRecord} as the state-keeper answers engine.list."""
    from shared.schemas import EngineList, decoder

    msg = await bus.nc.request(names.ENGINE_LIST, b"{}", timeout=5)
    return {e.container_id: e for e in decoder(EngineList)(msg.data).engines}


async def wait_healthy(bus: Bus, container_ids: list[str], timeout: float = 30.0) -> None:
    async def all_healthy() -> bool:
        try:
            records = await engine_records(bus)
        except Exception:
            return False
        return all(cid in records and records[cid].health_status == "healthy" for cid in container_ids)

    await wait_until(all_healthy, timeout=timeout, interval=0.2, what=f"{len(container_ids)} engines healthy")


class LiveFeed:
    """A client of the gateway's `GET /api/live` Server-Sent Events, kept open in the background."""

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/api/live"
        self.events: list[tuple[float, str, dict]] = []  # (monotonic time, event, data)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None))
        self._task: asyncio.Task | None = None
        self.error: BaseException | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())
        await wait_until(
            lambda: any(e[1] == "snapshot" for e in self.events) or self.error, timeout=15, what="live feed snapshot"
        )
        assert self.error is None, f"live feed failed: {self.error!r}"

    async def _read(self) -> None:
        try:
            async with self._client.stream("GET", self.url) as response:
                assert response.status_code == 200, response.status_code
                event, data = "message", []
                async for line in response.aiter_lines():
                    if line == "":
                        if data:
                            self.events.append((time.monotonic(), event, json.loads("\n".join(data))))
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported by the test that reads the feed
            self.error = exc

    def engine_seen(self, container_id: str, since: float = 0.0, health: str | None = None) -> float | None:
        """When the feed first showed the engine (with that health status) after `since`."""
        for at, event, data in self.events:
            if at < since or event != "engine" or data.get("id") != container_id:
                continue
            engine = data.get("engine") or {}
            if health is None or engine.get("health_status") == health:
                return at
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()
