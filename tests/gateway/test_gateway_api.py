"""The gateway's HTTP API against a real stack: nats-server, state-keeper, gateway, acesim."""

from __future__ import annotations

import asyncio
import time

import httpx
from gateway_stack import HEALTH_BY_HAND, read_sse
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, request_json, wait_until

from shared import names
from shared.schemas import EngineRecord, EngineRegistered, encode

SEED_FIELDS = {
    "container_id",
    "container_name",
    "host",
    "port",
    "health_status",
    "last_health_check",
    "last_stream_usage",
    "streams",
}


async def test_engines_are_the_stored_records_sorted_and_filtered(stack, nc):
    ports = stack.start_engines(3)
    ids = [await stack.register(port, name=f"acestream-{n}") for n, port in enumerate(ports, 1)]
    await stack.start_health_checks()
    await stack.healthy(*ids)

    reply = await stack.http.get("/engines")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/json")
    engines = reply.json()
    assert [e["container_id"] for e in engines] == sorted(ids)
    assert set(engines[0]) == set(EngineRecord.__struct_fields__) and SEED_FIELDS <= set(engines[0])
    for engine in engines:
        assert engine["runtime"] == "external" and engine["last_health_check"] is not None
        assert engine["last_stream_usage"] is None and engine["streams"] == []
    listed, _ = await request_json(nc, names.ENGINE_LIST, {})
    assert [e["container_id"] for e in listed["engines"]] == [e["container_id"] for e in engines]

    one = (await stack.http.get(f"/engines/{ids[0]}")).json()
    assert (one["container_name"], one["host"], one["port"]) == ("acestream-1", "127.0.0.1", ports[0])

    async def count(query: str) -> int:
        return len((await stack.http.get(f"/engines?{query}")).json())

    assert await count("health_status=healthy") == 3
    assert await count("health_status=unhealthy") == 0
    assert await count("state=active") == 3
    assert await count("health_status=healthy&state=cleaning") == 0

    # An engine a provisioner registered on its host: listed with it, and filtered by it.
    managed = EngineRegistered(container_id="local-9", host="10.0.0.2", port=ports[0], runtime="local", host_id="b-2")
    await nc.jetstream().publish(names.ENGINE_REGISTERED, encode(managed))
    assert (await stack.engine("local-9"))["host_id"] == "b-2"
    on_b = (await stack.http.get("/engines", params={"host": "b-2"})).json()
    assert [e["container_id"] for e in on_b] == ["local-9"]
    assert await count("host=a-1") == 0 and await count("") == 4

    missing = await stack.http.get("/engines/no-such-engine")
    assert missing.status_code == 404
    assert missing.json() == {"error": "engine no-such-engine not found", "code": 404}


async def test_select_then_start_and_end_a_stream_over_http(make_stack):
    stack = await make_stack(**HEALTH_BY_HAND)
    [port] = stack.start_engines(1)
    cid = await stack.register(port, name="acestream-1")
    await stack.report_health(cid, ok=True)
    await stack.healthy(cid)

    selected = await stack.http.post("/engines/select", json={"content_key": "ch-1", "key_type": "content_id"})
    assert selected.status_code == 200, selected.text
    selection = selected.json()
    assert selection["engine"]["container_id"] == cid and selection["shared"] is False
    assert selection["reservation_id"] in selection["engine"]["reservations"]

    async with httpx.AsyncClient() as engine_http:
        session = (await engine_http.get(f"http://127.0.0.1:{port}/ace/getstream?id=ch-1&format=json")).json()[
            "response"
        ]
    started = await stack.http.post(
        "/events/stream_started",
        json={
            "container_id": cid,
            "content_key": "ch-1",
            "key_type": "content_id",
            "playback_session_id": session["playback_session_id"],
            "stat_url": session["stat_url"],
            "command_url": session["command_url"],
            "is_live": True,
            "reservation_id": selection["reservation_id"],
        },
    )
    assert started.status_code == 202, started.text
    stream_id = started.json()["stream_id"]
    assert started.json()["container_id"] == cid

    record = await stack.engine(cid, lambda r: r["streams"] == [stream_id], what="stream on the engine")
    assert record["last_stream_usage"] is not None and record["reservations"] == {}

    async def started_streams():  # its own record, written right after the engine's
        return (await stack.http.get("/streams?status=started")).json()

    [stream] = await wait_until(started_streams, timeout=10, what="the started stream's record")
    assert stream["stream_id"] == stream_id and stream["stat_url"] == session["stat_url"]
    assert len((await stack.http.get(f"/streams?container_id={cid}")).json()) == 1

    ended = await stack.http.post("/events/stream_ended", json={"stream_id": stream_id, "reason": "player left"})
    assert ended.status_code == 202 and ended.json()["stream_id"] == stream_id
    record = await stack.engine(cid, lambda r: r["streams"] == [], what="stream gone from the engine")
    assert record["idle_since"] is not None
    [done] = (await stack.http.get("/streams?status=ended")).json()
    assert done["stream_id"] == stream_id and done["reason"] == "player left" and done["ended_at"]


