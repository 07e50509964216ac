"""Fixtures for the contract tests: the committed document, Node tooling, and a live system."""

from __future__ import annotations

import shutil
import uuid

import pytest
import yaml
from contract_helpers import DOCUMENT, JS_DIR
from support import ROOT, base_env, free_port_range, wait_for_service

from shared import names
from shared.config import load_config
from shared.runtime.local import LocalRuntime


@pytest.fixture(scope="session")
def contract() -> dict:
    """asyncapi.yaml as committed, read by PyYAML (not by our writer)."""
    return yaml.safe_load(DOCUMENT.read_text())


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, once tests/contract/js has its packages (`npm ci --prefix tests/contract/js`)."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node (20+) is not installed: the contract is checked with the AsyncAPI project's parser")
    if not (JS_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail(f"run `npm ci --prefix {JS_DIR.relative_to(ROOT)}` first (deploy/ci_setup.sh does)")
    return found


@pytest.fixture
async def live_system(nats_server, processes, nc, tmp_path):
    """live_system(prober=True, **ENV): state-keeper, prober and a provisioner with local (acesim) engines.

    Engines the provisioner started outlive it (they lead their own sessions); they are
    removed through the same runtime afterwards, whatever happened."""
    first = free_port_range(4)
    env = base_env(
        nats_server.url,
        ENGINE_RUNTIME="local",
        ENGINE_PORT_RANGE=f"{first}-{first + 3}",
        ENGINE_STATE_DIR=str(tmp_path / "engines"),
        ENGINE_POOL=f"contract-{uuid.uuid4().hex[:8]}",
        ENGINE_START_TIMEOUT_S=30,
        MAX_REPLICAS=1,
        MIN_FREE_REPLICAS=0,
    )
    started: list[dict[str, str]] = []

    async def start(prober: bool = True, **overrides: object) -> dict[str, str]:
        full = {**env, **{key: str(value) for key, value in overrides.items()}}
        started.append(full)
        processes.service("state_keeper", full)
        if prober:
            processes.service("prober", full)
        processes.service("provisioner", full)
        await wait_for_service(nc, names.SERVICE_NAME, 1, timeout=60)
        await wait_for_service(nc, names.PROVISIONER_SERVICE, 1, timeout=60)
        return full

    yield start
    processes.stop_all()
    for full in started:
        runtime = LocalRuntime(load_config(full))
        for engine in await runtime.list_managed():
            await runtime.remove(engine)
