"""Watching through the proxy: a real player probe, the lifecycle on the bus, hostile requests."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from services.proxy.fanout import pat_offsets

from proxy_stack import Watcher
from support import wait_until


async def test_ffprobe_reads_an_mpegts_program_through_the_proxy(stack_factory):
    stack = await stack_factory()
    await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    sample = Watcher(f"{stack.url}/ace/getstream?id=channel-one")
    await sample.got(188 * 400)
    await sample.close()
    if not pat_offsets(bytes(sample.data[:len(sample.data) - len(sample.data) % 188])):
        pytest.skip("this acesim sends no PAT/PMT: ffprobe cannot find a program in its output")
    probe = await asyncio.to_thread(
        subprocess.run,
        ["ffprobe", "-v", "error", "-show_format", "-of", "json", "-rw_timeout", "10000000",
         f"{stack.url}/ace/getstream?id=channel-one"],
        capture_output=True, text=True, timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["format"]["format_name"] == "mpegts"


async def test_one_viewer_gets_aligned_packets_and_the_stream_is_announced(stack_factory):
    stack = await stack_factory()
    await stack.add_engines(1)
    stack.url, stack.proxy = await stack.start_proxy()
    viewer = Watcher(f"{stack.url}/ace/getstream?id=channel-one")
    await viewer.got(188 * 200)
    assert viewer.status == 200
    assert viewer.data[::188].count(0x47) == len(viewer.data[::188])
    started = await wait_until(lambda: stack.streams("started"), what="a started stream")
    assert len(started) == 1 and started[0]["content_key"] == "channel-one"
    await viewer.close()
