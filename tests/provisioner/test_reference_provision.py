"""A proxy written for the reference orchestrator (acexy) gets engines from ours, in both tiers.

`AcexyLike` does with the gateway what acexy does: polls `/orchestrator/status`,
picks an engine from `/engines` with room, and when every engine is full asks
`POST /provision/acestream`, re-reads `/engines` and plays from the new
engine's `host_http_port`; then reports the stream as acexy does. The player
must get bytes, never a 503, while the pool is below MAX_REPLICAS.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import pytest
from support import free_port, wait_until

KEY = "k3y"
POOL = {"MIN_REPLICAS": 1, "MIN_FREE_REPLICAS": 0, "MAX_REPLICAS": 2, "API_KEY": KEY}
PLAYBACK_BYTES = 4096


@dataclass
class Played:
    status: int  # what the player got: 200 with bytes, or 503 when no engine could be had
    engine_port: int | None = None
    provisioned: dict | None = None
    data: bytes = b""


class AcexyLike:
    def __init__(self, gateway: httpx.AsyncClient, max_streams: int) -> None:
        self.gateway = gateway
        self.max_streams = max_streams
        self.statuses: list[dict] = []

    async def status(self) -> dict:
        reply = await self.gateway.get("/orchestrator/status", headers={"Authorization": ""})
        assert reply.status_code == 200, reply.text
        self.statuses.append(reply.json())
        return reply.json()

    async def play(self, content: str) -> Played:
        status = await self.status()
        engine = await self.engine_with_room()
        provisioned = None
        if engine is None:
            if not status["provisioning"]["can_provision"]:
                return Played(503)
            reply = await self.gateway.post("/provision/acestream", json={"labels": {}, "env": {}})
            if reply.status_code != 200:
                return Played(503, provisioned=reply.json())
            provisioned = reply.json()
            # acexy waits, then re-reads /engines: the new engine must be listed by then.
            listed = (await self.gateway.get("/engines")).json()
            assert provisioned["container_id"] in {e["container_id"] for e in listed}
            engine = {"host": "127.0.0.1", "port": provisioned["host_http_port"]}
        data = await self.watch(engine["port"], content)
        await self.report(engine["port"], content)
        return Played(200, engine["port"], provisioned, data)

    async def engine_with_room(self) -> dict | None:
        for engine in (await self.gateway.get("/engines")).json():
            if engine["health_status"] == "healthy" and len(engine["streams"]) < self.max_streams:
                return engine
        return None

    async def watch(self, port: int, content: str) -> bytes:
        """The engine's getstream in JSON, then some bytes of its playback URL (what the player receives)."""
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as engine:
            session = (await engine.get("/ace/getstream", params={"format": "json", "id": content})).json()["response"]
            self.session = session
            data = b""
            async with engine.stream("GET", session["playback_url"]) as playback:
                assert playback.status_code == 200
                async for chunk in playback.aiter_bytes():
                    data += chunk
                    if len(data) >= PLAYBACK_BYTES:
                        break
            return data

    async def report(self, port: int, content: str) -> None:
        body = {
            "container_id": "acexy-container",
            "engine": {"host": "127.0.0.1", "port": port},
            "stream": {"key_type": "content_id", "key": content},
            "session": {
                "playback_session_id": self.session["playback_session_id"],
                "stat_url": self.session["stat_url"],
                "command_url": self.session["command_url"],
                "is_live": 1,
            },
            "labels": {"stream_id": f"{content}|acexy"},
        }
        reply = await self.gateway.post("/api/v1/events/stream_started", json=body)
        assert reply.status_code == 202, reply.text


