"""What only the docker runtime has to get right: how config becomes a container."""

from __future__ import annotations

import subprocess

import pytest

from shared.config import load_config
from shared.runtime import RuntimeFailure
from shared.runtime.docker import REMOVING_MEMORY_S, DockerRuntime


def arguments(**env) -> dict:
    """The container the runtime would create for acestream-3 on port 40003 (no daemon needed)."""
    config = load_config({"ENGINE_RUNTIME": "docker", "ENGINE_POOL": "p1", **env})
    return DockerRuntime(config, client=object())._run_arguments("acestream-3", 40003)


def test_host_network_passes_the_port_in_the_acesim_command():
    args = arguments(DOCKER_NETWORK="host", ENGINE_CACHE_DIR="/cache")
    assert args["network_mode"] == "host" and "ports" not in args
    assert args["command"] == ["--port", "40003", "--host", "127.0.0.1", "--cache-dir", "/cache"]
    assert args["labels"]["aceorch.port"] == "40003" and args["labels"]["aceorch.name"] == "acestream-3"
    assert args["labels"]["aceorch.pool"] == "p1" and args["labels"]["aceorch.managed"] == "true"
    assert args["environment"]["ACEORCH_ENGINE_PORT"] == "40003"


def test_bridge_publishes_the_host_port_on_loopback_and_keeps_the_image_command():
    args = arguments()
    assert args["ports"] == {"6878/tcp": ("127.0.0.1", 40003)}
    assert "command" not in args and "network_mode" not in args and "network" not in args


def test_a_named_network_joins_it_and_a_template_gets_the_inside_port():
    args = arguments(
        DOCKER_NETWORK="aceorch", ENGINE_COMMAND="--http-port {port} --name {name}", ENGINE_MEMORY_LIMIT="512m"
    )
    assert args["network"] == "aceorch"
    assert args["command"] == ["--http-port", "6878", "--name", "acestream-3"]
    assert args["mem_limit"] == "512m"


def test_an_unknown_template_field_fails_naming_it():
    with pytest.raises(RuntimeFailure, match="unknown field 'prot'"):
        arguments(ENGINE_COMMAND="--port {prot}")


@pytest.mark.docker
@pytest.mark.parametrize("runtime_tier", ["docker"], indirect=True)
async def test_the_memory_limit_is_applied(runtime_tier):
    spec = await runtime_tier.make(ENGINE_MEMORY_LIMIT="64m").create()
    memory = subprocess.run(
        ["docker", "inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.NetworkMode}}", spec.container_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert memory == [str(64 * 1024 * 1024), "host"]


@pytest.mark.docker
@pytest.mark.parametrize("runtime_tier", ["docker"], indirect=True)
async def test_a_missing_image_is_named_and_nothing_is_pulled(runtime_tier):
    runtime = runtime_tier.make(ENGINE_IMAGE="aceorch/does-not-exist:never")
    with pytest.raises(RuntimeFailure, match="aceorch/does-not-exist:never not found"):
        await runtime.create()
    assert await runtime.list_managed() == []


def test_removals_are_remembered_for_their_die_events_and_then_forgotten():
    """A reaper removes engines for months and never reads events: what it remembers must not grow."""
    runtime = DockerRuntime(load_config({"ENGINE_RUNTIME": "docker"}), client=object())
    runtime._note_removing("old", now=1000.0)
    runtime._note_removing("recent", now=1000.0 + REMOVING_MEMORY_S - 1)
    assert set(runtime._removing) == {"old", "recent"}  # a die event for either is still ours
    runtime._note_removing("new", now=1000.0 + REMOVING_MEMORY_S + 1)
    assert set(runtime._removing) == {"recent", "new"}


def test_engine_host_is_where_the_engine_listens_or_is_published_and_is_kept_in_a_label():
    host_network = arguments(DOCKER_NETWORK="host", ENGINE_HOST="10.0.0.7", ENGINE_CACHE_DIR="/cache")
    assert host_network["command"] == ["--port", "40003", "--host", "10.0.0.7", "--cache-dir", "/cache"]
    assert host_network["labels"]["aceorch.address"] == "10.0.0.7"
    bridge = arguments(ENGINE_HOST="10.0.0.7")
    assert bridge["ports"] == {"6878/tcp": ("10.0.0.7", 40003)}
