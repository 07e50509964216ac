"""Fixtures for state-keeper tests: replicas as real processes, a client Bus, event publishing."""

from __future__ import annotations

import uuid

import pytest

from shared import names
from shared.bus import connect
from shared.config import load_config
from shared.schemas import EngineHealth, EngineRegistered, encode, utcnow
from support import base_env, request_json, wait_for_service, wait_until


@pytest.fixture
def start_keepers(nats_server, processes, nc):
    """start_keepers(n, **ENV) → the processes, once all n answer $SRV.PING."""

    async def start(count: int = 1, **overrides):
        env = base_env(nats_server.url, **overrides)
        started = [processes.service("state_keeper", env) for _ in range(count)]
        await wait_for_service(nc, names.SERVICE_NAME, count)
        return started

    return start


@pytest.fixture
async def bus(nats_server):
    client_bus = await connect(load_config({"NATS_URL": nats_server.url}), "test-client")
    yield client_bus
    await client_bus.close()


async def publish(bus, subject: str, payload, msg_id: str | None = None) -> None:
    data = payload if isinstance(payload, bytes) else encode(payload)
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    await bus.js.publish(subject, data, headers=headers)


async def register_healthy(bus, nc, container_id: str, port: int = 6878, host: str = "127.0.0.1") -> None:
    await publish(bus, names.ENGINE_REGISTERED, EngineRegistered(container_id=container_id, host=host, port=port, runtime="local"))
    await publish(bus, names.ENGINE_HEALTH, EngineHealth(container_id=container_id, ok=True, checked_at=utcnow()))
    await wait_until(
        lambda: engine_status(nc, container_id), what=f"{container_id} healthy", timeout=15
    )


async def engine_status(nc, container_id: str) -> bool:
    body, headers = await request_json(nc, names.ENGINE_GET, {"container_id": container_id})
    return body.get("health_status") == "healthy"


async def get_engine(nc, container_id: str) -> tuple[dict, dict]:
    return await request_json(nc, names.ENGINE_GET, {"container_id": container_id})


async def consumer_drained(bus) -> bool:
    info = await bus.js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0


def new_id(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
