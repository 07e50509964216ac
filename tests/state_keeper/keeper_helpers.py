"""Helpers for state-keeper tests: publishing events and reading records back."""

from __future__ import annotations

import uuid

from support import request_json, wait_until

from shared import names
from shared.schemas import EngineHealth, EngineRegistered, encode, utcnow


async def publish(bus, subject: str, payload, msg_id: str | None = None) -> None:
    data = payload if isinstance(payload, bytes) else encode(payload)
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    await bus.js.publish(subject, data, headers=headers)


async def register_healthy(bus, nc, container_id: str, port: int = 6878, host: str = "127.0.0.1") -> None:
    await publish(
        bus, names.ENGINE_REGISTERED, EngineRegistered(container_id=container_id, host=host, port=port, runtime="local")
    )
    await publish(bus, names.ENGINE_HEALTH, EngineHealth(container_id=container_id, ok=True, checked_at=utcnow()))
    await wait_until(lambda: engine_status(nc, container_id), what=f"{container_id} healthy", timeout=15)


async def engine_status(nc, container_id: str) -> bool:
    body, headers = await request_json(nc, names.ENGINE_GET, {"container_id": container_id})
    return body.get("health_status") == "healthy"


async def get_engine(nc, container_id: str) -> tuple[dict, dict]:
    return await request_json(nc, names.ENGINE_GET, {"container_id": container_id})


async def consumer_drained(bus) -> bool:
    info = await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def engine_views_caught_up(bus, replicas: int) -> bool:
    """Every state-keeper's engines view has been sent the bucket's latest entry.

    Each view is an ordered watch consumer on the bucket's stream: caught up when there are at
    least `replicas` of them and none has anything pending. A request sent after this holds
    reaches a replica behind those entries on its one connection, so its view has applied them."""
    stream = f"KV_{names.ENGINES_BUCKET}"
    last = (await bus.js.stream_info(stream)).state.last_seq
    watches = await bus.js.consumers_info(stream)
    return len(watches) >= replicas and all(w.num_pending == 0 and w.delivered.stream_seq >= last for w in watches)


def new_id(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
