"""`aceorch events` follows the gateway's feed and `aceorch engines --watch` redraws in place (issue 14),
as real processes against a real stack."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import httpx
from support import ROOT, wait_until

from services.cli.follow import REDRAW


class Output:
    """A CLI child process whose stdout is collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.text = ""
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(4096):
            self.text += chunk.decode()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.task.cancel()


async def aceorch(env: dict[str, str], *argv: str) -> Output:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *argv,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return Output(proc)


async def test_events_prints_the_recent_ones_then_follows_a_flip_live(make_stack):
    stack = await make_stack()
    ports = stack.start_engines(2)
    first = await stack.register(ports[0], name="acestream-1")
    follower = await aceorch(stack.env, "events", "--gateway", stack.url)
    try:
        await wait_until(lambda: "acestream-1 registered at" in follower.text, timeout=20, what="the recent events")
        second = await stack.register(ports[1], name="acestream-2")
        await stack.start_health_checks()
        await stack.healthy(first, second)
        async with httpx.AsyncClient() as engine_http:
            await engine_http.get(f"http://127.0.0.1:{ports[1]}/__sim/fault?mode=hang")
        flip = "! acestream-2 unhealthy: timeout after 0.5 s, 2 failures in a row"
        await wait_until(lambda: flip in follower.text, timeout=20, what="the flip, followed live")
        lines = follower.text.splitlines()
        registered = next(i for i, line in enumerate(lines) if "acestream-2 registered" in line)
        assert registered < next(i for i, line in enumerate(lines) if flip in line), "a log reads oldest first"
        assert len(lines) == len(set(lines)), "no event printed twice"
    finally:
        await follower.stop()


async def test_engines_watch_redraws_the_table_in_place(make_stack):
    stack = await make_stack()
    watcher = await aceorch(stack.env, "engines", "--watch", "--interval", "0.3")
    try:
        await wait_until(lambda: watcher.text.count(REDRAW) >= 2, timeout=20, what="two frames")
        assert "no engines registered" in watcher.text
        (port,) = stack.start_engines(1)
        await stack.register(port, name="acestream-7")
        await wait_until(
            lambda: "acestream-7" in watcher.text.rsplit(REDRAW, 1)[-1], timeout=20, what="the engine in a redraw"
        )
        assert all(frame.startswith("engines at ") for frame in watcher.text.split(REDRAW)[1:])
    finally:
        await watcher.stop()