async def test_reference_proxy_payloads_start_and_end_streams(stack):
    [port] = stack.start_engines(1)
    cid = await stack.register(port)
    acexy_started = {
        "container_id": "acexy-proxy-7f3a",  # the proxy's own container, unknown to us
        "engine": {"host": "127.0.0.1", "port": port},
        "stream": {"key_type": "infohash", "key": "0a48d1d8"},
        "session": {
            "playback_session_id": "ps-1",
            "stat_url": f"http://127.0.0.1:{port}/ace/stat/x/ps-1",
            "command_url": f"http://127.0.0.1:{port}/ace/cmd/x/ps-1",
            "is_live": 1,
        },
        "labels": {"stream_id": "0a48d1d8|client 1"},
    }
    first = await stack.http.post("/events/stream_started", json=acexy_started)
    assert first.status_code == 202, first.text
    again = await stack.http.post("/events/stream_started", json=acexy_started)  # a proxy retry
    stream_id = first.json()["stream_id"]
    assert again.json()["stream_id"] == stream_id and first.json()["container_id"] == cid
    await stack.engine(cid, lambda r: r["streams"] == [stream_id], what="one stream from the reference shape")
    [stream] = (await stack.http.get(f"/streams?container_id={cid}")).json()
    assert (stream["content_key"], stream["key_type"], stream["is_live"]) == ("0a48d1d8", "infohash", True)
    assert stream["playback_session_id"] == "ps-1"

    ended = await stack.http.post(
        "/events/stream_ended",
        json={
            "container_id": "acexy-proxy-7f3a",
            "stream_id": "0a48d1d8|client 1",
            "reason": "client disconnected",
        },
    )
    assert ended.status_code == 202 and ended.json()["stream_id"] == stream_id
    await stack.engine(cid, lambda r: r["streams"] == [], what="stream ended by its label id")

    # Without labels.stream_id the id follows key|session, so retries agree.
    unlabelled = {k: v for k, v in acexy_started.items() if k != "labels"} | {
        "session": acexy_started["session"] | {"playback_session_id": "ps-2"}
    }
    ids = {(await stack.http.post("/events/stream_started", json=unlabelled)).json()["stream_id"] for _ in range(2)}
    [derived] = ids
    await stack.engine(cid, lambda r: r["streams"] == [derived], what="derived stream id")
    # Without stream_id, the engine's newest stream ends (the reference's rule).
    by_engine = await stack.http.post("/events/stream_ended", json={"container_id": cid})
    assert by_engine.status_code == 202 and by_engine.json()["stream_id"] == derived
    await stack.engine(cid, lambda r: r["streams"] == [], what="stream ended by engine")

    unknown = await stack.http.post(
        "/events/stream_started", json=acexy_started | {"engine": {"host": "127.0.0.1", "port": 1}}
    )
    assert unknown.status_code == 404 and "127.0.0.1:1" in unknown.json()["error"]


async def test_select_without_capacity_answers_503_with_retry_after(make_stack):
    stack = await make_stack(MAX_STREAMS_PER_ENGINE=1, **HEALTH_BY_HAND)
    cid = await stack.register(free_port())
    await stack.report_health(cid, ok=True)
    await stack.healthy(cid)
    assert (await stack.http.post("/engines/select")).status_code == 200

    full = await stack.http.post("/engines/select", json={"content_key": "ch-2"})
    assert full.status_code == 503
    body = full.json()
    assert body["error"] == "no_capacity" and body["code"] == 503 and 0 < body["retry_after_s"] <= 30
    assert int(full.headers["Retry-After"]) >= 1

    stack.state_keeper.stop()
    gone = await stack.http.post("/engines/select", json={})
    assert gone.status_code == 503 and "state-keeper" in gone.json()["error"] and "Retry-After" in gone.headers
    assert (await stack.http.get("/engines")).status_code == 200, "reads never need the state-keeper"


