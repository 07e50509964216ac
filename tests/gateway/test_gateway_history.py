"""Fleet history and events through real gateways, a real state-keeper and real NATS (issue 14).

Intervals are scaled down (HISTORY_INTERVAL_S=0.5); what is checked is the
stored stream itself: one sample per interval, whichever replica wrote it.
"""

from __future__ import annotations

from datetime import datetime

import httpx
import msgspec
from support import create_open_layout, wait_until

from shared import names
from shared.schemas import HistorySample

INTERVAL_S = 0.5


async def stored_samples(nc) -> list[HistorySample]:
    """Every sample in ACE_HISTORY, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(names.HISTORY_STREAM)
    samples = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(names.HISTORY_STREAM, seq)
        except Exception:  # aged out between the info and the get
            continue
        samples.append(msgspec.json.decode(msg.data, type=HistorySample))
    return samples


async def wait_for_samples(nc, count: int, after: int = 0) -> list[HistorySample]:
    async def enough():
        samples = [s for s in await stored_samples(nc) if s.epoch > after]
        return samples if len(samples) >= count else None

    return await wait_until(enough, timeout=30, interval=0.2, what=f"{count} history samples")


def assert_one_per_interval(samples: list[HistorySample]) -> None:
    epochs = [s.epoch for s in samples]
    assert len(epochs) == len(set(epochs)), f"duplicate samples: {epochs}"
    assert epochs == list(range(epochs[0], epochs[0] + len(epochs))), f"gaps: {epochs}"


async def test_two_replicas_write_one_sample_per_interval_even_when_one_is_killed(make_stack, nc):
    stack = await make_stack(HISTORY_INTERVAL_S=INTERVAL_S)
    second_url, second = await stack.start_gateway()
    first = await wait_for_samples(nc, 6)
    stack.gateway.kill()  # SIGKILL: no goodbye, its epoch markers just stop
    await wait_for_samples(nc, 6, after=first[-1].epoch)
    second.kill()
    samples = await stored_samples(nc)
    assert_one_per_interval(samples)
    assert all(s.interval_s == INTERVAL_S and s.at.timestamp() == s.epoch * INTERVAL_S for s in samples)

    # A full restart (NATS too, while no gateway runs): a new gateway reads the history back.
    stack.nats_server.restart()
    url, _ = await stack.start_gateway()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:

        async def restored():
            reply = (await http.get("/api/history", params={"range": "1h"})).json()
            return reply if sum(p["samples"] for p in reply["points"]) >= len(samples) else None

        reply = await wait_until(restored, timeout=20, what="history after restart")
        assert reply["range"] == "1h" and reply["step_s"] == 10.0  # 1h in at most 360 points
        assert datetime.fromisoformat(reply["points"][0]["at"]) <= samples[0].at

        bad = await http.get("/api/history", params={"range": "2d"})
        assert bad.status_code == 400
        assert "1h, 6h, 24h" in bad.json()["error"] and "'2d'" in bad.json()["error"]
        schema = (await http.get("/openapi.json")).json()
        assert {"/api/history", "/api/events"} <= set(schema["paths"])
    # Stopped while its NATS runs: the restarted server was started after it and stops first.
    stack.state_keeper.stop()


async def test_history_is_kept_for_its_max_age_only(make_stack, nc, nats_server):
    max_age_s = 3.6  # HISTORY_MAX_AGE_H=0.001
    # The stream is admin's (`aceorch setup` with the setting), not the gateway's: its role only binds to it.
    create_open_layout(nats_server.url, HISTORY_MAX_AGE_H="0.001")
    stack = await make_stack(HISTORY_INTERVAL_S=INTERVAL_S, HISTORY_MAX_AGE_H=0.001)
    info = await nc.jetstream().stream_info(names.HISTORY_STREAM)
    assert info.config.max_age == max_age_s
    first = (await wait_for_samples(nc, 1))[0].epoch
    kept = int(max_age_s / INTERVAL_S)

    async def aged_out():
        samples = await stored_samples(nc)
        return samples if samples and samples[-1].epoch >= first + 2 * kept and samples[0].epoch > first else None

    samples = await wait_until(aged_out, timeout=30, interval=0.2, what="old samples gone from the stream")
    assert len(samples) <= kept + 3, [s.epoch for s in samples]
    assert_one_per_interval(samples)
    points = (await stack.http.get("/api/history", params={"range": "1h"})).json()["points"]
    assert 0 < sum(p["samples"] for p in points) <= (max_age_s + 2) / INTERVAL_S


async def test_events_list_a_hung_engines_flip_with_its_error_newest_first(make_stack):
    stack = await make_stack()
    ports = stack.start_engines(2)
    ids = [await stack.register(port, name=f"acestream-{n}") for n, port in enumerate(ports, 1)]
    await stack.start_health_checks()
    await stack.healthy(*ids)
    async with httpx.AsyncClient() as engine_http:
        await engine_http.get(f"http://127.0.0.1:{ports[1]}/__sim/fault?mode=hang")

    async def flipped():
        events = (await stack.http.get("/api/events")).json()
        return events if any(e["kind"] == "health.unhealthy" for e in events) else None

    events = await wait_until(flipped, timeout=20, what="the hung engine's flip in /api/events")
    texts = [e["text"] for e in events]
    assert texts[0] == "acestream-2 unhealthy: timeout after 0.5 s, 2 failures in a row", texts
    assert events[0]["container_id"] == ids[1] and events[0]["level"] == "error"
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    assert f"acestream-2 registered at 127.0.0.1:{ports[1]}" in texts

    mine = (await stack.http.get("/api/events", params={"container_id": ids[1], "limit": 2})).json()
    assert [e["text"] for e in mine] == texts[:1] + [t for t in texts[1:] if t.startswith("acestream-2")][:1]
    assert (await stack.http.get("/api/events", params={"limit": 0})).status_code == 400

    # engine.demand notices are listed too (the gateway's role must be granted the subscription).
    await stack.nc.publish(names.ENGINE_DEMAND, b'{"content_key": "news"}')

    async def demanded():
        return any(e["kind"] == "engine.demand" for e in (await stack.http.get("/api/events")).json())

    await wait_until(demanded, timeout=10, what="the engine.demand notice in /api/events")
    assert "permission denied" not in stack.gateway.log()
    probes = (await stack.http.get(f"/api/engines/{ids[1]}/probes")).json()
    assert probes and all(set(p) == {"at", "latency_ms", "ok"} for p in probes) and probes[-1]["ok"] is False

    # A gateway started now replays the stored events and reads the flip from the record.
    url, _ = await stack.start_gateway()
    async with httpx.AsyncClient(base_url=url, timeout=10) as fresh:

        async def replayed():
            listed = [e["text"] for e in (await fresh.get("/api/events")).json()]
            flip = "acestream-2 unhealthy: timeout after 0.5 s, "  # how many failures in a row: more by now
            registered = f"acestream-1 registered at 127.0.0.1:{ports[0]}"
            return listed if any(t.startswith(flip) for t in listed) and registered in listed else None

        await wait_until(replayed, timeout=20, what="events on a fresh gateway")
