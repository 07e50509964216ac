"""Ending what a proxy replica runs (channels, HLS sessions) when it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol


class Member(Protocol):
    """Something with one task that ends soon after it is asked to leave."""

    @property
    def task(self) -> asyncio.Task[None]: ...

    def leave(self, reason: str) -> None: ...


async def leave_all(members: Sequence[Member], reason: str, timeout_s: float) -> None:
    """Ask every member to leave, wait up to `timeout_s` for their tasks, then cancel the rest:
    a stop must end in bounded time even when an engine or a bus call hangs."""
    for member in members:
        member.leave(reason)
    if not members:
        return
    _, pending = await asyncio.wait([m.task for m in members], timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