async def test_register_and_remove_an_external_engine(stack):
    port = free_port()
    body = {"host": "127.0.0.1", "port": port, "container_name": "lab-engine", "labels": {"site": "lab"}}
    registered = await stack.http.post("/engines", json=body)
    assert registered.status_code == 202
    cid = registered.json()["container_id"]
    assert cid == f"ext-127-0-0-1-{port}"
    record = await stack.engine(cid)
    assert (record["runtime"], record["container_name"], record["labels"]) == (
        "external",
        "lab-engine",
        {"site": "lab"},
    )
    assert record["health_status"] == "unknown"

    again = await stack.http.post("/engines", json=body)
    assert again.status_code == 202 and again.json() == {"container_id": cid, "detail": "updated"}
    clash = await stack.http.post("/engines", json=body | {"container_id": "another-name"})
    assert clash.status_code == 409 and cid in clash.json()["error"]

    managed_port = free_port()
    managed = EngineRegistered(container_id="local-1", host="127.0.0.1", port=managed_port, runtime="local")
    await stack.nc.jetstream().publish(names.ENGINE_REGISTERED, encode(managed))
    await stack.engine("local-1")
    for takeover in ({"container_id": "local-1"}, {"port": managed_port}):
        refused = await stack.http.post("/engines", json=body | takeover)
        assert refused.status_code == 409 and "local engine the provisioner manages" in refused.json()["error"]

    removed = await stack.http.delete(f"/engines/{cid}")
    assert removed.status_code == 202 and removed.json()["container_id"] == cid
    await wait_until(lambda: _status(stack, f"/engines/{cid}", 404), what="engine record removed")
    assert (await stack.http.delete(f"/engines/{cid}")).status_code == 404


async def test_api_key_protects_writes_and_leaves_reads_open(make_stack):
    stack = await make_stack(API_KEY="s3cret-key")
    for path in ("/engines", "/streams", "/healthz", "/metrics", "/openapi.json", "/"):
        assert (await stack.http.get(path)).status_code == 200, path

    body = {"host": "127.0.0.1", "port": free_port()}
    missing = await stack.http.post("/engines", json=body)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Bearer" in missing.json()["error"]
    for header in ("Basic czNjcmV0LWtleQ==", "Bearer", "s3cret-key"):
        assert (await stack.http.post("/engines", json=body, headers={"Authorization": header})).status_code == 401
    for header in ("Bearer wrong", "Bearer s3cret-key2", b"Bearer \xff\xfe"):
        wrong = await stack.http.post("/engines", json=body, headers={"Authorization": header})
        assert wrong.status_code == 403 and wrong.json()["code"] == 403
    writes = [
        ("POST", "/engines/select"),
        ("DELETE", "/engines/x"),
        ("POST", "/events/stream_started"),
        ("POST", "/events/stream_ended"),
    ]
    for method, path in writes:
        assert (await stack.http.request(method, path, json={})).status_code == 401, path
    good = await stack.http.post("/engines", json=body, headers={"Authorization": "Bearer s3cret-key"})
    assert good.status_code == 202


async def test_metrics_show_the_fleet_and_the_sum_of_state_keeper_counters(make_stack, processes, nc):
    stack = await make_stack(MAX_STREAMS_PER_ENGINE=1, **HEALTH_BY_HAND)
    processes.service("state_keeper", stack.env)  # a second replica: counters are summed
    healthy_id = await stack.register(free_port(), name="good")
    sick_id = await stack.register(free_port(), name="sick")
    await stack.report_health(healthy_id, ok=True)
    # One at a time: replicas apply in parallel, and an older observation after a newer one is ignored.
    for failures in (1, 2):
        await stack.report_health(sick_id, ok=False, error="timeout")
        await stack.engine(sick_id, lambda r: r["consecutive_failures"] == failures, what=f"{failures} failures")
    await stack.engine(sick_id, lambda r: r["health_status"] == "unhealthy", what="sick engine unhealthy")
    await stack.healthy(healthy_id)
    assert (await stack.http.post("/engines/select")).status_code == 200
    assert (await stack.http.post("/engines/select")).status_code == 503
    await nc.jetstream().publish(names.STREAM_STARTED, b"{not json")
    await nc.jetstream().publish(
        names.ENGINE_CLEANED, b'{"container_id": "%s", "ok": true, "cache_size_bytes": 1234}' % healthy_id.encode()
    )

    async def scraped():
        reply = await stack.http.get("/metrics")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text)
            for s in family.samples
        }
        ready = (
            samples.get(("aceorch_state_keeper_replicas", ())) == 2
            and samples.get(("aceorch_cache_cleaned_bytes", ())) == 1234
        )
        return (
            samples
            if ready and samples.get(("aceorch_events_rejected_total", (("reason", "malformed_json"),)))
            else None
        )

    samples = await wait_until(scraped, timeout=20, interval=0.3, what="metrics with both replicas' counters")
    assert samples[("aceorch_engines", (("health_status", "healthy"), ("state", "active")))] == 1
    assert samples[("aceorch_engines", (("health_status", "unhealthy"), ("state", "active")))] == 1
    assert samples[("aceorch_selections_total", (("result", "selected"),))] == 1
    assert samples[("aceorch_selections_total", (("result", "no_capacity"),))] == 1
    assert samples[("aceorch_events_rejected_total", (("reason", "malformed_json"),))] == 1
    assert samples[("aceorch_streams_active", ())] == 0
    assert samples[("aceorch_engine_healthy", (("container_id", sick_id),))] == 0
    assert samples[("aceorch_probe_latency_seconds_count", ())] >= 3
    assert samples[("aceorch_probes_total", (("result", "failed"),))] >= 2


