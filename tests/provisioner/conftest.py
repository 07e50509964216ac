"""Fixtures for the provisioner tiers (see provisioner_harness.py): `tier`, `system`, `acesim_image`."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from provisioner_harness import PORTS, System, Tier, docker_available
from support import ROOT, base_env, free_port_range, wait_for_service

from shared import names


@pytest.fixture(scope="session")
def acesim_image() -> str:
    """aceorch/acesim:latest, built locally by deploy/images.sh (it skips an up-to-date image)."""
    problem = docker_available()
    if problem:
        pytest.skip(problem)
    build = subprocess.run(
        ["bash", "deploy/images.sh", "acesim"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    if build.returncode != 0:
        pytest.fail(f"bash deploy/images.sh acesim failed:\n{build.stdout}\n{build.stderr}")
    return "aceorch/acesim:latest"


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def tier(request, tmp_path) -> Tier:
    first = free_port_range(PORTS)
    pool = f"test-{uuid.uuid4().hex[:10]}"
    state_dir = tmp_path / "engines"
    env = {
        "ENGINE_RUNTIME": request.param,
        "ENGINE_PORT_RANGE": f"{first}-{first + PORTS - 1}",
        "ENGINE_STATE_DIR": str(state_dir),
        "ENGINE_POOL": pool,
        "ENGINE_START_TIMEOUT_S": "30",
    }
    if request.param == "docker":
        env |= {"ENGINE_IMAGE": request.getfixturevalue("acesim_image"), "DOCKER_NETWORK": "host"}
    chosen = Tier(request.param, env, state_dir, pool, first)
    yield chosen
    chosen.cleanup()


@pytest.fixture
async def system(tier, nats_server, processes, nc) -> System:
    env = base_env(nats_server.url, MAX_STREAMS_PER_ENGINE=1)
    processes.service("state_keeper", env)
    processes.service("prober", env)
    await wait_for_service(nc, names.SERVICE_NAME, 1, timeout=60)  # generous: a busy 2-core machine
    yield System(tier, nats_server.url, processes, nc, {"MAX_STREAMS_PER_ENGINE": 1})
    processes.stop_all()  # provisioners first (reverse order), so none recreates what cleanup removes
