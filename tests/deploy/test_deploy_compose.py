"""docker-compose.yml on the real Docker Engine: images built locally, host networking, scaled services.

The stack gets its own project name, engine pool and free loopback ports
(through the variables the compose file reads), so it runs beside anything
else on the daemon; everything it created is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import nats
import pytest
from support import ROOT, compose_command, free_port, free_port_range, refusal, wait_for_service, wait_until

from shared import names

pytestmark = pytest.mark.docker

ENGINE_PORTS = 20
SCALED = {"prober": 2, "state-keeper": 2, "proxy": 2}  # proxy replicas share PROXY_PORT (SO_REUSEPORT)


def docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "docker client not installed (run deploy/ci_setup.sh)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "Docker Engine not answering (run deploy/ci_setup.sh)"
    return None


@pytest.fixture(scope="module")
def images() -> None:
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    build = subprocess.run(
        ["bash", "deploy/images.sh", "acesim", "services", "nats"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if build.returncode != 0:
        pytest.fail(f"bash deploy/images.sh failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")


@dataclass
class Stack:
    command: list[str]
    env: dict[str, str]
    project: str
    pool: str

    @property
    def nats_url(self) -> str:
        return self.env["NATS_URL"]

    @property
    def auth_dir(self) -> Path:
        return Path(self.env["AUTH_DIR"])

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.env['GATEWAY_PORT']}"

    def compose(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [*self.command, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr


@pytest.fixture
def stack(images, tmp_path):
    first = free_port_range(ENGINE_PORTS)
    nats_port = free_port()
    suffix = uuid.uuid4().hex[:8]
    # The operator's one step before `compose up`: a key per role and the server's grants (README).
    keys = tmp_path / "auth"
    made = subprocess.run(
        [sys.executable, "-m", "services.cli", "auth", "init", str(keys)], cwd=ROOT, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    env = {
        **os.environ,
        "NATS_PORT": str(nats_port),
        "NATS_HTTP_PORT": str(free_port()),
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "GATEWAY_PORT": str(free_port()),
        "PROXY_PORT": str(free_port()),
        "ENGINE_PORT_RANGE": f"{first}-{first + ENGINE_PORTS - 1}",
        "ENGINE_POOL": f"compose-{suffix}",
        "MIN_REPLICAS": "2",
        "MIN_FREE_REPLICAS": "1",
        "MAX_REPLICAS": "4",
        "HEALTH_CHECK_INTERVAL_S": "1",
        "HEALTH_CHECK_TIMEOUT_S": "0.5",
        "HEALTH_RECHECK_S": "0.5",
        "AUTOSCALE_INTERVAL_S": "1",
        "ENGINE_GRACE_PERIOD_S": "600",
        "AUTH_DIR": str(keys),
    }
    for leftover in ("NATS_CONFIG", "NATS_REPLICAS", "ENGINE_RUNTIME", "ACEORCH_IMAGE", "NATS_IMAGE", "DOCKER_NETWORK"):
        env.pop(leftover, None)  # the compose file's defaults are what is under test
    deployed = Stack(compose_command(), env, f"aceorchtest{suffix}", env["ENGINE_POOL"])
    try:
        yield deployed
    finally:
        logs = subprocess.run(
            [
                *deployed.command,
                "-f",
                str(ROOT / "docker-compose.yml"),
                "-p",
                deployed.project,
                "logs",
                "--no-color",
                "--tail",
                "60",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        print(logs.stdout[-20000:])  # shown by pytest when the test failed
        deployed.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")
        _remove_engines(deployed.pool)


def _remove_engines(pool: str) -> None:
    """Engine containers the provisioner created (not part of the compose project)."""
    client = docker.from_env()
    try:
        for container in client.containers.list(all=True, filters={"label": f"aceorch.pool={pool}"}):
            container.remove(force=True)
    finally:
        client.close()


async def test_compose_stack_provisions_healthy_engine_containers_and_scales(stack):
    stack.compose("up", "-d", *[arg for name, count in SCALED.items() for arg in ("--scale", f"{name}={count}")])

    async with httpx.AsyncClient(base_url=stack.gateway, timeout=5) as http:

        async def healthy():
            try:
                engines = (await http.get("/engines", params={"health_status": "healthy"})).json()
            except (httpx.HTTPError, ValueError):
                return None
            return engines if len(engines) >= 2 else None

        engines = await wait_until(healthy, timeout=180, interval=0.5, what="2 healthy engines on /engines")
        assert (await http.get("/healthz")).status_code == 200
        assert "<html" in (await http.get("/")).text.lower()

    first, last = map(int, stack.env["ENGINE_PORT_RANGE"].split("-"))
    for engine in engines:
        assert engine["runtime"] == "docker" and engine["host"] == "127.0.0.1", engine
        assert first <= engine["port"] <= last and engine["labels"]["aceorch.pool"] == stack.pool, engine
    _assert_engine_containers(stack.pool, {engine["container_id"] for engine in engines})
    _assert_services_scaled(stack.project)

    # The server refuses anonymous clients; the operator's key reads and requests.
    assert await refusal(stack.nats_url) is not None
    nc = await nats.connect(
        stack.nats_url, nkeys_seed=str(stack.auth_dir / "operator.nk"), inbox_prefix=_inbox(stack.auth_dir, "operator")
    )
    try:
        await wait_for_service(nc, names.SERVICE_NAME, SCALED["state-keeper"], timeout=60)
        reply = await nc.request(names.ENGINE_SELECT, b'{"content_key": "compose-channel"}', timeout=5)
        assert not (reply.headers or {}).get("Nats-Service-Error-Code"), reply.data
        assert b'"aceorch.pool":"%s"' % stack.pool.encode() in reply.data
    finally:
        await nc.close()


def _assert_engine_containers(pool: str, registered: set[str]) -> None:
    client = docker.from_env()
    try:
        containers = client.containers.list(filters={"label": f"aceorch.pool={pool}"})
        assert registered <= {c.id for c in containers}
        for container in containers:
            assert container.attrs["HostConfig"]["NetworkMode"] == "host"
            assert container.attrs["Config"]["Image"] == "aceorch/acesim:latest"
            assert container.labels["aceorch.managed"] == "true"
    finally:
        client.close()


def _assert_services_scaled(project: str) -> None:
    client = docker.from_env()
    try:
        containers = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        running = Counter(c.labels["com.docker.compose.service"] for c in containers if c.status == "running")
    finally:
        client.close()
    expected = {"nats": 1, "provisioner": 1, "janitor": 1, "reaper": 1, "gateway": 1, **SCALED}
    assert dict(running) == expected


def _inbox(keys: Path, role: str) -> str:
    from shared import auth

    return auth.inbox_prefix(auth.public_key(auth.read_seed(keys / f"{role}.nk")))
