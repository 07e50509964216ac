"""The docker runtime under a stuck daemon, with containers left half-made, and execs that overrun.

The stuck daemon is a real socket server that accepts connections and never
answers (a hostile endpoint, not a model of Docker). Everything else runs on
the real Docker Engine with acesim containers on host networking.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until

from shared.config import load_config
from shared.runtime import ExecStillRunning, RuntimeFailure
from shared.runtime.base import LABEL_SCOPE, managed_labels
from shared.runtime.docker import DockerRuntime

BOUND_S = 2.0  # the client timeout these tests give the runtime


# ---------------------------------------------------------------- a daemon that never answers


@pytest.fixture
def silent_daemon(tmp_path) -> Iterator[Path]:
    """A unix socket that accepts every connection and never sends a byte."""
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(64)
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield path
    stopping.set()
    server.close()
    for conn in held:
        conn.close()
    thread.join(5)


class Ticker:
    """Proves the event loop keeps running: the longest gap between ticks."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest_gap_s = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            self.longest_gap_s = max(self.longest_gap_s, now - last)
            self.ticks += 1
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_a_stuck_daemon_never_blocks_the_loop_and_fails_calls_within_the_bound(silent_daemon, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{silent_daemon}")
    config = load_config({"ENGINE_RUNTIME": "docker", "ENGINE_POOL": "stuck"})
    runtime = DockerRuntime(config, timeout_s=BOUND_S)
    try:
        with Ticker() as ticker:
            # The janitor, reaper and provisioner ask this for every record: it must never wait on the daemon.
            for _ in range(3):
                assert runtime.owns({LABEL_SCOPE: "docker:any:stuck"}) is False
            started = time.monotonic()
            with pytest.raises(RuntimeFailure, match=f"cannot reach the Docker Engine within {BOUND_S:g}s"):
                await asyncio.wait_for(runtime.list_managed(), 30)  # generous: the bound is BOUND_S
            failed_after_s = time.monotonic() - started
            with pytest.raises(RuntimeFailure, match="cannot reach the Docker Engine"):
                await asyncio.wait_for(runtime.remove_exited(), 30)
        assert failed_after_s >= BOUND_S * 0.9  # it did wait for the daemon, for the bound and no longer
        assert ticker.ticks > 10
        # No call ran on the loop: a blocked loop shows as a gap as long as the client timeout.
        assert ticker.longest_gap_s < BOUND_S / 2, f"event loop blocked for {ticker.longest_gap_s:.2f}s"
    finally:
        await runtime.close()


# ---------------------------------------------------------------- real containers


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check).stdout.strip()


def daemon_scope(pool: str) -> str:
    return f"docker:{docker('info', '-f', '{{.ID}}')}:{pool}"


def create_left_behind(tier, name: str, port: int, *extra: str) -> str:
    """A container with our labels that was created and never started (`docker create`)."""
    labels = managed_labels(name, port, daemon_scope(tier.env["ENGINE_POOL"]), tier.env["ENGINE_POOL"])
    label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    return docker(
        "create",
        "--name",
        f"{name}-{tier.env['ENGINE_POOL']}",
        "--network",
        "host",
        *label_args,
        *extra,
        "aceorch/acesim:latest",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--cache-dir",
        "/tmp",
    )


def status(container_id: str) -> str | None:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Status}}", container_id], capture_output=True, text=True, timeout=60
    )
    return out.stdout.strip() if out.returncode == 0 else None


@pytest.mark.docker
@pytest.mark.parametrize("runtime_tier", ["docker"], indirect=True)
async def test_a_created_container_left_behind_holds_its_name_until_abandoned_then_is_removed(runtime_tier):
    runtime = DockerRuntime(load_config(runtime_tier.env), timeout_s=BOUND_S)
    runtime_tier.instances.append(runtime)
    port = runtime_tier.first_port + 5
    container_id = create_left_behind(runtime_tier, "acestream-7", port)
    assert status(container_id) == "created"

    # Young, it may be another process's create about to start it: left alone, counted (listed),
    # its name and port taken.
    assert await runtime.remove_exited() == []
    assert status(container_id) == "created"
    assert container_id in {s.container_id for s in await runtime.list_managed()}
    spec = await runtime.create()
    assert spec.container_name != "acestream-7" and spec.port != port

    async def removed() -> bool:  # once older than 2 × the client timeout
        return await runtime.remove_exited() == [container_id]

    await wait_until(removed, timeout=60, interval=0.5, what="the abandoned created container removed")
    assert status(container_id) is None
    assert [s.container_id for s in await runtime.list_managed()] == [spec.container_id]


@pytest.mark.docker
@pytest.mark.parametrize("runtime_tier", ["docker"], indirect=True)
async def test_a_paused_engine_is_listed_and_removable(runtime_tier):
    runtime = runtime_tier.make()
    spec = await runtime.create()
    docker("pause", spec.container_id)
    assert spec.container_id in {s.container_id for s in await runtime.list_managed()}
    assert await runtime.get(spec.container_id) is not None  # the reaper's view: still there to remove
    await runtime.remove(spec)
    assert status(spec.container_id) is None


def processes(container_id: str) -> str:
    return docker("top", container_id, "-o", "pid,args", check=False)


@pytest.mark.docker
@pytest.mark.parametrize("runtime_tier", ["docker"], indirect=True)
async def test_an_exec_that_overruns_is_killed_inside_the_container(runtime_tier):
    runtime = runtime_tier.make()
    spec = await runtime.create()
    with pytest.raises(RuntimeFailure, match="did not finish within 2s; it was stopped"):
        await runtime.exec_shell(spec, "sleep 97 & sleep 98; echo never", timeout_s=2)
    # When we say it is over, it is: nothing of it still runs (the clean it stands for is not still deleting).
    left = processes(spec.container_id)
    assert "deploy.acesim" in left and "sleep 9" not in left, left
    result = await runtime.exec_shell(spec, "echo fine; exit 3", timeout_s=10)
    assert (result.exit_code, result.output.strip()) == (3, "fine")


@pytest.fixture(scope="module")
def image_without_timeout(acesim_image, tmp_path_factory) -> Iterator[str]:
    """acesim without a `timeout` command: an exec in it cannot be bounded from inside."""
    tag = "aceorch/acesim-test-no-timeout:latest"
    context = tmp_path_factory.mktemp("no-timeout")
    (context / "Dockerfile").write_text(f"FROM {acesim_image}\nRUN rm -f /usr/bin/timeout /bin/timeout\n")
    docker("build", "-q", "-t", tag, str(context))
    yield tag
    docker("rmi", "-f", tag, check=False)


@pytest.mark.docker
@pytest.mark.parametrize("runtime_tier", ["docker"], indirect=True)
async def test_an_exec_that_cannot_be_stopped_is_reported_still_running(runtime_tier, image_without_timeout):
    runtime = runtime_tier.make(ENGINE_IMAGE=image_without_timeout)
    spec = await runtime.create()
    with pytest.raises(ExecStillRunning, match="still running after 6s"):
        await runtime.exec_shell(spec, "sleep 96", timeout_s=1)
