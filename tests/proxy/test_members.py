"""leave_all: how a stopping proxy ends its channels and HLS sessions, bounded in time."""

from __future__ import annotations

import asyncio

from services.proxy.members import leave_all


class Member:
    def __init__(self, obeys: bool) -> None:
        self.reasons: list[str] = []
        self.left = asyncio.Event()
        self.cancelled = False
        self.task = asyncio.get_running_loop().create_task(self._run(obeys))

    async def _run(self, obeys: bool) -> None:
        try:
            if obeys:
                await self.left.wait()
            else:
                await asyncio.Event().wait()  # a hung engine or bus call: only a cancel ends it
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def leave(self, reason: str) -> None:
        self.reasons.append(reason)
        self.left.set()


async def test_every_member_is_asked_to_leave_and_one_that_hangs_is_cancelled_after_the_timeout():
    quick, hung = Member(obeys=True), Member(obeys=False)
    started = asyncio.get_running_loop().time()
    await leave_all([quick, hung], "proxy_stopped", timeout_s=0.2)
    assert asyncio.get_running_loop().time() - started < 5
    assert quick.reasons == hung.reasons == ["proxy_stopped"]
    assert quick.task.done() and not quick.cancelled
    assert hung.task.done() and hung.cancelled


async def test_members_that_leave_in_time_are_waited_for_not_cancelled():
    members = [Member(obeys=True) for _ in range(3)]
    await leave_all(members, "proxy_stopped", timeout_s=30)
    assert all(m.task.done() and not m.cancelled for m in members)


async def test_nothing_to_end_returns_at_once():
    await leave_all([], "proxy_stopped", timeout_s=30)
