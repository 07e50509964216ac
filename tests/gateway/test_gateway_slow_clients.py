"""Slowloris: a client that sends its request head a byte at a time is cut off, and nobody waits for it."""

from __future__ import annotations

import asyncio
import time

import httpx
from support import wait_until

HEAD = b"GET /engines HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: one-byte-at-a-time\r\nAccept: */*\r\n\r\n"


async def test_a_slow_request_head_is_cut_off_while_others_are_served(stack):
    url, gateway = await stack.start_gateway(GATEWAY_HEADER_TIMEOUT_S=2)
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    idle_reader, idle_writer = await asyncio.open_connection(host, int(port))  # sends nothing at all
    sent = 0

    async def dribble() -> None:
        nonlocal sent
        try:
            for byte in HEAD:
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
                await asyncio.sleep(1.0)
        except (ConnectionError, OSError):
            pass

    dribbling = asyncio.create_task(dribble())
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            # Meanwhile other clients are served as usual.
            for _ in range(5):
                assert (await http.get("/engines")).status_code == 200
            # The server closes both connections long before the head could be complete.
            assert await asyncio.wait_for(reader.read(), 30) == b""
            assert await asyncio.wait_for(idle_reader.read(), 30) == b""
            assert sent < len(HEAD), f"the whole head ({sent} bytes) went through before the cut"
            assert (await http.get("/engines")).status_code == 200
            metrics = (await http.get("/metrics")).text
        assert "aceorch_gateway_slow_heads_cut_total 2.0" in metrics
    finally:
        dribbling.cancel()
        writer.close()
        idle_writer.close()
    assert gateway.alive() and "Traceback" not in gateway.log()


async def test_a_keep_alive_connection_gets_a_fresh_deadline_per_request(stack):
    """The deadline counts from the previous response, not from the connection: a reused connection works."""
    url, _ = await stack.start_gateway(GATEWAY_HEADER_TIMEOUT_S=2)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        started = time.monotonic()
        while time.monotonic() - started < 5:  # longer than the deadline, on one pooled connection
            assert (await http.get("/engines")).status_code == 200
            await asyncio.sleep(0.5)
        metrics = (await http.get("/metrics")).text
    assert "aceorch_gateway_slow_heads_cut_total 0.0" in metrics


async def test_connections_beyond_the_cap_are_answered_503_at_once_and_served_again_once_they_go(stack):
    # The cap is LIVE_MAX_CLIENTS + 1,000 other connections: 1,001 here, all held open and silent.
    url, gateway = await stack.start_gateway(LIVE_MAX_CLIENTS=1, GATEWAY_HEADER_TIMEOUT_S=60)
    host, port = url.removeprefix("http://").split(":")
    held = [await asyncio.open_connection(host, int(port)) for _ in range(1001)]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            refused = await http.get("/engines")
            assert refused.status_code == 503
    finally:
        for _, writer in held:
            writer.close()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        served = await wait_until(_answers_200(http), timeout=20, what="served again once the held connections closed")
    assert served and gateway.alive()


def _answers_200(http: httpx.AsyncClient):
    async def check() -> bool:
        return (await http.get("/engines")).status_code == 200

    return check
