"""A reader that stops reading `aceorch up`'s output must not stall anything (issue 21 item 1)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import subprocess
import threading

import httpx
import nats
from support import ROOT, free_port, free_port_range, wait_until
from test_cli_up import CLI, SCALED_DOWN

from services.cli.logs import Output
from shared import auth


def test_a_stuck_reader_never_blocks_emit_and_learns_how_many_lines_were_dropped():
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    stream = os.fdopen(write_end, "w")
    out = Output(["svc"], stream, color=False, max_pending=100)
    for n in range(5000):  # ~150 KB into a 4 KB pipe nobody reads: each call must return at once
        out.emit("svc", f"line {n:05d} " + "x" * 20)
    assert out.dropped_total > 0
    assert not out.flush(timeout_s=0.2)  # the reader still does not read: flush gives up, bounded

    received = bytearray()
    reader = threading.Thread(target=_read_all, args=(read_end, received))
    reader.start()
    assert out.flush(timeout_s=30)
    stream.close()  # EOF for the reader: everything queued was written
    reader.join(30)
    text = received.decode()
    dropped = [int(n) for n in re.findall(r"dropped (\d+) log lines: stdout not keeping up", text)]
    written = re.findall(r"svc +\| line (\d{5}) ", text)
    assert dropped and sum(dropped) == out.dropped_total
    assert len(written) + sum(dropped) == 5000
    assert written == sorted(written) and written[0] == "00000"  # in order, from the first line


def _read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 65536):
        into += chunk
    os.close(fd)


async def test_up_with_a_stuck_reader_keeps_answering_and_stops_on_sigint(tmp_path):
    """`aceorch up | less` left at a prompt: a 4 KB pipe nobody reads, and a burst of log lines."""
    nats_port, gateway_port = free_port(), free_port()
    first = free_port_range(20)
    env = {
        **os.environ,
        **SCALED_DOWN,
        "PYTHONUNBUFFERED": "1",
        "NATS_PORT": str(nats_port),
        "GATEWAY_PORT": str(gateway_port),
        "PROXY_PORT": str(free_port()),
        "ENGINE_PORT_RANGE": f"{first}-{first + 19}",
    }
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    up = subprocess.Popen(
        [*CLI, "up", "--data-dir", str(tmp_path / "data"), "--stop-timeout", "15"],
        stdout=write_end,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    os.close(write_end)
    try:
        async with httpx.AsyncClient(timeout=3) as http:
            await wait_until(lambda: _healthy_engines(http, gateway_port, 2), timeout=120, what="2 healthy engines")
        proxy_key = str(tmp_path / "data" / "auth" / "proxy.nk")
        nc = await nats.connect(f"nats://127.0.0.1:{nats_port}", **auth.client_options(proxy_key))
        try:
            js = nc.jetstream()
            for n in range(3000):  # each one a rejection the state-keeper logs: a burst of lines
                await js.publish("stream.started", f'{{"not": "an event {n}"}}'.encode())
            for _ in range(5):
                msg = await nc.request("engine.select", json.dumps({}).encode(), timeout=5)
                assert not (msg.headers or {}).get("Nats-Service-Error-Code"), msg.data
                assert json.loads(msg.data)["engine"]["container_id"]
        finally:
            await nc.close()
        up.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(up.wait, 90)  # nobody reads yet: `up` must stop all the same
        assert code == 0
    finally:
        received = bytearray()
        reader = threading.Thread(target=_read_all, args=(read_end, received))
        reader.start()  # reading again lets a stuck `up` (before the fix) stop cleanly, engines included
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(up.wait, 90)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(10)
        await asyncio.to_thread(reader.join, 30)
    text = received.decode(errors="replace")
    assert "nats-server starting" in text


async def _healthy_engines(http: httpx.AsyncClient, port: int, count: int) -> bool:
    try:
        reply = await http.get(f"http://127.0.0.1:{port}/engines", params={"health_status": "healthy"})
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and len(reply.json()) >= count
