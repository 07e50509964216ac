"""What only the local runtime has to get right: sessions, pid reuse, state files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port_range, wait_for_port, wait_until

from shared.config import load_config
from shared.runtime import RuntimeFailure, placeholder
from shared.runtime.local import DEFAULT_COMMAND, LocalRuntime


def runtime_for(tmp_path, **env) -> LocalRuntime:
    base = {
        "ENGINE_RUNTIME": "local",
        "ENGINE_STATE_DIR": str(tmp_path / "engines"),
        "ENGINE_PORT_RANGE": "47000-47009",
    }
    return LocalRuntime(load_config({**base, **env}))


@pytest.mark.parametrize("runtime_tier", ["local"], indirect=True)
async def test_engines_run_in_their_own_session_and_are_described_by_a_state_file(runtime_tier):
    runtime = runtime_tier.make()
    spec = await runtime.create()

    state = json.loads((runtime._dir / f"{spec.container_name}.json").read_text())

    assert os.getsid(state["pid"]) == state["pid"]  # a Ctrl-C on the provisioner does not reach it
    assert state["port"] == spec.port and state["name"] == spec.container_name
    assert state["cache_dir"] == spec.cache_dir == str(runtime._dir / spec.container_name / "cache")
    assert f"--port {spec.port}" in state["command"]


async def test_a_reused_pid_is_never_taken_for_an_engine_nor_killed(tmp_path):
    runtime = runtime_for(tmp_path)
    runtime._dir.mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # The state file of an engine that died while we were down; its pid now belongs to someone else.
        entry = {
            "pid": stranger.pid,
            "port": 47003,
            "name": "acestream-1",
            "cache_dir": "/nonexistent",
            "command": "x --port 47003",
            "started_at": 0.0,
        }
        (runtime._dir / "acestream-1.json").write_text(json.dumps(entry))

        assert await runtime.list_managed() == []
        assert await runtime.get("local-47003") is None
        await runtime.remove(placeholder("local-47003", "local"))
        assert stranger.poll() is None  # never signalled
        assert not (runtime._dir / "acestream-1.json").exists()  # but the stale file is gone
    finally:
        stranger.kill()
        stranger.wait()


async def test_the_default_command_is_the_simulator_on_this_interpreter():
    assert DEFAULT_COMMAND.startswith(sys.executable)
    assert "-m deploy.acesim --host {host} --port {port} --cache-dir {cache_dir}" in DEFAULT_COMMAND


@pytest.mark.parametrize("runtime_tier", ["local"], indirect=True)
async def test_engines_listen_on_engine_host_and_carry_the_host_id_while_older_ones_keep_their_ids(runtime_tier):
    # An engine started before ENGINE_HOST and HOST_ID existed: its state file has neither.
    old = await runtime_tier.make().create()
    path = Path(old.cache_dir).parent.with_suffix(".json")
    written_before = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("host", "id_host")}
    path.write_text(json.dumps(written_before))

    # The same host, now one of many: its own address (another loopback one here) and its HOST_ID.
    runtime = runtime_tier.make(ENGINE_HOST="127.0.0.2", HOST_ID="rack-2.eu")
    new = await runtime.create()

    assert (new.host, new.container_id) == ("127.0.0.2", f"local-rack-2_eu-{new.port}")
    await asyncio.to_thread(wait_for_port, new.port, 10, "127.0.0.2")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", new.port), timeout=1).close()  # not on loopback's usual address
    listed = {spec.container_id: spec.host for spec in await runtime.list_managed()}
    assert listed == {old.container_id: "127.0.0.1", new.container_id: "127.0.0.2"}
    assert old.container_id == f"local-{old.port}"  # what the fleet's records already call it
    await runtime.remove(placeholder(old.container_id, "local"))
    assert [spec.container_id for spec in await runtime.list_managed()] == [new.container_id]


async def test_a_command_that_cannot_start_names_itself(tmp_path):
    runtime = runtime_for(tmp_path, ENGINE_COMMAND="/nonexistent/engine --port {port}")
    with pytest.raises(RuntimeFailure, match=r"cannot start acestream-1 with ENGINE_COMMAND '/nonexistent/engine"):
        await runtime.create()
    assert await runtime.list_managed() == []


@pytest.mark.parametrize("runtime_tier", ["local"], indirect=True)
async def test_two_provisioners_sharing_a_state_dir_never_pick_the_same_name_or_port(runtime_tier):
    first, second = runtime_tier.make(), runtime_tier.make()

    specs = await asyncio.gather(*(runtime.create() for runtime in (first, second) for _ in range(3)))

    assert len({s.container_name for s in specs}) == len({s.port for s in specs}) == 6
    assert sorted(s.container_id for s in await first.list_managed()) == sorted(s.container_id for s in specs)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return True
    return state in (b"Z", b"X")


async def test_an_engine_behind_a_wrapper_script_is_adopted_and_stopped_with_its_children(tmp_path):
    """ENGINE_COMMAND runs a shell script that starts the engine (no exec): the port is in no command line
    the runtime launched, and SIGTERM to the shell alone would leave the engine running."""
    wrapper = tmp_path / "engine.sh"
    wrapper.write_text(
        f'#!/bin/sh\n{sys.executable} -m deploy.acesim --port "$ACEORCH_ENGINE_PORT" '
        f'--cache-dir "$ENGINE_CACHE_DIR"\necho engine exited\n'
    )
    wrapper.chmod(0o755)
    first = free_port_range(10)
    env = {"ENGINE_COMMAND": f"sh {wrapper}", "ENGINE_PORT_RANGE": f"{first}-{first + 9}"}
    engines = []
    try:
        runtime = runtime_for(tmp_path, **env)
        spec = await runtime.create()
        await asyncio.to_thread(wait_for_port, spec.port, 20)
        state = json.loads((runtime._dir / f"{spec.container_name}.json").read_text())
        engines = _children_of(state["pid"])
        assert engines, "the wrapper started no engine"

        restarted = runtime_for(tmp_path, **env)  # a restarted provisioner
        assert [s.container_id for s in await restarted.list_managed()] == [spec.container_id]
        assert await restarted.remove_exited() == []  # not taken for dead: nothing deleted
        assert (runtime._dir / f"{spec.container_name}.json").exists()

        await restarted.remove(spec)
        for pid in [state["pid"], *engines]:  # the wrapper and the engine it started
            await wait_until(lambda: _gone(pid), timeout=20, what=f"pid {pid} stopped with its group")
        await runtime.close()
    finally:
        for pid in engines:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


@pytest.mark.parametrize("recorded", ["other start time", "no start time (older state file)"])
async def test_a_state_file_naming_an_unrelated_process_is_neither_adopted_nor_killed(tmp_path, recorded):
    runtime = runtime_for(tmp_path)
    runtime._dir.mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "47005"])  # its command line even names the engine's port
    try:
        await wait_until(lambda: Path(f"/proc/{stranger.pid}/cmdline").read_bytes().startswith(b"sleep"), what="exec")
        entry = {
            "pid": stranger.pid,
            "port": 47005,
            "name": "acestream-1",
            "cache_dir": "/nonexistent",
            "command": "x --port 47005",
            "started_at": time.time() - 3600,
        }  # written an hour ago
        if recorded == "other start time":
            entry["start_time"] = 1  # the process that had this pid started at boot
        (runtime._dir / "acestream-1.json").write_text(json.dumps(entry))

        assert await runtime.list_managed() == []
        assert await runtime.remove_exited() == ["local-47005"]  # a dead engine's file, dropped
        (runtime._dir / "acestream-1.json").write_text(json.dumps(entry))
        await runtime.remove(placeholder("local-47005", "local"))
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()
