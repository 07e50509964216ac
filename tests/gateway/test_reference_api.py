"""The reference orchestrator's endpoints that acexy needs, in its shapes: status, provisioning, event aliases.

No provisioner runs here: status says so and provisioning refuses with a
`detail` that tells the proxy to wait (tests/provisioner/test_reference_provision.py
covers the provisioner's side).
"""

from __future__ import annotations

from support import wait_until

from shared.policy.provisioning import NO_PROVISIONER_ETA_S

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
NO_KEY = {"Authorization": ""}  # overrides the key a stack's client may send
SLOTS = 2


def assert_status_shape(body: dict) -> None:
    assert set(body) == {"status", "vpn", "provisioning", "capacity"}
    assert body["status"] in ("healthy", "degraded", "unhealthy")
    assert body["vpn"] == {"connected": False}
    provisioning = body["provisioning"]
    assert set(provisioning) == {"can_provision", "blocked_reason", "blocked_reason_details"}
    assert isinstance(provisioning["can_provision"], bool)
    details = provisioning["blocked_reason_details"]
    if provisioning["can_provision"]:
        assert provisioning["blocked_reason"] is None and details is None
    else:
        assert isinstance(provisioning["blocked_reason"], str) and provisioning["blocked_reason"]
        assert set(details) == {"code", "message", "recovery_eta_seconds", "should_wait"}
        assert isinstance(details["code"], str) and isinstance(details["message"], str)
        assert type(details["recovery_eta_seconds"]) is int and isinstance(details["should_wait"], bool)
    capacity = body["capacity"]
    assert set(capacity) == {"total", "used", "available"}
    assert all(type(v) is int for v in capacity.values())
    assert capacity["total"] == capacity["used"] + capacity["available"]


def assert_failure_shape(reply) -> dict:
    detail = reply.json()["detail"]
    assert set(detail) == {"code", "message", "recovery_eta_seconds", "should_wait", "can_retry"}
    assert type(detail["recovery_eta_seconds"]) is int
    assert isinstance(detail["should_wait"], bool) and isinstance(detail["can_retry"], bool)
    if detail["should_wait"]:
        assert reply.headers["Retry-After"] == str(detail["recovery_eta_seconds"])
    return detail


async def status(stack) -> dict:
    reply = await stack.http.get("/orchestrator/status", headers=NO_KEY)  # acexy polls it without the key
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert_status_shape(body)
    return body


async def test_status_counts_slots_and_says_no_provisioner_answers(make_stack):
    stack = await make_stack(
        API_KEY=KEY,
        MAX_STREAMS_PER_ENGINE=SLOTS,
        HEALTH_CHECK_INTERVAL_S=30,
        HEALTH_CHECK_TIMEOUT_S=5,
        HEALTH_RECHECK_S=5,
    )
    stack.http.headers.update(AUTH)
    first, second = stack.start_engines(2)
    a, b = await stack.register(first), await stack.register(second)
    empty = await status(stack)
    assert empty["capacity"] == {"total": 0, "used": 0, "available": 0}  # registered, not yet healthy
    assert empty["status"] == "degraded"
    await stack.report_health(a, True)
    await stack.report_health(b, True)
    await stack.healthy(a, b)

    body = await status(stack)
    assert body["capacity"] == {"total": 2 * SLOTS, "used": 0, "available": 2 * SLOTS}
    assert body["status"] == "healthy"
    assert body["provisioning"]["can_provision"] is False
    details = body["provisioning"]["blocked_reason_details"]
    assert details["code"] == "no_provisioner" and details["should_wait"] is True
    assert details["recovery_eta_seconds"] == NO_PROVISIONER_ETA_S

    started = await stack.http.post("/api/v1/events/stream_started", json=reference_start(first, "ch1", "sess1"))
    assert started.status_code == 202, started.text
    await wait_until(lambda: _used(stack, 1), timeout=10, what="one slot used")
    ended = await stack.http.post("/api/v1/events/stream_ended", json={"stream_id": "acexy-1", "reason": "done"})
    assert ended.status_code == 202 and ended.json()["stream_id"] == "acexy-1"
    await wait_until(lambda: _used(stack, 0), timeout=10, what="the slot free again")

    # Provisioning, asked for as acexy does, refuses with when to ask again.
    body = {"labels": {}, "env": {}}
    assert (await stack.http.post("/provision/acestream", json=body, headers=NO_KEY)).status_code == 401
    reply = await stack.http.post("/provision/acestream", json=body)
    assert reply.status_code == 503
    detail = assert_failure_shape(reply)
    assert detail["code"] == "no_provisioner" and detail["should_wait"] is True and detail["can_retry"] is True
    assert detail["recovery_eta_seconds"] == NO_PROVISIONER_ETA_S


async def test_bodies_openapi_and_engine_items_fit_the_reference(make_stack):
    stack = await make_stack()
    reply = await stack.http.post("/provision/acestream", json={"labels": {}, "image": "x"})
    assert reply.status_code == 422 and "image" in reply.json()["error"]
    reply = await stack.http.post("/provision/acestream", json={"labels": {"a": 1}})
    assert reply.status_code == 422 and "labels" in reply.json()["error"]

    paths = (await stack.http.get("/openapi.json")).json()["paths"]
    for path in (
        "/orchestrator/status",
        "/provision/acestream",
        "/api/v1/events/stream_started",
        "/api/v1/events/stream_ended",
        "/events/stream_started",
        "/events/stream_ended",
    ):
        assert path in paths, path
    assert "security" not in paths["/orchestrator/status"]["get"]

    (port,) = stack.start_engines(1)
    container_id = await stack.register(port)
    listed = (await stack.http.get("/engines")).json()
    assert [e["forwarded"] for e in listed] == [False]  # no VPN port forwarding (yet)
    assert (await stack.http.get(f"/engines/{container_id}")).json()["forwarded"] is False


async def test_external_runtime_refuses_to_provision_and_says_waiting_does_not_help(make_stack):
    stack = await make_stack(ENGINE_RUNTIME="external")
    body = await status(stack)
    assert body["provisioning"]["blocked_reason_details"]["code"] == "provisioning_disabled"
    reply = await stack.http.post("/provision/acestream", json={"labels": {}, "env": {}})
    assert reply.status_code == 503 and "Retry-After" not in reply.headers
    detail = assert_failure_shape(reply)
    assert detail["code"] == "provisioning_disabled" and detail["should_wait"] is False and detail["can_retry"] is False


def reference_start(port: int, key: str, session: str) -> dict:
    """acexy's stream_started body (its container id is the proxy's own, unknown to us)."""
    return {
        "container_id": "acexy-proxy-container",
        "engine": {"host": "127.0.0.1", "port": port},
        "stream": {"key_type": "content_id", "key": key},
        "session": {"playback_session_id": session, "stat_url": "", "command_url": "", "is_live": 1},
        "labels": {"stream_id": "acexy-1"},
    }


async def _used(stack, count: int) -> bool:
    return (await status(stack))["capacity"]["used"] == count
