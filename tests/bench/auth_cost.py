"""What the role grants cost (issue 13): the same loops on an open server and on one enforcing the keys.

    PYTHONPATH=.:tests .venv/bin/python tests/bench/auth_cost.py

Two servers side by side, one process, rounds interleaved (open, auth, open, auth...) so a machine
busy with something else weighs on both alike; each figure is the best of its rounds. Loops: a
request/reply echo answered as `engine.select` in queue group `q` (sequential and 16 concurrent
requesters) and JetStream publish with ack of `stream.ended`. On the auth server the responder
holds the state-keeper's key and the requester the proxy's, private inboxes included.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import nats
from support import NatsServer, Processes, create_layout, create_open_layout, free_port, start_auth_server

from shared import auth, names

N = 3000
ROUNDS = 3
CONCURRENT = 16


async def one_round(url: str, responder: dict[str, str], requester: dict[str, str]) -> dict[str, float]:
    server = await nats.connect(url, **responder)
    client = await nats.connect(url, **requester)

    async def echo(msg) -> None:
        await msg.respond(msg.data)

    await server.subscribe(names.ENGINE_SELECT, queue=auth.MICRO_QUEUE, cb=echo)
    await server.flush()
    figures = {}
    started = time.perf_counter()
    for _ in range(N):
        await client.request(names.ENGINE_SELECT, b"{}", timeout=2)
    figures["request_reply_per_s"] = N / (time.perf_counter() - started)

    async def requester_loop() -> None:
        for _ in range(N // CONCURRENT):
            await client.request(names.ENGINE_SELECT, b"{}", timeout=2)

    started = time.perf_counter()
    await asyncio.gather(*(requester_loop() for _ in range(CONCURRENT)))
    figures[f"request_reply_{CONCURRENT}_concurrent_per_s"] = (
        N // CONCURRENT * CONCURRENT / (time.perf_counter() - started)
    )
    js = client.jetstream()
    started = time.perf_counter()
    for _ in range(N):
        await js.publish(names.STREAM_ENDED, b"{}")
    figures["js_publish_ack_per_s"] = N / (time.perf_counter() - started)
    await client.close()
    await server.close()
    return figures


async def compare(open_url: str, auth_url: str, keys: Path) -> None:
    def key(role: str) -> dict[str, str]:
        return auth.client_options(str(keys / f"{role}.nk"))

    best: dict[str, dict[str, float]] = {"open": {}, "auth": {}}
    for _ in range(ROUNDS):
        for label, url, responder, requester in (
            ("open", open_url, {}, {}),
            ("auth", auth_url, key("state-keeper"), key("proxy")),
        ):
            for name, value in (await one_round(url, responder, requester)).items():
                best[label][name] = max(best[label].get(name, 0.0), value)
    for name in best["open"]:
        plain, keyed = best["open"][name], best["auth"][name]
        print(f"{name:40} open {plain:8.0f}  auth {keyed:8.0f}  ({(keyed / plain - 1) * 100:+.0f}%)")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="auth-cost-"))
    processes = Processes(workdir)
    try:
        plain = NatsServer(port=free_port(), store=workdir / "open", processes=processes)
        plain.start()
        keyed, keys = start_auth_server(workdir, processes)
        create_open_layout(plain.url)
        asyncio.run(create_layout(keyed.url, keys))
        asyncio.run(compare(plain.url, keyed.url, keys))
    finally:
        processes.stop_all()


if __name__ == "__main__":
    main()
