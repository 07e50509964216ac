"""The gateway's HTTP event API while the only state-keeper is down (issue 16).

A proxy reports through the gateway; the events are stored in JetStream and the
state-keeper applies them when it is back. Real nats-server, state-keeper,
gateway and acesim.
"""

from __future__ import annotations

from support import wait_for_service

from shared import names


async def test_stream_events_posted_while_the_keeper_is_down_are_applied_when_it_is_back(stack):
    [port] = stack.start_engines(1)
    cid = await stack.register(port)
    started = {"stream_id": "gw-before", "container_id": cid, "content_key": "chan-1", "key_type": "content_id"}
    assert (await stack.http.post("/events/stream_started", json=started)).status_code == 202
    await stack.engine(cid, lambda r: r["streams"] == ["gw-before"], what="gw-before on the engine")

    stack.state_keeper.kill()  # SIGKILL: no state-keeper at all now
    ended = await stack.http.post(
        "/events/stream_ended", json={"stream_id": "gw-before", "container_id": cid, "reason": "client left"}
    )
    assert ended.status_code == 202, ended.text
    assert ended.json()["stream_id"] == "gw-before"
    during = {"stream_id": "gw-during", "container_id": cid, "content_key": "chan-2", "key_type": "content_id"}
    assert (await stack.http.post("/events/stream_started", json=during)).status_code == 202
    assert (
        await stack.http.post("/events/stream_ended", json={"stream_id": "gw-during", "container_id": cid})
    ).status_code == 202

    stack.state_keeper = stack.processes.service("state_keeper", stack.env)
    await wait_for_service(stack.nc, names.SERVICE_NAME, 1, timeout=30)
    record = await stack.engine(cid, lambda r: r["streams"] == [], timeout=30, what="both streams off the engine")
    assert record["streams"] == []
    ended_ids = {s["stream_id"]: s for s in (await stack.http.get("/streams", params={"status": "ended"})).json()}
    assert {"gw-before", "gw-during"} <= set(ended_ids), ended_ids
    assert ended_ids["gw-before"]["reason"] == "client left"
