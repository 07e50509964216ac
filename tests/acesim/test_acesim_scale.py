"""Many engines in one process (`--ports A-B`)."""

from __future__ import annotations

import random
import time

import httpx
import pytest
from acesim_harness import StartSim, wait_until_answering

STATUS_PATH = "/server/api?api_version=3&method=get_status"


def test_fifty_engines_all_answer_with_their_own_state(start_sim: StartSim, client: httpx.Client) -> None:
    sim = start_sim(50)
    for port in sim.ports:
        assert client.get(sim.url(STATUS_PATH, port)).json()["result"]["playlist_loaded"] is True
        state = client.get(sim.url("/__sim/state", port)).json()
        assert state["port"] == port
        assert state["cache_dir"] == str(sim.cache_dir / str(port))
    assert sim.log().count("acesim: engine listening on 127.0.0.1:") == 50


def test_sessions_are_per_engine(start_sim: StartSim, client: httpx.Client) -> None:
    sim = start_sim(3)
    a, b, _ = sim.ports
    client.get(sim.url("/ace/getstream?id=x&format=json", a))
    assert len(client.get(sim.url("/__sim/state", a)).json()["sessions"]) == 1
    assert client.get(sim.url("/__sim/state", b)).json()["sessions"] == []


def test_control_another_engine_through_port(start_sim: StartSim, client: httpx.Client) -> None:
    sim = start_sim(3)
    target, control, bystander = sim.ports
    reply = client.get(sim.url(f"/__sim/fault?mode=refuse&port={target}", control))
    assert reply.json() == {"ok": True, "mode": "refuse"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url(STATUS_PATH, target), timeout=2.0)
    assert client.get(sim.url(f"/__sim/state?port={target}", control)).json()["fault"]["mode"] == "refuse"
    assert client.get(sim.url(STATUS_PATH, bystander)).status_code == 200

    client.get(sim.url(f"/__sim/fault?mode=none&port={target}", control))
    wait_until_answering(sim, [target], timeout_s=5.0)


def test_crash_in_multi_mode_stops_only_that_engine(start_sim: StartSim, client: httpx.Client) -> None:
    sim = start_sim(3)
    victim, survivor, _ = sim.ports
    client.get(sim.url("/ace/getstream?id=x&format=json", victim))
    assert client.get(sim.url("/__sim/fault?mode=crash", victim)).json()["ok"] is True
    time.sleep(0.2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url(STATUS_PATH, victim), timeout=2.0)
    assert sim.proc.poll() is None
    assert client.get(sim.url(STATUS_PATH, survivor)).status_code == 200
    state = client.get(sim.url(f"/__sim/state?port={victim}", survivor)).json()
    assert state["sessions"] == []
    # A crash is for good: it can't be cleared.
    assert client.get(sim.url(f"/__sim/fault?mode=none&port={victim}", survivor)).status_code == 409


def test_thousand_engines_in_one_process(start_sim: StartSim, client: httpx.Client) -> None:
    started = time.monotonic()
    sim = start_sim(1000, wait=False)
    # Engines start in port order, so the last one answering means all listen.
    wait_until_answering(sim, sim.ports[-1:], timeout_s=15.0)
    for port in random.sample(sim.ports, 20):
        reply = client.get(sim.url(STATUS_PATH, port))
        assert reply.json()["result"]["playlist_loaded"] is True
    assert time.monotonic() - started < 15
    assert sim.log().count("acesim: engine listening on") == 1000
