"""Viewers of one channel share one engine for as long as any of them plays it."""

from __future__ import annotations

from keeper_helpers import get_engine, publish, register_healthy
from support import request_json, wait_until

from shared import names
from shared.schemas import StreamEnded, StreamStarted


async def _playing(nc, expected: list[str]) -> bool:
    # stream.list answers from the same view that feeds the sharing index.
    body, _ = await request_json(nc, names.STREAM_LIST, {"status": "started"})
    return sorted(s["stream_id"] for s in body["streams"]) == expected


async def _lists(nc, container_id: str, expected: list[str]) -> bool:
    record, _ = await get_engine(nc, container_id)
    return sorted(record.get("streams", [])) == expected


async def test_a_channel_keeps_its_engine_when_one_of_its_viewers_leaves(start_keepers, bus, nc):
    """Two viewers of `news` on one engine, the first leaves: a third viewer joins that engine,
    not a second P2P session for the channel elsewhere (issue 20, item 2)."""
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
    await wait_until(lambda: _playing(nc, ["v1"]), what="v1 playing")
    second, _ = await request_json(nc, names.ENGINE_SELECT, {"content_key": "news"})
    assert second["engine"]["container_id"] == engine and second["shared"] is True
    await publish(
        bus,
        names.STREAM_STARTED,
        StreamStarted(stream_id="v2", container_id=engine, content_key="news", reservation_id=second["reservation_id"]),
    )
    await wait_until(lambda: _playing(nc, ["v1", "v2"]), what="v1 and v2 playing")

    await publish(bus, names.STREAM_ENDED, StreamEnded(stream_id="v1", container_id=engine, reason="player left"))
    await wait_until(lambda: _playing(nc, ["v2"]), what="only v2 playing")
    await wait_until(lambda: _lists(nc, engine, ["v2"]), what=f"{engine} lists only v2")

    third, _ = await request_json(nc, names.ENGINE_SELECT, {"content_key": "news"})
    assert third["engine"]["container_id"] == engine, "the other engine has less load: only sharing picks this one"
    assert third["shared"] is True
