"""`aceorch demo`: simulated viewers zapping between channels, so the dashboard shows life.

Each viewer, like a player behind a proxy: start a stream on a random channel
(select → getstream → stream.started), watch it for a while (polling the
engine's stat URL as players do), end it (stop → stream.ended), pause, repeat.
Bounded: a fixed number of viewers for a fixed duration; on Ctrl-C or the end
of the duration every stream still playing is ended before exit. Ending needs
no state-keeper (the end is stored in JetStream, retried until acknowledged,
bounded), so a state-keeper outage loses no end; a second Ctrl-C gives up
waiting and names the streams whose end was not acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal

import httpx
from nats.aio.client import Client

from services.cli.client import CliError, connected
from services.cli.proxy import Playing, end_stream, start_stream

STAT_POLL_S = 5.0
NO_CAPACITY_WAIT_S = 2.0
ERROR_WAIT_S = 3.0


def parse_span(text: str) -> tuple[float, float]:
    """'10-40' → (10.0, 40.0): a range of seconds for random waits."""
    low, sep, high = text.partition("-")
    try:
        span = (float(low), float(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds like 10-40, got {text!r}") from None
    if not 0 <= span[0] <= span[1]:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX with 0 <= MIN <= MAX, got {text!r}")
    return span


class Demo:
    def __init__(self, nc: Client, http: httpx.AsyncClient, args: argparse.Namespace, stop: asyncio.Event) -> None:
        self.nc, self.http, self.args, self.stop = nc, http, args, stop
        self.channels = [f"demo-channel-{n}" for n in range(1, args.channels + 1)]
        self.playing: dict[int, Playing] = {}
        self.ending: dict[str, Playing] = {}  # ends being published
        self.unended: list[str] = []  # streams whose end JetStream never acknowledged
        self.started = self.ended = 0

    async def run(self) -> int:
        try:
            async with asyncio.TaskGroup() as group:
                for viewer in range(1, self.args.viewers + 1):
                    group.create_task(self.viewer(viewer))
            await self.end_all()
        except asyncio.CancelledError:  # a second Ctrl-C: stop waiting for acknowledgements
            self.unended += [*self.ending, *(p.stream_id for p in self.playing.values())]
            self.summary()
            return 130
        self.summary()
        return 1 if self.unended else 0

    def summary(self) -> None:
        print(f"demo: done, {self.started} streams started, {self.ended} ended")
        if self.unended:
            print(
                f"demo: {len(self.unended)} ends not acknowledged by JetStream, those streams may stay "
                f"'started': {' '.join(self.unended)} (end them with `aceorch stream end ID`)"
            )

    async def viewer(self, number: int) -> None:
        await self.pause(random.uniform(0, self.args.pause[1]))  # viewers arrive staggered
        while not self.stop.is_set():
            channel = random.choice(self.channels)
            try:
                playing = await start_stream(self.nc, self.http, channel)
            except CliError as exc:
                wait = (exc.retry_after_s or NO_CAPACITY_WAIT_S) if exc.code == 503 else ERROR_WAIT_S
                print(f"viewer {number}: {exc} (retrying in {wait:g}s)")
                await self.pause(wait)
                continue
            self.playing[number] = playing
            self.started += 1
            print(
                f"viewer {number}: watching {channel} on {playing.engine.container_name}"
                f"{' (shared)' if playing.shared else ''} [{playing.stream_id}]"
            )
            await self.watch(playing, random.uniform(*self.args.watch))
            await self.end(number, "viewer left")
            await self.pause(random.uniform(*self.args.pause))

    async def watch(self, playing: Playing, seconds: float) -> None:
        """Poll the stat URL like a player; a dead session ends the viewing early."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.stop.is_set() and loop.time() < deadline:
            await self.pause(min(STAT_POLL_S, deadline - loop.time()))
            if playing.stat_url and not await self.session_alive(playing.stat_url):
                print(f"demo: stream {playing.stream_id} lost its engine session")
                return

    async def session_alive(self, stat_url: str) -> bool:
        try:
            body = (await self.http.get(stat_url, timeout=5)).json()
        except (httpx.HTTPError, ValueError):
            return False
        return isinstance(body, dict) and body.get("error") is None

    async def end(self, number: int, reason: str) -> None:
        playing = self.playing.pop(number, None)
        if playing is None:
            return
        self.ending[playing.stream_id] = playing
        try:
            # The other viewers of this demo tell, without asking anyone, whether the session is shared.
            await end_stream(self.nc, self.http, playing.stream_id, reason, playing, self.others())
            self.ended += 1
            print(f"viewer {number}: left {playing.content_key} [{playing.stream_id}]")
        except CliError as exc:
            self.unended.append(playing.stream_id)
            print(f"viewer {number}: could not end {playing.stream_id}: {exc}")
        finally:
            self.ending.pop(playing.stream_id, None)

    def others(self) -> list[Playing]:
        return [*self.playing.values(), *self.ending.values()]

    async def end_all(self) -> None:
        await asyncio.gather(*(self.end(number, "demo stopped") for number in list(self.playing)))

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=max(seconds, 0))


async def demo(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def on_signal() -> None:
        if not stop.is_set():
            print("demo: stopping: ending every stream still playing (Ctrl-C again to give up waiting)", flush=True)
            stop.set()
        else:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.call_later(args.duration, stop.set)
    print(f"demo: {args.viewers} viewers over {args.channels} channels for {args.duration:g}s (Ctrl-C ends it)")
    async with connected(args.nats_url, name="aceorch-demo", nkey=args.nkey) as nc, httpx.AsyncClient() as http:
        return await Demo(nc, http, args, stop).run()
