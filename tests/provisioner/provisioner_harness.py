"""Test harness for the provisioner tiers: engines observed independently of the code under test.

The `tier` fixture (conftest.py) runs each scenario twice: `local` (engines
are acesim child processes) and `docker` (acesim containers on a real Docker
Engine, host networking, loopback ports). Engines are observed through
docker's own container list or the state files checked against /proc, and
every engine a test created is removed in the finalizer, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from support import Process, base_env, request_json, wait_until

from shared import names
from shared.runtime.local import engine_id
from shared.schemas import StreamStarted, encode

PORTS = 20  # each test's ENGINE_PORT_RANGE


# ---------------------------------------------------------------- docker


def docker_available() -> str | None:
    """None when a Docker Engine answers, else why not."""
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no Docker Engine ({exc}); run `bash deploy/ci_setup.sh`"
    return None


# ---------------------------------------------------------------- tiers


@dataclass
class Tier:
    kind: str
    env: dict[str, str]
    state_dir: Path
    pool: str
    first_port: int

    @property
    def silent_command(self) -> str:
        """ENGINE_COMMAND for an engine that starts but never answers (acesim waiting before it listens)."""
        if self.kind == "docker":
            return "--port {port} --host 127.0.0.1 --cache-dir {cache_dir} --startup-delay 600"
        return f"{sys.executable} -m deploy.acesim --port {{port}} --cache-dir {{cache_dir}} --startup-delay 600"

    def engines(self) -> dict[str, int]:
        """Live engines as the runtime itself shows them: {container_id: port}."""
        return docker_engines(self.pool) if self.kind == "docker" else local_engines(self.state_dir)

    def kill(self, container_id: str) -> None:
        """Kill an engine behind the orchestrator's back (docker kill / kill -9)."""
        if self.kind == "docker":
            subprocess.run(["docker", "kill", container_id], check=True, capture_output=True, timeout=30)
        else:
            pid = local_pids(self.state_dir)[container_id]
            os.kill(pid, signal.SIGKILL)

    def destroy(self, container_id: str) -> None:
        """Make an engine vanish without a trace (docker rm -f / kill -9 and its state file deleted)."""
        if self.kind == "docker":
            subprocess.run(["docker", "rm", "-f", container_id], check=True, capture_output=True, timeout=30)
            return
        pid = local_pids(self.state_dir)[container_id]
        os.kill(pid, signal.SIGKILL)
        for path in self.state_dir.glob("*.json"):
            if json.loads(path.read_text())["pid"] == pid:
                path.unlink()

    def cleanup(self) -> None:
        if self.kind == "docker":
            ids = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=aceorch.pool={self.pool}"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)
        else:
            for pid in local_pids(self.state_dir).values():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def docker_engines(pool: str) -> dict[str, int]:
    out = subprocess.run(
        [
            "docker",
            "ps",
            "--no-trunc",
            "--filter",
            f"label=aceorch.pool={pool}",
            "--format",
            '{{.ID}} {{.Label "aceorch.port"}}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return {cid: int(port) for cid, port in (line.split() for line in out.splitlines() if line.strip())}


def local_pids(state_dir: Path) -> dict[str, int]:
    """{container_id: pid} of state files whose process still runs with its port on the command line."""
    found = {}
    for path in state_dir.glob("*.json"):
        try:
            entry = json.loads(path.read_text())
            cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes()
        except (OSError, ValueError, KeyError):
            continue
        if re.search(rb"(?<![0-9])%d(?![0-9])" % entry["port"], cmdline):
            found[engine_id(entry["port"], entry.get("id_host", ""))] = entry["pid"]
    return found


def local_engines(state_dir: Path) -> dict[str, int]:
    return {cid: int(cid.rsplit("-", 1)[1]) for cid in local_pids(state_dir)}


# ---------------------------------------------------------------- the system around the provisioner


@dataclass
class System:
    """state-keeper + prober running; provisioners started on request."""

    tier: Tier
    nats_url: str
    processes: object
    nc: object
    settings: dict[str, object] = field(default_factory=dict)

    def env(self, **overrides: object) -> dict[str, str]:
        return base_env(self.nats_url, **{**self.tier.env, **self.settings, **overrides})

    def provisioner(self, **overrides: object) -> Process:
        return self.processes.service("provisioner", self.env(**overrides))

    async def records(self) -> list[dict]:
        body, _ = await request_json(self.nc, names.ENGINE_LIST, {})
        return body["engines"]

    async def healthy(self, count: int, timeout: float = 60) -> list[dict]:
        """Until exactly `count` engines are registered and all healthy."""

        async def check():
            records = await self.records()
            return records if len(records) == count and all(r["health_status"] == "healthy" for r in records) else None

        return await wait_until(check, timeout=timeout, interval=0.2, what=f"{count} healthy engines")

    async def select(self, content_key: str) -> dict | None:
        """engine.select; None on 503 no_capacity."""
        body, headers = await request_json(self.nc, names.ENGINE_SELECT, {"content_key": content_key})
        if headers.get("Nats-Service-Error-Code") == "503":
            return None
        assert "engine" in body, body
        return body

    async def start_stream(self, selection: dict, stream_id: str) -> None:
        event = StreamStarted(
            stream_id=stream_id,
            container_id=selection["engine"]["container_id"],
            content_key=stream_id,
            reservation_id=selection["reservation_id"],
        )
        await self.nc.jetstream().publish(names.STREAM_STARTED, encode(event))


async def sample_max(tier: Tier, stop: asyncio.Event, interval: float = 0.05) -> int:
    """The largest engine count the runtime showed until `stop`."""
    most = 0
    while not stop.is_set():
        most = max(most, len(await asyncio.to_thread(tier.engines)))
        await asyncio.sleep(interval)
    return most
