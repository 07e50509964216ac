"""The whole flow through a real state-keeper: register, health, select, start, end."""

from __future__ import annotations

import json
import signal
from datetime import datetime

from keeper_helpers import get_engine, publish, register_healthy
from support import request_json, wait_until

from shared import names
from shared.schemas import StreamEnded, StreamStarted, utcnow


async def test_select_start_end_flow(start_keepers, bus, nc):
    await start_keepers(1)
    idle = await nc.subscribe(names.ENGINE_IDLE)
    await register_healthy(bus, nc, "e1")

    selection, headers = await request_json(nc, names.ENGINE_SELECT, {"content_key": "ch1", "key_type": "content_id"})
    assert "Nats-Service-Error-Code" not in headers
    assert selection["engine"]["container_id"] == "e1" and selection["shared"] is False
    assert selection["reservation_id"] in selection["engine"]["reservations"]

    await publish(
        bus,
        names.STREAM_STARTED,
        StreamStarted(
            stream_id="s1",
            container_id="e1",
            content_key="ch1",
            key_type="content_id",
            playback_session_id="p1",
            reservation_id=selection["reservation_id"],
        ),
    )
    record = await wait_until(lambda: _engine_with(nc, "e1", lambda r: r["streams"] == ["s1"]), what="stream on e1")
    assert record["last_stream_usage"] is not None
    assert record["reservations"] == {}, "the stream consumed its reservation"

    await publish(bus, names.STREAM_ENDED, StreamEnded(stream_id="s1", reason="player left"))
    note = await idle.next_msg(timeout=10)
    assert json.loads(note.data) == {"container_id": "e1"}
    streams, _ = await request_json(nc, names.STREAM_LIST, {"status": "ended"})
    [stream] = streams["streams"]
    assert stream["stream_id"] == "s1" and stream["reason"] == "player left" and stream["ended_at"]
    record, _ = await get_engine(nc, "e1")
    assert record["streams"] == [] and record["idle_since"] is not None


async def test_stream_resolves_engine_by_host_and_port(start_keepers, bus, nc):
    await start_keepers(1)
    await register_healthy(bus, nc, "e1", port=7001)
    await register_healthy(bus, nc, "e2", port=7002)
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="s9", host="127.0.0.1", port=7002))
    await wait_until(lambda: _engine_with(nc, "e2", lambda r: r["streams"] == ["s9"]), what="stream on e2")


async def test_viewers_of_one_channel_share_an_engine(start_keepers, bus, nc):
    await start_keepers(1)
    for cid in ("e1", "e2"):
        await register_healthy(bus, nc, cid)
    first, _ = await request_json(nc, names.ENGINE_SELECT, {"content_key": "news"})
    engine = first["engine"]["container_id"]
    await publish(
        bus,
        names.STREAM_STARTED,
        StreamStarted(stream_id="v1", container_id=engine, content_key="news", reservation_id=first["reservation_id"]),
    )
    await wait_until(lambda: _engine_with(nc, engine, lambda r: r["streams"] == ["v1"]), what="v1 recorded")
    # Sharing is decided from the replica's stream view, which stream.list answers from.
    await wait_until(lambda: _started_streams(nc, {"v1"}), what="v1 in the keeper's stream view")
    second, _ = await request_json(nc, names.ENGINE_SELECT, {"content_key": "news"})
    assert second["engine"]["container_id"] == engine and second["shared"] is True
    other, _ = await request_json(nc, names.ENGINE_SELECT, {"content_key": "sports"})
    assert other["engine"]["container_id"] != engine and other["shared"] is False


async def test_reservations_expire_on_their_own(start_keepers, bus, nc):
    await start_keepers(1, RESERVATION_TTL_S="1", MAX_STREAMS_PER_ENGINE="1")
    await register_healthy(bus, nc, "e1")
    first, _ = await request_json(nc, names.ENGINE_SELECT, {})
    full, headers = await request_json(nc, names.ENGINE_SELECT, {})
    assert headers["Nats-Service-Error-Code"] == "503" and full["error"] == "no_capacity"
    assert 0 < full["retry_after_s"] <= 1.0
    # The keeper reads the same clock after this, and a reservation lapses at its expiry instant.
    expires = datetime.fromisoformat(first["reservation_expires_at"])
    await wait_until(lambda: utcnow() >= expires, what="the first reservation's expiry")
    again, headers = await request_json(nc, names.ENGINE_SELECT, {})
    assert "Nats-Service-Error-Code" not in headers and again["engine"]["container_id"] == "e1"
    assert first["reservation_id"] not in again["engine"]["reservations"]


async def test_no_capacity_publishes_demand(start_keepers, nc):
    await start_keepers(1)
    demand = await nc.subscribe(names.ENGINE_DEMAND)
    body, headers = await request_json(nc, names.ENGINE_SELECT, {"content_key": "ch7"})
    assert headers["Nats-Service-Error-Code"] == "503"
    assert body["code"] == 503 and body["retry_after_s"] > 0
    assert json.loads((await demand.next_msg(timeout=5)).data) == {"content_key": "ch7"}


