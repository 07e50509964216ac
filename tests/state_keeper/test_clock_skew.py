"""Reporters' clocks cannot freeze an engine's health or stretch a tombstone (issue 20, item 3)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from keeper_helpers import consumer_drained, get_engine, publish, register_healthy
from nats.js.errors import KeyNotFoundError
from support import keeper_stats, request_json, wait_until

from services.cli.auth import create_layout
from shared import names
from shared.config import load_config
from shared.lease import epoch_of
from shared.schemas import EngineHealth, EngineRegistered, EngineRemoved, StreamEnded, StreamStarted, utcnow

FAR_FUTURE = datetime(2099, 1, 1, tzinfo=UTC)


async def _health(nc, container_id: str) -> str | None:
    record, _ = await get_engine(nc, container_id)
    return record.get("health_status")


async def test_a_report_from_the_future_is_refused_and_counted(start_keepers, bus, nc):
    await start_keepers(1)
    await register_healthy(bus, nc, "e1")
    await publish(bus, names.ENGINE_HEALTH, EngineHealth(container_id="e1", ok=True, checked_at=FAR_FUTURE))
    await wait_until(lambda: consumer_drained(bus), what="consumer drained")
    assert (await keeper_stats(nc)).get("rejected", {}).get("clock_skew") == 1
    record, _ = await get_engine(nc, "e1")
    assert record["last_health_check"] < "2099"
    await _hang_and_leave_selection(bus, nc, "e1")


async def test_even_an_accepted_report_from_the_future_cannot_freeze_health(start_keepers, bus, nc):
    """Let the 2099 report through (a skew allowing it): reports are ordered by their event's
    sequence, so the engine hanging afterwards still takes it out of selection."""
    await start_keepers(1, MAX_CLOCK_SKEW_S="1e10")
    await register_healthy(bus, nc, "e1")
    await publish(bus, names.ENGINE_HEALTH, EngineHealth(container_id="e1", ok=True, checked_at=FAR_FUTURE))
    await wait_until(lambda: consumer_drained(bus), what="consumer drained")
    record, _ = await get_engine(nc, "e1")
    assert record["last_health_check"].startswith("2099")
    await _hang_and_leave_selection(bus, nc, "e1")


async def _hang_and_leave_selection(bus, nc, container_id: str) -> None:
    for _ in range(2):  # HEALTH_FAIL_THRESHOLD ordinary failed probes
        await publish(
            bus,
            names.ENGINE_HEALTH,
            EngineHealth(container_id=container_id, ok=False, checked_at=utcnow(), error="timeout"),
        )
    await wait_until(lambda: _equals(_health(nc, container_id), "unhealthy"), what=f"{container_id} unhealthy")
    body, headers = await request_json(nc, names.ENGINE_SELECT, {})
    assert headers.get("Nats-Service-Error-Code") == "503" and body["error"] == "no_capacity"


async def test_an_end_stamped_in_1970_keeps_its_tombstone_past_housekeeping(start_keepers, bus, nc):
    """A past `ended_at` must not expire the tombstone at once: a late start would revive the stream."""
    await start_keepers(1, RESERVATION_TTL_S="2")  # housekeeping every second; STREAM_TTL_S stays 3600
    await register_healthy(bus, nc, "e1")
    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="s1", container_id="e1"))
    await publish(
        bus,
        names.STREAM_ENDED,
        StreamEnded(stream_id="s1", container_id="e1", ended_at=datetime(1970, 1, 1, tzinfo=UTC)),
    )
    await wait_until(lambda: consumer_drained(bus), what="consumer drained")
    # Housekeeping claims each epoch before it sweeps: once epoch n+2 is claimed, sweep n+1 (begun
    # after the end was applied) has finished.
    after = epoch_of(time.time(), 1.0) + 2
    await wait_until(lambda: _exists(bus.leases, f"epoch.state-keeper-tidy.{after}"), what="two housekeeping rounds")

    await publish(bus, names.STREAM_STARTED, StreamStarted(stream_id="s1", container_id="e1"))  # a late duplicate
    await wait_until(lambda: consumer_drained(bus), what="consumer drained")
    body, _ = await request_json(nc, names.STREAM_LIST, {})
    assert [(s["stream_id"], s["status"]) for s in body["streams"]] == [("s1", "ended")]
    record, _ = await get_engine(nc, "e1")
    assert record["streams"] == []


async def _exists(kv, key: str) -> bool:
    try:
        await kv.get(key)
    except KeyNotFoundError:
        return False
    return True


async def _equals(pending, expected) -> bool:
    return await pending == expected


async def test_an_events_stream_made_again_does_not_freeze_records(start_keepers, bus, nc, nats_server):
    """Sequences restart when ACE_EVENTS is deleted and created again; records keep the old ones."""
    [keeper] = await start_keepers(1)
    await register_healthy(bus, nc, "e1")
    for _ in range(20):
        await publish(bus, names.ENGINE_HEALTH, EngineHealth(container_id="e1", ok=True, checked_at=utcnow()))
    await publish(bus, names.ENGINE_REGISTERED, EngineRegistered(container_id="g2", host="127.0.0.1", port=7002))
    await publish(bus, names.ENGINE_REMOVED, EngineRemoved(container_id="g2"))
    await wait_until(lambda: consumer_drained(bus), what="consumer drained")
    assert keeper.stop() == 0
    await bus.js.delete_stream(names.EVENTS_STREAM)

    # Made again (by admin, as `aceorch setup` does: a keeper with a role key only binds): sequences start at 1.
    await create_layout(load_config({"NATS_URL": nats_server.url}))
    await start_keepers(1)
    await publish(bus, names.ENGINE_REGISTERED, EngineRegistered(container_id="g2", host="127.0.0.1", port=7002))
    await _hang_and_leave_selection(bus, nc, "e1")
    await wait_until(lambda: consumer_drained(bus), what="consumer drained")
    record, headers = await get_engine(nc, "g2")
    assert "Nats-Service-Error-Code" not in headers and record["port"] == 7002, "the old tombstone was dropped"
