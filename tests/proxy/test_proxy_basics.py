"""Watching through the proxy: packet-aligned MPEG-TS that a real player (ffprobe) reads, announced on the bus."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from proxy_stack import Watcher

from services.proxy.fanout import pat_offsets


async def test_a_player_watches_through_the_proxy(stack_factory):
    stack = await stack_factory()
    await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    viewer = Watcher(f"{stack.url}/ace/getstream?id=channel-one")
    await viewer.got(188 * 400)
    assert viewer.status == 200
    assert viewer.data[::188].count(0x47) == len(viewer.data[::188])  # starts and stays on packet boundaries
    [started] = await stack.started(1)
    assert started["content_key"] == "channel-one" and started["key_type"] == "content_id"
    await viewer.close()
    if not pat_offsets(bytes(viewer.data[: len(viewer.data) - len(viewer.data) % 188])):
        pytest.skip("this acesim sends no PAT/PMT: ffprobe cannot find a program in its output")
    probe = await asyncio.to_thread(
        subprocess.run,
        [
            "ffprobe",
            "-v",
            "error",
            "-show_format",
            "-show_programs",
            "-of",
            "json",
            "-rw_timeout",
            "10000000",
            f"{stack.url}/ace/getstream?id=channel-one",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["format"]["format_name"] == "mpegts" and report["programs"]