@pytest.fixture
async def gateway(system) -> httpx.AsyncClient:
    port = free_port()
    process = system.processes.service("gateway", system.env(GATEWAY_PORT=port, **POOL))
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=90, headers={"Authorization": f"Bearer {KEY}"}, trust_env=False
    )

    async def answers() -> bool:
        assert process.alive(), process.log()
        try:
            return (await client.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(answers, timeout=30, what="gateway")
    yield client
    await client.aclose()


async def test_a_reference_proxy_gets_a_provisioned_engine_until_max_replicas(system, tier, gateway):
    system.provisioner(**POOL)
    await system.healthy(1)
    acexy = AcexyLike(gateway, max_streams=system.settings["MAX_STREAMS_PER_ENGINE"])
    await wait_until(lambda: _can_provision(acexy), timeout=10, what="status: can provision")

    first = await acexy.play("channel-1")
    assert first.status == 200 and len(first.data) >= PLAYBACK_BYTES and first.provisioned is None
    await _wait_used(acexy, 1)

    second = await acexy.play("channel-2")  # every engine full, the pool below MAX_REPLICAS
    assert second.status == 200 and len(second.data) >= PLAYBACK_BYTES, second
    provisioned = second.provisioned
    assert set(provisioned) == {
        "container_id",
        "container_name",
        "host_http_port",
        "container_http_port",
        "container_https_port",
    }
    assert type(provisioned["host_http_port"]) is int and type(provisioned["container_http_port"]) is int
    assert provisioned["container_https_port"] is None
    assert tier.engines()[provisioned["container_id"]] == provisioned["host_http_port"] == second.engine_port
    record = (await gateway.get(f"/engines/{provisioned['container_id']}")).json()
    assert record["health_status"] == "healthy" and record["container_name"] == provisioned["container_name"]
    await _wait_used(acexy, 2)

    # At MAX_REPLICAS: the status says so, and a provision asked anyway is told when to retry.
    full = await acexy.status()
    assert full["capacity"] == {"total": 2, "used": 2, "available": 0} and full["status"] == "degraded"
    details = full["provisioning"]["blocked_reason_details"]
    assert full["provisioning"]["can_provision"] is False and details["code"] == "max_replicas_reached"
    assert details["should_wait"] is True and details["recovery_eta_seconds"] >= 1
    assert (await acexy.play("channel-3")).status == 503
    refused = await gateway.post("/provision/acestream", json={"labels": {}, "env": {}})
    assert refused.status_code == 503
    detail = refused.json()["detail"]
    assert detail["code"] == "max_replicas_reached" and detail["should_wait"] and detail["can_retry"]
    assert refused.headers["Retry-After"] == str(detail["recovery_eta_seconds"])
    assert len(tier.engines()) == 2

    # Every status read while the pool was below MAX_REPLICAS said an engine could be had.
    below = [s for s in acexy.statuses if s["capacity"]["total"] < 2]
    assert below and all(s["provisioning"]["can_provision"] for s in below)


@pytest.mark.parametrize("tier", ["local"], indirect=True)  # the lock is the runtime's neighbour, not its part
async def test_concurrent_provision_requests_never_pass_max_replicas(system, tier, gateway):
    system.provisioner(**POOL)
    await system.healthy(1)
    await wait_until(lambda: _provisioner_answers(gateway), timeout=10, what="status: can provision")
    replies = await asyncio.gather(
        *(gateway.post("/provision/acestream", json={"labels": {}, "env": {}}) for _ in range(3))
    )
    assert sorted(r.status_code for r in replies) == [200, 503, 503]
    assert {r.json()["detail"]["code"] for r in replies if r.status_code == 503} == {"max_replicas_reached"}
    assert len(tier.engines()) == 2


async def _can_provision(acexy: AcexyLike) -> bool:
    return (await acexy.status())["provisioning"]["can_provision"]


async def _provisioner_answers(gateway: httpx.AsyncClient) -> bool:
    return (await gateway.get("/orchestrator/status")).json()["provisioning"]["can_provision"]


async def _wait_used(acexy: AcexyLike, used: int) -> None:
    async def applied() -> bool:
        return (await acexy.status())["capacity"]["used"] == used

    await wait_until(applied, timeout=15, what=f"{used} slot(s) used")
