"""Run acesim as a real subprocess on free loopback ports (test helpers)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import support

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port_range(count: int) -> int:
    """First port of `count` consecutive free ports, never handed out before in this run and
    from this pytest-xdist worker's own share (tests/support.py)."""
    return support.free_port_range(count)


@dataclass
class SimProcess:
    proc: subprocess.Popen[bytes]
    ports: list[int]
    cache_dir: Path
    log_path: Path

    @property
    def port(self) -> int:
        return self.ports[0]

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://{HOST}:{port or self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def wait_until_answering(sim: SimProcess, ports: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(ports)
    with httpx.Client(timeout=1.0) as client:
        while pending:
            if sim.proc.poll() is not None:
                pytest.fail(f"acesim exited with {sim.proc.returncode}:\n{sim.log()}")
            if time.monotonic() > deadline:
                waiting = pending[:5]
                pytest.fail(f"acesim ports {waiting}… not answering after {timeout_s}s:\n{sim.log()[-2000:]}")
            try:
                client.get(sim.url("/server/api?api_version=3&method=get_status", pending[0]))
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            pending.pop(0)


StartSim = Callable[..., SimProcess]  # signature: see start_sim in conftest.py
