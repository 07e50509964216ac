"""`DELETE /engines/{id}` never claims a removal that will not happen."""

from __future__ import annotations

from support import free_port, wait_until

from shared import names
from shared.schemas import EngineRegistered, encode


async def test_a_managed_engine_is_refused_with_the_reason_and_kept(stack):
    managed = EngineRegistered(container_id="local-7", host="127.0.0.1", port=free_port(), runtime="local")
    await stack.nc.jetstream().publish(names.ENGINE_REGISTERED, encode(managed))
    await stack.engine("local-7")

    refused = await stack.http.delete("/engines/local-7")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert "local engine the provisioner manages" in error and "MIN_REPLICAS" in error

    # An external engine's deregistration, sent after the refusal, is applied: the refusal published nothing.
    external = await stack.register(free_port(), name="elsewhere")
    removed = await stack.http.delete(f"/engines/{external}")
    assert removed.status_code == 202 and removed.json() == {"container_id": external, "detail": "deregistered"}
    await wait_until(lambda: _gone(stack, external), what="the external engine deregistered")
    assert (await stack.http.get("/engines/local-7")).status_code == 200


async def _gone(stack, container_id: str) -> bool:
    return (await stack.http.get(f"/engines/{container_id}")).status_code == 404
