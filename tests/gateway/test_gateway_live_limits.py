"""`/api/live` under many clients: capped (LIVE_MAX_CLIENTS), each change encoded once, API_KEY honoured."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from gateway_stack import read_sse
from support import free_port, wait_until


async def test_clients_beyond_the_cap_are_refused_until_one_leaves(make_stack):
    stack = await make_stack(LIVE_MAX_CLIENTS=2)
    async with contextlib.AsyncExitStack() as exits:
        http = await exits.enter_async_context(httpx.AsyncClient(base_url=stack.url, timeout=10))
        first = await _open_live(exits, http)
        await _open_live(exits, http)

        refused = await http.get("/api/live")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["code"] == 503 and "LIVE_MAX_CLIENTS" in refused.json()["error"]
        assert _metric(await http.get("/metrics"), "aceorch_gateway_live_refused_total") == 1

        await first.aclose()  # one leaves: its place is free again
        await wait_until(lambda: _live_clients(http, 1), timeout=20, what="the closed client to be counted out")
        again = await _open_live(exits, http)
        assert again.status_code == 200


async def test_each_change_is_encoded_once_for_all_clients(stack):
    clients = 4
    async with contextlib.AsyncExitStack() as exits:
        streams = [await _open_live(exits, stack.http) for _ in range(clients)]
        cid = await stack.register(free_port(), name="seen-by-all")
        await stack.report_health(cid, ok=True)
        await stack.healthy(cid)
        # Every client sees the engine healthy; count what each one was sent on the way.
        received = await asyncio.gather(*(_engine_events_until_healthy(s, cid) for s in streams))

        metrics = await stack.http.get("/metrics")
        changes = _metric(metrics, "aceorch_gateway_live_changes_total")
        encoded = _metric(metrics, "aceorch_gateway_live_frames_encoded_total")
    assert min(received) >= 1
    # Each change sent was encoded at most once: per-client encoding would give `clients` × the frames.
    assert max(received) <= encoded <= changes, (received, encoded, changes)


async def test_api_key_covers_the_live_feed(make_stack):
    stack = await make_stack(API_KEY="live-s3cret")
    missing = await stack.http.get("/api/live")
    assert missing.status_code == 401 and "?key=" in missing.json()["error"]
    assert (await stack.http.get("/api/live", headers={"Authorization": "Bearer wrong"})).status_code == 403
    assert (await stack.http.get("/api/live", params={"key": "wrong"})).status_code == 403
    async with contextlib.AsyncExitStack() as exits:
        await _open_live(exits, stack.http, headers={"Authorization": "Bearer live-s3cret"})
        await _open_live(exits, stack.http, params={"key": "live-s3cret"})
    assert (await stack.http.get("/")).status_code == 200  # the page itself stays open; its feed needs the key


# ------------------------------------------------------------ helpers


async def _open_live(exits: contextlib.AsyncExitStack, http: httpx.AsyncClient, **kwargs) -> httpx.Response:
    """An open /api/live response whose snapshot has arrived."""
    response = await exits.enter_async_context(http.stream("GET", "/api/live", **kwargs))
    assert response.status_code == 200, (await response.aread())[:300]
    response.events = read_sse(response)  # one reader per response, kept for later events
    event, _ = await asyncio.wait_for(anext(response.events), 20)
    assert event == "snapshot"
    return response


async def _engine_events_until_healthy(response: httpx.Response, cid: str) -> int:
    seen = 0

    async def read() -> int:
        nonlocal seen
        async for event, data in response.events:
            if event == "engine" and data["id"] == cid:
                seen += 1
                if data["engine"] and data["engine"]["health_status"] == "healthy":
                    return seen
        raise AssertionError("the live feed ended")

    return await asyncio.wait_for(read(), 30)


async def _live_clients(http: httpx.AsyncClient, count: int) -> bool:
    return _metric(await http.get("/metrics"), "aceorch_gateway_live_clients") == count


def _metric(reply: httpx.Response, name: str) -> float:
    for line in reply.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