async def test_claim_blocks_selection_and_release_restores_it(start_keepers, bus, nc):
    await start_keepers(1)
    await register_healthy(bus, nc, "e1")
    claim, _ = await request_json(nc, names.ENGINE_CLAIM, {"container_id": "e1", "purpose": "clean", "holder": "t"})
    record, _ = await get_engine(nc, "e1")
    assert record["state"] == "cleaning"
    _, headers = await request_json(nc, names.ENGINE_SELECT, {})
    assert headers["Nats-Service-Error-Code"] == "503"
    _, headers = await request_json(nc, names.ENGINE_CLAIM, {"container_id": "e1", "purpose": "reap", "holder": "t"})
    assert headers["Nats-Service-Error-Code"] == "409"
    released, _ = await request_json(nc, names.ENGINE_RELEASE, {"container_id": "e1", "claim_id": claim["claim_id"]})
    assert released == {"ok": True}
    selection, headers = await request_json(nc, names.ENGINE_SELECT, {})
    assert selection["engine"]["container_id"] == "e1"
    _, headers = await request_json(nc, names.ENGINE_CLAIM, {"container_id": "e1", "purpose": "reap", "holder": "t"})
    assert headers["Nats-Service-Error-Code"] == "409", "a live reservation makes the engine busy"


async def test_engine_list_filters_and_sorts(start_keepers, bus, nc):
    await start_keepers(1)
    for cid in ("e3", "e1", "e2"):
        await register_healthy(bus, nc, cid)
    await request_json(nc, names.ENGINE_CLAIM, {"container_id": "e2", "purpose": "reap", "holder": "t"})
    listed, _ = await request_json(nc, names.ENGINE_LIST, {})
    assert [e["container_id"] for e in listed["engines"]] == ["e1", "e2", "e3"]
    draining, _ = await request_json(nc, names.ENGINE_LIST, {"state": "draining"})
    assert [e["container_id"] for e in draining["engines"]] == ["e2"]
    healthy, _ = await request_json(nc, names.ENGINE_LIST, {"health_status": "unhealthy"})
    assert healthy["engines"] == []


async def test_removed_engine_ends_its_streams(start_keepers, bus, nc):
    await start_keepers(1)
    await register_healthy(bus, nc, "e1")
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="s1", container_id="e1"))
    await wait_until(lambda: _engine_with(nc, "e1", lambda r: r["streams"] == ["s1"]), what="stream recorded")
    await publish(bus, names.ENGINE_REMOVED, {"container_id": "e1", "reason": "idle"})
    await wait_until(lambda: _gone(nc, "e1"), what="e1 removed")
    streams, _ = await request_json(nc, names.STREAM_LIST, {"container_id": "e1"})
    assert [(s["stream_id"], s["status"]) for s in streams["streams"]] == [("s1", "ended")]
    assert streams["streams"][0]["reason"].startswith("engine_removed")


async def test_sigterm_stops_cleanly(start_keepers, nc):
    [keeper] = await start_keepers(1)
    assert keeper.stop(signal.SIGTERM) == 0
    assert "state-keeper stopped" in keeper.log()


async def _engine_with(nc, container_id, predicate):
    record, headers = await get_engine(nc, container_id)
    return record if "Nats-Service-Error-Code" not in headers and predicate(record) else None


async def _gone(nc, container_id):
    _, headers = await get_engine(nc, container_id)
    return headers.get("Nats-Service-Error-Code") == "404"


async def test_ended_streams_expire_after_stream_ttl(start_keepers, bus, nc):
    await start_keepers(1, STREAM_TTL_S="1", RESERVATION_TTL_S="2")
    await register_healthy(bus, nc, "e1")
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="old", container_id="e1"))
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="live", container_id="e1"))
    await publish(bus, names.STREAM_ENDED, StreamEnded(stream_id="old"))

    async def stream_ids():
        body, _ = await request_json(nc, names.STREAM_LIST, {})
        return sorted(s["stream_id"] for s in body["streams"])

    await wait_until(lambda: _equals(stream_ids(), ["live", "old"]), what="both streams recorded")
    await wait_until(lambda: _equals(stream_ids(), ["live"]), timeout=20, what="the ended stream expired")


async def _equals(pending, expected) -> bool:
    return await pending == expected


async def test_housekeeping_takes_ended_streams_off_engines(start_keepers, bus, nc):
    """An end whose engine write never happened (JetStream gave up on the event) is repaired."""
    await start_keepers(1, RESERVATION_TTL_S="2")
    await register_healthy(bus, nc, "e1")
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="s1", container_id="e1"))
    await wait_until(lambda: _engine_with(nc, "e1", lambda r: r["streams"] == ["s1"]), what="stream on e1")

    entry = await bus.streams.get("s1")
    ended = {**json.loads(entry.value), "status": "ended", "ended_at": "2026-01-01T00:00:00Z", "reason": "lost"}
    await bus.streams.update("s1", json.dumps(ended).encode(), last=entry.revision)

    record = await wait_until(
        lambda: _engine_with(nc, "e1", lambda r: r["streams"] == []),
        timeout=20,
        what="housekeeping dropped the ended stream",
    )
    assert record["idle_since"] is not None


async def _started_streams(nc, wanted: set[str]) -> bool:
    body, _ = await request_json(nc, names.STREAM_LIST, {"status": "started"})
    return wanted <= {stream["stream_id"] for stream in body["streams"]}
