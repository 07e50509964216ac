"""A service whose NATS connection is closed for good exits non-zero, so a supervisor restarts it
(it used to stay up retrying `fetch failed (nats: connection closed)` every 0.5 s for ever)."""

from __future__ import annotations

import asyncio
import os
import signal

import nats
import pytest
from support import NatsServer, base_env, free_port, wait_for_port, wait_for_service, wait_until

from shared import names


@pytest.mark.parametrize("service", ["state_keeper", "gateway"])
async def test_a_service_exits_non_zero_when_its_connection_is_closed_for_good(service, tmp_path, processes):
    config = tmp_path / "nats.conf"
    config.write_text("")
    server = NatsServer(port=free_port(), store=tmp_path / "js", processes=processes, extra_args=("-c", str(config)))
    server.start()
    if service == "state_keeper":
        proc = processes.service(service, base_env(server.url))
        nc = await nats.connect(server.url)
        try:
            await wait_for_service(nc, names.SERVICE_NAME)
        finally:
            await nc.close()
    else:
        port = free_port()
        proc = processes.service(service, base_env(server.url, GATEWAY_PORT=port))
        await asyncio.to_thread(wait_for_port, port, 30.0)
    # Credentials revoked: the server drops every client with an authorization error, which
    # nats-py takes as final (as it does a payload over max_payload): no reconnect will follow.
    config.write_text('authorization { token: "revoked-for-the-test" }\n')
    os.kill(server.process.pid, signal.SIGHUP)
    await wait_until(lambda: not proc.alive(), timeout=60, what=f"{service} to exit")
    assert proc.popen.returncode == 1
    assert "its NATS connection is closed for good" in proc.log()