async def test_live_feed_keeps_alive_and_survives_a_nats_restart(make_stack, nats_server):
    stack = await make_stack(GATEWAY_KEEPALIVE_S=0.5, **HEALTH_BY_HAND)
    cid = await stack.register(free_port(), name="survivor")
    async with stack.http.stream("GET", "/api/live", timeout=httpx.Timeout(10, read=30)) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = read_sse(response)
        kind, snapshot = await asyncio.wait_for(anext(events), 10)
        assert kind == "snapshot" and [e["container_id"] for e in snapshot["engines"]] == [cid]
        assert snapshot["max_streams_per_engine"] == 3 and snapshot["streams"] == []
        assert await _next(events, lambda kind, data: kind == "comment" and data == "keepalive")

        nats_server.process.stop()
        await wait_until(lambda: _status(stack, "/healthz", 503), what="healthz 503 while NATS is down")
        down = await stack.http.get("/engines")
        assert down.status_code == 200 and [e["container_id"] for e in down.json()] == [cid]
        nats_server.start()
        await wait_until(lambda: _status(stack, "/healthz", 200), timeout=30, what="healthz 200 after restart")

        await wait_until(lambda: _report_after_restart(stack, cid), timeout=20, what="health report after restart")
        change = await _next(
            events,
            lambda kind, data: kind == "engine" and data["engine"] and data["engine"]["health_status"] == "healthy",
        )
        assert change["id"] == cid

        # SIGTERM with the stream open: the gateway ends it and exits cleanly and promptly.
        stopped_at = time.monotonic()
        assert await asyncio.to_thread(stack.gateway.stop) == 0
        assert time.monotonic() - stopped_at < 8, "shutdown waited for the open stream"
        await asyncio.wait_for(_drain(events), 10)
    assert "gateway stopped" in stack.gateway.log()


async def test_get_engines_does_not_wait_for_hanging_engines(make_stack):
    stack = await make_stack(HEALTH_CHECK_INTERVAL_S=2, HEALTH_CHECK_TIMEOUT_S=2)
    ports = stack.start_engines(3)
    ids = [await stack.register(port) for port in ports]
    await stack.start_health_checks()
    await stack.healthy(*ids)
    async with httpx.AsyncClient() as engine_http:
        for port in ports:
            assert (await engine_http.get(f"http://127.0.0.1:{port}/__sim/fault?mode=hang")).status_code == 200

    # Poll until the hung probes have marked every engine unhealthy (2 s timeouts, twice each).
    latencies, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        started = time.perf_counter()
        reply = await stack.http.get("/engines")
        latencies.append(time.perf_counter() - started)
        assert reply.status_code == 200 and len(reply.json()) == 3
        if all(e["health_status"] == "unhealthy" for e in reply.json()):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the hung engines never turned unhealthy")
    assert max(latencies) < 1.0, f"GET /engines waited on engines: {max(latencies):.2f}s"


# ------------------------------------------------------------ helpers


async def _status(stack, path: str, expected: int) -> bool:
    try:
        return (await stack.http.get(path)).status_code == expected
    except httpx.HTTPError:
        return False


async def _report_after_restart(stack, cid: str) -> bool:
    try:
        await stack.report_health(cid, ok=True)
        return True
    except Exception:
        return False


async def _drain(events) -> None:
    try:
        async for _ in events:
            pass
    except httpx.HTTPError:
        pass  # the server closed the connection: also an end


async def _next(events, matches, timeout: float = 30.0):
    """The data of the first event that `matches(kind, data)`."""

    async def scan():
        async for kind, data in events:
            if matches(kind, data):
                return data if data is not None else True
        raise AssertionError("the live feed ended")

    return await asyncio.wait_for(scan(), timeout)
