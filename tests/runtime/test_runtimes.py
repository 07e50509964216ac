"""Both runtimes against real engines: local acesim processes and acesim containers on Docker."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from shared.engine_client import new_client, probe
from shared.runtime import LABEL_MANAGED, LABEL_NAME, LABEL_POOL, LABEL_PORT, RuntimeFailure


async def answers(spec, timeout: float = 30.0) -> bool:
    async with new_client() as client:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if (await probe(client, spec.host, spec.port, 1.0)).ok:
                return True
            await asyncio.sleep(0.1)
    return False


async def test_created_engines_answer_and_carry_their_labels(runtime_tier):
    runtime = runtime_tier.make()

    first, second = await asyncio.gather(runtime.create(), runtime.create())

    assert {first.container_name, second.container_name} <= {f"acestream-{n}" for n in range(1, 20)}
    assert first.container_name != second.container_name and first.port != second.port
    for spec in (first, second):
        assert await answers(spec)
        assert spec.runtime == runtime_tier.kind and spec.host == "127.0.0.1"
        assert spec.labels[LABEL_MANAGED] == "true"
        assert spec.labels[LABEL_NAME] == spec.container_name
        assert spec.labels[LABEL_PORT] == str(spec.port)
        assert spec.labels[LABEL_POOL] == runtime_tier.env["ENGINE_POOL"]
        assert runtime.owns(spec.labels)
    assert not runtime.owns({**first.labels, "aceorch.scope": "elsewhere"})
    assert {s.container_id for s in await runtime.list_managed()} == {first.container_id, second.container_id}


async def test_a_new_runtime_instance_finds_the_engines_and_never_reuses_their_ports(runtime_tier):
    before = runtime_tier.make()
    old = [await before.create(), await before.create()]

    after = runtime_tier.make()  # what a restarted provisioner sees
    found = await after.list_managed()
    new = await after.create()

    assert sorted((s.container_id, s.container_name, s.port) for s in found) == sorted(
        (s.container_id, s.container_name, s.port) for s in old
    )
    assert await after.get(old[0].container_id) == old[0]
    assert new.port not in {s.port for s in old}
    assert new.container_name not in {s.container_name for s in old}
    assert await answers(new)


async def test_exec_shell_measures_and_empties_the_engine_cache(runtime_tier):
    runtime = runtime_tier.make()
    spec = await runtime.create()
    assert await answers(spec)

    written = await runtime.exec_shell(spec, 'head -c 50000 /dev/zero > "$ENGINE_CACHE_DIR/chunk" && echo done')
    measured = await runtime.exec_shell(spec, f"du -sb {spec.cache_dir}")
    emptied = await runtime.exec_shell(spec, f"rm -rf {spec.cache_dir}/* && ls -A {spec.cache_dir} | wc -l")
    failed = await runtime.exec_shell(spec, "echo oops >&2; exit 3")

    assert (written.exit_code, written.output.strip()) == (0, "done")
    assert int(measured.output.split()[0]) >= 50000
    assert (emptied.exit_code, emptied.output.strip()) == (0, "0")
    assert (failed.exit_code, failed.output.strip()) == (3, "oops")


async def test_exec_shell_is_bounded_by_its_timeout(runtime_tier):
    runtime = runtime_tier.make()
    spec = await runtime.create()
    with pytest.raises(RuntimeFailure, match=spec.container_name):
        await runtime.exec_shell(spec, "sleep 5", timeout_s=0.5)


async def test_remove_stops_the_engine_frees_its_name_and_is_idempotent(runtime_tier):
    runtime = runtime_tier.make()
    spec = await runtime.create()
    assert await answers(spec)

    await runtime.remove(spec)
    await runtime.remove(spec)

    assert await runtime.list_managed() == []
    assert await runtime.get(spec.container_id) is None
    assert not await asyncio.to_thread(still_exists, runtime_tier, spec)
    assert (await runtime.create()).container_name == spec.container_name  # lowest free name again


async def test_a_killed_engine_is_reported_died_and_a_removed_one_is_not(runtime_tier):
    runtime = runtime_tier.make()
    victim, removed = await runtime.create(), await runtime.create()
    assert await answers(victim) and await answers(removed)
    events = runtime.events()
    first_event = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.5)  # the event stream is open

    await runtime.remove(removed)
    await asyncio.to_thread(kill_behind_its_back, runtime_tier, victim)

    event = await asyncio.wait_for(first_event, 30)
    assert (event.kind, event.container_id) == ("died", victim.container_id)
    assert [s.container_id for s in await runtime.list_managed()] == []
    assert await runtime.remove_exited() == [victim.container_id]  # what the dead engine left behind
    await events.aclose()


async def test_a_port_held_by_another_program_is_skipped(runtime_tier):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", runtime_tier.first_port))
        squatter.listen()
        spec = await runtime_tier.make().create()
    assert spec.port == runtime_tier.first_port + 1
    assert await answers(spec)


async def test_the_command_template_is_used(runtime_tier):
    if runtime_tier.kind == "docker":
        command = "--port {port} --host 127.0.0.1 --cache-dir /tmp/{name}-cache"
    else:
        command = f"sh -c 'exec {sys.executable} -m deploy.acesim --port {{port}} --cache-dir {{cache_dir}}/{{name}}'"
    runtime = runtime_tier.make(ENGINE_COMMAND=command)
    spec = await runtime.create()
    assert await answers(spec)

    async with new_client() as client:
        state = (await client.get(f"http://{spec.host}:{spec.port}/__sim/state")).json()
    if runtime_tier.kind == "docker":
        expected = f"/tmp/{spec.container_name}-cache"
    else:
        expected = f"{spec.cache_dir}/{spec.container_name}"
    assert state["cache_dir"] == expected
    await runtime.remove(spec)
    assert await runtime.list_managed() == []
    assert not await asyncio.to_thread(still_exists, runtime_tier, spec)


async def test_an_unknown_template_field_is_named(runtime_tier):
    runtime = runtime_tier.make(ENGINE_COMMAND="--port {prot}")
    with pytest.raises(RuntimeFailure, match=r"unknown field 'prot'"):
        await runtime.create()


def still_exists(tier, spec) -> bool:
    """Asked of docker / the process table, not of the runtime under test."""
    if tier.kind == "docker":
        return subprocess.run(["docker", "inspect", spec.container_id], capture_output=True).returncode == 0
    return any(spec.cache_dir.encode() in cmdline(pid) for pid in os.listdir("/proc") if pid.isdigit())


def cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def kill_behind_its_back(tier, spec) -> None:
    if tier.kind == "docker":
        subprocess.run(["docker", "kill", spec.container_id], check=True, capture_output=True, timeout=30)
    else:
        import json
        import os
        import signal
        from pathlib import Path

        entry = json.loads((Path(tier.env["ENGINE_STATE_DIR"]) / f"{spec.container_name}.json").read_text())
        os.kill(entry["pid"], signal.SIGKILL)


async def test_engines_listen_and_are_listed_at_engine_host_even_after_the_setting_changes(runtime_tier):
    """On many hosts an engine must be reachable at the host's own address (ENGINE_HOST), not loopback;
    an engine keeps the address it was made with, so a restart with another setting never misplaces it."""
    spec = await runtime_tier.make(ENGINE_HOST="127.0.0.2").create()

    assert spec.host == "127.0.0.2"
    assert await answers(spec)
    with socket.socket() as sock:  # nothing of it on 127.0.0.1
        assert sock.connect_ex(("127.0.0.1", spec.port)) != 0
    [listed] = await runtime_tier.make(ENGINE_HOST="127.0.0.1").list_managed()
    assert (listed.container_id, listed.host, listed.port) == (spec.container_id, "127.0.0.2", spec.port)
