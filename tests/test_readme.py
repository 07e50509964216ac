"""The README's examples run as written."""

import re

from support import ROOT, base_env, wait_for_service


def readme_example(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- readme-example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README example {name!r} not found"
    return match.group(1)


async def test_the_proxy_example_drives_a_real_state_keeper(nats_server, processes, nc):
    processes.service("state_keeper", base_env(nats_server.url))
    await wait_for_service(nc)
    source = readme_example("proxy").replace("asyncio.run(main())", "")
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    record = await namespace["main"](nats_server.url)
    assert record["streams"] and record["last_stream_usage"]
