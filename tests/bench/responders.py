"""The raw baselines selection is held to, as their own processes (like a state-keeper replica).

    python -m tests.bench.responders echo --url nats://... --size 900
    python -m tests.bench.responders cas  --url nats://... --size 900 --keys 100

`echo` answers every request with a fixed reply of `--size` bytes straight
from the subscription callback. `cas` does what a selection must at least do:
one KV compare-and-set (`kv.update(key, value, last=revision)`) of a value of
`--size` bytes on one of `--keys` keys, then replies with that value. Each
request runs in its own task, as the state-keeper's do, so requests overlap.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal

import nats
from nats.js.errors import KeyWrongLastSequenceError

from shared.bus import bucket_stream_config
from shared.config import load_config
from shared.service import run_loop

SUBJECTS = {"echo": "bench.echo", "cas": "bench.cas"}
BUCKET = "bench_cas"


async def serve(mode: str, url: str, size: int, keys: int) -> None:
    nc = await nats.connect(url, name=f"bench-{mode}", max_reconnect_attempts=2)
    blob = b"x" * size
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if mode == "echo":

        async def on_request(msg) -> None:
            await msg.respond(blob)

    else:
        kv = await _bucket(nc, url)
        names = [f"k{i}" for i in range(keys)]
        revisions = {name: await kv.put(name, blob) for name in names}
        turn = itertools.cycle(names)
        tasks: set[asyncio.Task] = set()

        async def cas(msg) -> None:
            key = next(turn)
            while True:
                try:
                    revisions[key] = await kv.update(key, blob, last=revisions[key])
                    break
                except KeyWrongLastSequenceError:
                    revisions[key] = (await kv.get(key)).revision
            await msg.respond(blob)

        async def on_request(msg) -> None:
            task = loop.create_task(cas(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    await nc.subscribe(SUBJECTS[mode], queue="bench", cb=on_request)
    await nc.flush()
    print("ready", flush=True)
    await stop.wait()
    await nc.drain()


async def _bucket(nc, url: str):
    js = nc.jetstream()
    config = bucket_stream_config(BUCKET, load_config({"NATS_URL": url}))
    await js.add_stream(config)
    return await js.key_value(BUCKET)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(SUBJECTS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args()
    run_loop(serve(args.mode, args.url, args.size, args.keys))


if __name__ == "__main__":
    main()
