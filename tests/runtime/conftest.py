"""Fixtures for runtime tests: a runtime of each kind on its own port range, cleaned up afterwards.

`runtime_tier` yields (kind, config, make) where `make(**env)` builds a fresh
runtime instance — a second instance stands for a restarted provisioner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest
from support import ROOT, free_port_range

from shared.config import load_config
from shared.runtime import make_runtime

PORTS = 10


@pytest.fixture(scope="session")
def acesim_image() -> str:
    """aceorch/acesim:latest, built locally by deploy/images.sh (it skips an up-to-date image)."""
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no Docker Engine ({exc}); run `bash deploy/ci_setup.sh`")
    build = subprocess.run(
        ["bash", "deploy/images.sh", "acesim"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    if build.returncode != 0:
        pytest.fail(f"bash deploy/images.sh acesim failed:\n{build.stdout}\n{build.stderr}")
    return "aceorch/acesim:latest"


class RuntimeTier:
    def __init__(self, kind: str, env: dict[str, str]) -> None:
        self.kind = kind
        self.env = env
        self.first_port = int(env["ENGINE_PORT_RANGE"].split("-")[0])
        self.instances = []

    def make(self, **overrides: object):
        """A new runtime instance (a fresh provisioner, as far as the runtime can tell)."""
        config = load_config({**self.env, **{k: str(v) for k, v in overrides.items()}})
        runtime = make_runtime(config)
        self.instances.append(runtime)
        return runtime

    def cleanup(self) -> None:
        if self.kind == "docker":
            ids = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=aceorch.pool={self.env['ENGINE_POOL']}"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)
            return
        import json
        from pathlib import Path

        for path in Path(self.env["ENGINE_STATE_DIR"]).glob("*.json"):
            entry = json.loads(path.read_text())
            try:
                cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes()
            except OSError:
                continue
            if str(entry["port"]).encode() in cmdline:
                os.killpg(entry["pid"], signal.SIGKILL)


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def runtime_tier(request, tmp_path):
    first = free_port_range(PORTS)
    env = {
        "ENGINE_RUNTIME": request.param,
        "ENGINE_PORT_RANGE": f"{first}-{first + PORTS - 1}",
        "ENGINE_STATE_DIR": str(tmp_path / "engines"),
        "ENGINE_POOL": f"test-{uuid.uuid4().hex[:10]}",
    }
    if request.param == "docker":
        env |= {"ENGINE_IMAGE": request.getfixturevalue("acesim_image"), "DOCKER_NETWORK": "host"}
    tier = RuntimeTier(request.param, env)
    yield tier
    for runtime in tier.instances:
        await runtime.close()
    tier.cleanup()
