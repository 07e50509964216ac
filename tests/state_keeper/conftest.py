"""Fixtures for state-keeper tests: replicas as real processes and a client Bus."""

from __future__ import annotations

import pytest
from support import base_env, collect_dropped_connections, wait_for_service

from shared import names
from shared.bus import connect
from shared.config import load_config

# No prober runs here: a test reports an engine healthy once, and that verdict must hold for the whole
# test (a verdict older than interval + 2 x timeout + recheck reads unknown, shared.policy.freshness).
KEEPER_HEALTH_TIMING = {"HEALTH_CHECK_INTERVAL_S": 30, "HEALTH_CHECK_TIMEOUT_S": 5, "HEALTH_RECHECK_S": 5}


@pytest.fixture
def start_keepers(nats_server, processes, nc):
    """start_keepers(n, **ENV) → the processes, once all n answer $SRV.PING."""

    async def start(count: int = 1, **overrides):
        env = base_env(nats_server.url, **{**KEEPER_HEALTH_TIMING, **overrides})
        started = [processes.service("state_keeper", env) for _ in range(count)]
        await wait_for_service(nc, names.SERVICE_NAME, count)
        return started

    return start


@pytest.fixture
async def bus(nats_server):
    client_bus = await connect(load_config({"NATS_URL": nats_server.url}), "test-client")
    yield client_bus
    await client_bus.close()
    collect_dropped_connections()
