"""The README's examples run as written."""

import json
import re
import sys

from support import ROOT, base_env, free_port_range, wait_for_port, wait_for_service


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


async def test_the_health_example_watches_a_hung_engine_flip(nats_server, processes, nc, tmp_path):
    first = free_port_range(10)
    processes.start(
        "acesim",
        [
            sys.executable,
            "-m",
            "deploy.acesim",
            "--ports",
            f"{first}-{first + 9}",
            "--cache-dir",
            str(tmp_path / "acesim"),
        ],
    )
    wait_for_port(first + 9)
    processes.service("state_keeper", base_env(nats_server.url))
    processes.service("prober", base_env(nats_server.url))
    await wait_for_service(nc)
    namespace: dict = {}
    exec(compile(readme_example("health").replace("asyncio.run(main())", ""), "README.md", "exec"), namespace)
    await namespace["main"](nats_server.url, first, first + 9)
    reply = await nc.request("engine.get", json.dumps({"container_id": f"sim-{first + 3}"}).encode(), timeout=5)
    record = json.loads(reply.data)
    assert record["health_status"] == "healthy" and record["last_error"] == "timeout"


def test_every_setting_is_documented():
    from dataclasses import fields

    from shared.config import Config

    text = (ROOT / "README.md").read_text()
    missing = [f.name.upper() for f in fields(Config) if f"`{f.name.upper()}`" not in text]
    assert not missing, f"settings missing from the README: {missing}"
