"""The README's gateway example runs as written against a real stack."""

import asyncio

from test_readme import readme_example


async def test_the_gateway_example_drives_a_real_stack(make_stack):
    stack = await make_stack()
    cid = await stack.register(6878, name="demo-1")
    await stack.report_health(cid, ok=True)
    await stack.healthy(cid)
    namespace: dict = {}
    exec(compile(readme_example("gateway").replace("\nmain()\n", "\n"), "README.md", "exec"), namespace)
    rows = await asyncio.to_thread(namespace["main"], stack.url)
    assert rows[0][0] == "demo-1" and rows[0][2] is not None
