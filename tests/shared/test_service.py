"""The service shell once the connection is closed for good: stop is set, the body gets a bounded
grace, what it raises then is not a crash; without a lost connection errors still propagate."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from shared.service import _run_body

log = logging.getLogger("test")


async def test_a_body_that_ignores_stop_is_cancelled_once_the_grace_is_over():
    bus = SimpleNamespace(lost=asyncio.Event())
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    running = asyncio.create_task(_run_body(stubborn(), bus, stop, log, grace_s=0.2))
    await asyncio.sleep(0)
    bus.lost.set()
    await asyncio.wait_for(running, 10)
    assert stop.is_set() and cancelled.is_set()


async def test_after_a_lost_connection_what_the_body_raises_is_logged_not_raised(caplog):
    bus = SimpleNamespace(lost=asyncio.Event())
    stop = asyncio.Event()

    async def failing_on_stop() -> None:
        await stop.wait()
        raise RuntimeError("")

    running = asyncio.create_task(_run_body(failing_on_stop(), bus, stop, log))
    bus.lost.set()
    await asyncio.wait_for(running, 10)
    assert "stopped after losing NATS: RuntimeError" in caplog.text


async def test_without_a_lost_connection_the_body_error_propagates():
    async def failing() -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        await _run_body(failing(), SimpleNamespace(lost=asyncio.Event()), asyncio.Event(), log)
