"""The gateway serves the NATS contract next to its OpenAPI document."""

from __future__ import annotations

from support import ROOT


async def test_the_gateway_serves_the_committed_asyncapi_document(stack):
    served = await stack.http.get("/asyncapi.yaml")
    assert served.status_code == 200 and served.headers["content-type"].startswith("application/yaml")
    assert served.text == (ROOT / "asyncapi.yaml").read_text()
