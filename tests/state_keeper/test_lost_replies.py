"""A write whose reply never came may have applied (DESIGN §9): the state-keeper re-reads
instead of answering 503.

The keeper's Store and micro service run in this process against a real nats-server. The
server is frozen (SIGSTOP) between computing an engine change and sending its write, so the
write waits in the socket and the keeper's KV request times out; once the timeout has
happened the server is thawed (SIGCONT) and applies the write, whose reply is now too late.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import msgspec
import nats
import pytest
from support import request_json, wait_until

from services.state_keeper.endpoints import Endpoints
from services.state_keeper.stats import Stats
from services.state_keeper.store import Store
from shared import names
from shared.bus import Bus
from shared.config import load_config
from shared.schemas import EngineRecord, encode, utcnow

KV_TIMEOUT_S = 1.0  # the keeper's KV request timeout here; callers wait far longer


def freeze(pid: int, timeout_s: float = 10.0) -> None:
    """SIGSTOP and wait until every thread has stopped: on a busy machine a server thread
    already awake went on to answer a write sent a millisecond after the signal."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while not all(_state(task) in ("T", "t") for task in Path(f"/proc/{pid}/task").iterdir()):
        if time.monotonic() > deadline:
            raise AssertionError(f"nats-server {pid} did not stop within {timeout_s}s")
        time.sleep(0.0002)  # synchronous on purpose: nothing may be sent before the server is still


def _state(task: Path) -> str:
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "T"  # a thread that has exited does not answer either


class FreezingStore(Store):
    """A real Store that, once armed, freezes the nats-server right after its next engine change
    is computed (before the write goes out) and counts the writes that then time out."""

    def __init__(self, bus: Bus, server_pid: int) -> None:
        super().__init__(bus, stream_ttl_s=600)
        self.server_pid = server_pid
        self.armed = False
        self.timeouts = 0
        self.failures: list[str] = []  # other errors while frozen, to explain a test that hangs

    async def update_engine(self, container_id, change, **kwargs):
        def freezing(record):
            after = change(record)
            if self.armed and after is not record:
                self.armed = False
                freeze(self.server_pid)
            return after

        try:
            return await super().update_engine(container_id, freezing, **kwargs)
        except TimeoutError:
            self.timeouts += 1
            raise
        except Exception as exc:
            self.failures.append(repr(exc))
            raise


async def _expected_while_frozen(_exc: Exception) -> None:
    """The views' watches time out re-creating their consumers while the server is frozen: expected."""


@pytest.fixture
async def keeper(bus, nats_server):
    """(store, endpoints) of an in-process state-keeper whose KV requests time out after KV_TIMEOUT_S."""
    pid = nats_server.process.pid
    conn = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=_expected_while_frozen
    )
    js = conn.jetstream(timeout=KV_TIMEOUT_S)
    keeper_bus = Bus(
        nc=conn,
        js=js,
        engines=await js.key_value(names.ENGINES_BUCKET),
        streams=await js.key_value(names.STREAMS_BUCKET),
        leases=await js.key_value(names.LEASES_BUCKET),
    )
    store = FreezingStore(keeper_bus, pid)
    await store.start()
    config = load_config({"NATS_URL": nats_server.url, "MAX_STREAMS_PER_ENGINE": "1", "CLAIM_TTL_S": "600"})
    endpoints = Endpoints(store, config, Stats())
    service = await endpoints.start()
    try:
        yield store, endpoints
    finally:
        os.kill(pid, signal.SIGCONT)  # never leave the server frozen
        await service.stop()
        await endpoints.finish()
        await store.stop()
        await conn.close()


async def _engine(bus, store, container_id: str) -> EngineRecord:
    record = EngineRecord(
        container_id=container_id,
        container_name=container_id,
        host="127.0.0.1",
        port=6878,
        runtime="local",
        health_status="healthy",
        last_health_check=utcnow(),
        created_at=utcnow(),
    )
    await bus.engines.put(container_id, encode(record))
    await wait_until(lambda: store.engines.get(container_id) is not None, what=f"{container_id} in the view")
    return record


async def _stored(bus, container_id: str) -> EngineRecord:
    return msgspec.json.decode((await bus.engines.get(container_id)).value, type=EngineRecord)


async def _through_a_lost_reply(nc, store, nats_server, subject: str, payload: dict) -> tuple[dict, dict]:
    """Send the request with the keeper's next engine write frozen until it has timed out."""
    store.armed = True
    reply = asyncio.get_running_loop().create_task(request_json(nc, subject, payload, timeout=30))
    try:
        await wait_until(
            lambda: store.timeouts >= 1 or store.failures or reply.done(),
            timeout=30,
            what="the keeper's write timed out",
        )
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)
    return await reply


async def test_select_whose_reservation_reply_was_lost_answers_the_reservation(keeper, bus, nc, nats_server):
    store, _endpoints = keeper
    await _engine(bus, store, "e1")
    demand = await nc.subscribe(names.ENGINE_DEMAND)

    body, headers = await _through_a_lost_reply(nc, store, nats_server, names.ENGINE_SELECT, {"content_key": "news"})

    assert store.timeouts >= 1, f"the write must really have timed out for this test to mean anything: {body}"
    assert "Nats-Service-Error-Code" not in headers, body
    assert body["engine"]["container_id"] == "e1"
    stored = await _stored(bus, "e1")
    assert list(stored.reservations) == [body["reservation_id"]], "exactly the answered reservation, none stranded"
    # The engine had one slot: a 503 would have published demand before its reply.
    await nc.flush()
    assert demand.pending_msgs == 0


async def test_claim_whose_reply_was_lost_answers_the_claim_and_a_retry_gets_it_again(keeper, bus, nc, nats_server):
    store, _endpoints = keeper
    await _engine(bus, store, "e1")
    ask = {"container_id": "e1", "purpose": "clean", "holder": "janitor-1"}

    body, headers = await _through_a_lost_reply(nc, store, nats_server, names.ENGINE_CLAIM, ask)

    assert store.timeouts >= 1, body
    assert "Nats-Service-Error-Code" not in headers, body
    stored = await _stored(bus, "e1")
    assert stored.claim is not None and stored.claim.claim_id == body["claim_id"] and stored.state == "cleaning"
    # A janitor that did see a failure and asks again is given its own claim, not "busy: claimed by janitor-1".
    again, again_headers = await request_json(nc, names.ENGINE_CLAIM, ask)
    assert "Nats-Service-Error-Code" not in again_headers, again
    assert again["claim_id"] == body["claim_id"]
    released, _ = await request_json(nc, names.ENGINE_RELEASE, {"container_id": "e1", "claim_id": body["claim_id"]})
    assert released == {"ok": True}
    assert (await _stored(bus, "e1")).state == "active"
