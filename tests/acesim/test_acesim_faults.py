"""Faults on demand through /__sim/, and process-level behaviour."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest
from acesim_harness import REPO_ROOT, SimProcess, StartSim, free_port_range, wait_until_answering

STATUS_PATH = "/server/api?api_version=3&method=get_status"
ENGINE_VERSION = {"code": 3021100, "platform": "linux", "version": "3.2.11"}
STATUS_BODY = {"result": {"playlist_loaded": True, "version": ENGINE_VERSION}}


def set_fault(engine: SimProcess, client: httpx.Client, query: str, port: int | None = None) -> dict:
    reply = client.get(engine.url(f"/__sim/fault?{query}", port))
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_hang_times_out_while_sim_answers_then_none_clears(engine: SimProcess, client: httpx.Client) -> None:
    assert set_fault(engine, client, "mode=hang") == {"ok": True, "mode": "hang"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(engine.url(STATUS_PATH), timeout=1.0)
    state = client.get(engine.url("/__sim/state")).json()
    assert state["fault"]["mode"] == "hang"
    assert set_fault(engine, client, "mode=none") == {"ok": True, "mode": "none"}
    assert client.get(engine.url(STATUS_PATH)).json() == STATUS_BODY


def test_slow_delays_answers(engine: SimProcess, client: httpx.Client) -> None:
    set_fault(engine, client, "mode=slow&ms=600")
    started = time.monotonic()
    assert client.get(engine.url(STATUS_PATH)).json() == STATUS_BODY
    assert time.monotonic() - started >= 0.55
    started = time.monotonic()
    client.get(engine.url("/__sim/state"))
    assert time.monotonic() - started < 0.5  # /__sim/ is never slowed
    assert client.get(engine.url("/__sim/state")).json()["fault"] == {"mode": "slow", "ms": 600, "code": 500, "s": 5.0}


def test_error_replies_with_the_chosen_code(engine: SimProcess, client: httpx.Client) -> None:
    set_fault(engine, client, "mode=error&code=503")
    reply = client.get(engine.url(STATUS_PATH))
    assert reply.status_code == 503
    assert reply.json() == {"error": "simulated error"}
    set_fault(engine, client, "mode=error")
    assert client.get(engine.url(STATUS_PATH)).status_code == 500


def test_badjson_is_200_with_an_unparseable_body(engine: SimProcess, client: httpx.Client) -> None:
    set_fault(engine, client, "mode=badjson")
    reply = client.get(engine.url(STATUS_PATH))
    assert reply.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.content)
    assert client.get(engine.url("/__sim/state")).json()["fault"]["mode"] == "badjson"


def test_refuse_closes_the_port_then_listens_again(engine: SimProcess, client: httpx.Client) -> None:
    set_fault(engine, client, "mode=refuse&for_s=1.5")
    with pytest.raises(httpx.ConnectError):
        httpx.get(engine.url(STATUS_PATH), timeout=2.0)
    wait_until_answering(engine, [engine.port], timeout_s=5.0)
    assert client.get(engine.url("/__sim/state")).json()["fault"]["mode"] == "none"


def test_crash_exits_the_single_engine_process_with_1(engine: SimProcess, client: httpx.Client) -> None:
    assert set_fault(engine, client, "mode=crash") == {"ok": True, "mode": "crash"}
    assert engine.proc.wait(5) == 1


def test_bad_fault_requests_are_rejected(engine: SimProcess, client: httpx.Client) -> None:
    for query in (
        "mode=explode",
        "",
        "mode=slow&ms=x",
        "mode=error&code=99",
        "mode=refuse&for_s=-1",
        "mode=prebuf&s=-1",
        "mode=prebuf&s=soon",
    ):
        reply = client.get(engine.url(f"/__sim/fault?{query}"))
        assert reply.status_code == 400, query
        assert reply.json()["ok"] is False
    assert client.get(engine.url("/__sim/fault?mode=hang&port=1")).status_code == 404


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_cleanly(engine: SimProcess, client: httpx.Client, signum: int) -> None:
    client.get(engine.url("/ace/getstream?id=x&format=json"))
    engine.proc.send_signal(signum)
    assert engine.proc.wait(5) == 0


def test_startup_delay_postpones_listening(start_sim: StartSim) -> None:
    sim = start_sim(1, "--startup-delay", "1.0", wait=False)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url(STATUS_PATH), timeout=1.0)
    wait_until_answering(sim, sim.ports, timeout_s=5.0)
    assert "engine listening on 127.0.0.1:" in sim.log()


def test_runs_as_a_directory_script_with_a_temp_cache(tmp_path) -> None:
    port = free_port_range(1)
    log_path = tmp_path / "acesim.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "deploy" / "acesim"), "--port", str(port)],
            cwd=tmp_path,  # not the repo: the directory must run on its own
            stderr=log_file,
        )
    sim = SimProcess(proc, [port], tmp_path, log_path)
    try:
        wait_until_answering(sim, [port], timeout_s=10.0)
        cache_dir = httpx.get(sim.url("/__sim/state")).json()["cache_dir"]
    finally:
        assert sim.stop() == 0
    assert f"engine listening on 127.0.0.1:{port} (cache {cache_dir})" in sim.log()
    assert not (tmp_path / cache_dir).exists()  # its own temp cache is removed on exit


def test_busy_port_fails_fast(engine: SimProcess) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.acesim", "--port", str(engine.port)],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=10,
    )
    assert proc.returncode == 1
    assert b"cannot listen" in proc.stderr
