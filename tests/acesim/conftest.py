"""Fixtures that run acesim as a real subprocess on free loopback ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# Make `deploy.acesim` (repo root) and `acesim_harness` (this folder) importable
# whatever pytest's import mode or invocation (`pytest` vs `python -m pytest`).
for _path in (Path(__file__).resolve().parents[2], Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from acesim_harness import (  # noqa: E402  # after the sys.path set-up above
    REPO_ROOT,
    SimProcess,
    StartSim,
    free_port_range,
    wait_until_answering,
)


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[StartSim]:
    """Start acesim subprocesses; every one is stopped when the test ends."""
    started: list[SimProcess] = []

    def start(
        count: int = 1,
        *extra_args: str,
        wait_ports: list[int] | None = None,
        wait_timeout_s: float = 10.0,
        wait: bool = True,
    ) -> SimProcess:
        first = free_port_range(count)
        ports = list(range(first, first + count))
        cache_dir = tmp_path / f"cache-{first}"
        log_path = tmp_path / f"acesim-{first}.log"
        where = ["--port", str(first)] if count == 1 else ["--ports", f"{first}-{ports[-1]}"]
        # stderr to a file: 1,000 start-up lines would fill a pipe and block acesim.
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "deploy.acesim", *where, "--cache-dir", str(cache_dir), *extra_args],
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        sim = SimProcess(proc, ports, cache_dir, log_path)
        started.append(sim)
        if wait:
            wait_until_answering(sim, wait_ports or ports, wait_timeout_s)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def engine(start_sim: StartSim) -> SimProcess:
    return start_sim()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as http:
        yield http
