"""The README's gateway example runs as written against a real stack."""

import asyncio

import httpx
from gateway_stack import HEALTH_BY_HAND
from support import wait_until
from test_readme import readme_example


async def test_the_gateway_example_drives_a_real_stack(make_stack):
    stack = await make_stack(**HEALTH_BY_HAND)
    cid = await stack.register(6878, name="demo-1")
    await stack.report_health(cid, ok=True)
    await stack.healthy(cid)
    namespace: dict = {}
    exec(compile(readme_example("gateway").replace("\nmain()\n", "\n"), "README.md", "exec"), namespace)
    rows = await asyncio.to_thread(namespace["main"], stack.url)
    assert [row[:2] for row in rows] == [("demo-1", "healthy")]

    async def used() -> bool:  # the events the example published are applied asynchronously
        async with httpx.AsyncClient() as http:
            [engine] = (await http.get(f"{stack.url}/engines")).json()
        return engine["last_stream_usage"] is not None and engine["streams"] == []

    await wait_until(used, timeout=15, what="the example's stream recorded and ended")
