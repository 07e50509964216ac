"""Health that tells the truth: `/readyz` names what is missing; a planned shutdown is not a warning."""

from __future__ import annotations

from support import wait_for_service, wait_until

from shared import names


async def test_readiness_names_a_missing_state_keeper_while_liveness_stays_up(stack, processes):
    ready = await stack.http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "missing": []}

    assert stack.state_keeper.stop() == 0
    await wait_until(lambda: _readyz(stack, 503), timeout=20, what="/readyz 503 without a state-keeper")
    reply = await stack.http.get("/readyz")
    assert reply.json() == {"status": "unavailable", "missing": ["state-keeper"]}
    assert int(reply.headers["Retry-After"]) >= 1
    assert (await stack.http.get("/healthz")).status_code == 200  # the process itself is fine

    stack.state_keeper = processes.service("state_keeper", stack.env)
    await wait_for_service(stack.nc, names.SERVICE_NAME, 1)
    await wait_until(lambda: _readyz(stack, 200), timeout=20, what="/readyz 200 with a state-keeper again")


async def test_a_clean_shutdown_logs_the_disconnect_as_info(stack):
    assert stack.gateway.stop() == 0
    log = stack.gateway.log()
    assert "INFO shared.bus: nats: disconnected" in log, log[-2000:]
    assert "WARNING shared.bus: nats: disconnected" not in log, log[-2000:]


async def _readyz(stack, status: int) -> bool:
    return (await stack.http.get("/readyz")).status_code == status
