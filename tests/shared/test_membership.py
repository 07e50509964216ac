"""Membership judges a heartbeat by its age, never by the key being there (DESIGN §9).

Real nats-server. Heartbeats of dead members are written by hand, without a
per-message TTL and with an old `sent_at`: what a restarted server that stopped
enforcing TTLs leaves behind.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from nats.js.errors import KeyNotFoundError
from support import wait_until

from shared.bus import connect
from shared.config import load_config
from shared.membership import Membership

GROUP = "tgroup"
INTERVAL_S = 2.0  # a TTL of 3 s


@pytest.fixture
async def bus(nats_server):
    bus = await connect(load_config({"NATS_URL": nats_server.url}), "membership-test")
    yield bus
    await bus.close()


async def write_beat(bus, member: str, sent_at: float | None) -> None:
    """A heartbeat as a dead replica left it: no TTL header, so nothing ever expires it."""
    value = {"member": member, "host": "elsewhere", "pid": 1}
    if sent_at is not None:
        value["sent_at"] = sent_at
    await bus.leases.put(f"members.{GROUP}.{member}", json.dumps(value).encode())


async def beat_present(bus, member: str) -> bool:
    try:
        entry = await bus.leases.get(f"members.{GROUP}.{member}")
    except KeyNotFoundError:
        return False
    return bool(entry.value)


async def test_heartbeats_of_dead_members_are_never_listed_and_are_cleaned_up(bus):
    await write_beat(bus, "dead-an-hour-ago", time.time() - 3600)
    await write_beat(bus, "dead-a-minute-ago", time.time() - 60)
    seen = []
    member = Membership(bus, GROUP, "alive", INTERVAL_S)
    member.listeners.append(seen.append)
    await member.start()
    try:
        assert member.members == ("alive",)  # at once, not after a TTL
        assert all(members == ("alive",) for members in seen)
        await wait_until(
            lambda: _none_present(bus, ["dead-an-hour-ago", "dead-a-minute-ago"]),
            timeout=10,
            what="the dead members' keys deleted",
        )
    finally:
        await member.stop()


async def test_a_beat_found_stored_counts_from_when_the_server_wrote_it(bus):
    await write_beat(bus, "old-version", None)  # no sent_at: a member of an earlier version
    await asyncio.sleep(1.5 * INTERVAL_S + 0.5)  # older than the TTL by the server's clock
    member = Membership(bus, GROUP, "alive", INTERVAL_S)
    await member.start()
    try:
        assert member.members == ("alive",)
    finally:
        await member.stop()


async def test_a_live_members_stored_beat_counts(bus):
    other = Membership(bus, GROUP, "other", INTERVAL_S)
    await other.start()
    member = Membership(bus, GROUP, "alive", INTERVAL_S)
    await member.start()
    try:
        assert member.members == ("alive", "other")
    finally:
        await member.stop()
        await other.stop()


async def test_a_clean_stop_removes_its_own_heartbeat_and_the_others_drop_it_at_once(bus):
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = Membership(bus, GROUP, "a", 30.0)  # a TTL of 45 s: only the goodbye explains a quick drop
    b = Membership(bus, GROUP, "b", 30.0)
    await a.start()
    await b.start()
    runs = [asyncio.create_task(a.run(stop_a)), asyncio.create_task(b.run(stop_b))]
    try:
        await wait_until(lambda: b.members == ("a", "b"), timeout=10, what="b sees a")
        stop_a.set()
        await runs[0]
        await a.stop()
        await wait_until(lambda: b.members == ("b",), timeout=5, what="b drops a")
        assert not await beat_present(bus, "a")
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(*runs)
        await b.stop()


async def test_overlapping_watch_restarts_leave_nothing_behind_after_stop(bus):
    member = Membership(bus, GROUP, "alive", INTERVAL_S)
    await member.start()
    heard = []
    member.listeners.append(heard.append)
    await asyncio.gather(member._restart_watch(), member._restart_watch(), member._restart_watch())
    await member.stop()
    await member._restart_watch()  # a reconnect after stop starts nothing
    await write_beat(bus, "newcomer", time.time())
    await asyncio.sleep(1.0)  # a leaked watcher would hear it well within this
    assert heard == []
    follows = [t for t in asyncio.all_tasks() if "_follow" in repr(t.get_coro())]
    assert follows == []


async def _none_present(bus, members) -> bool:
    return not any([await beat_present(bus, m) for m in members])


async def test_an_observer_follows_the_members_without_being_one(bus, nats_server):
    """The state-keeper watching the proxies: it sends no heartbeat, is never listed, and says how
    long it has watched without a gap (from the re-sync after a reconnect, not from its start)."""
    stop = asyncio.Event()
    proxy = Membership(bus, GROUP, "proxy", INTERVAL_S)
    await proxy.start()
    observer = Membership(bus, GROUP, "observer", INTERVAL_S, watch_only=True)
    await observer.start()
    runs = [asyncio.create_task(proxy.run(stop)), asyncio.create_task(observer.run(stop))]
    try:
        assert proxy.members == ("proxy",)
        # Not at once: nats-py may hand over a stored entry just after its end-of-snapshot marker.
        await wait_until(lambda: observer.members == ("proxy",), timeout=5, what="the observer listing the proxy")
        assert not await beat_present(bus, "observer")
        await wait_until(lambda: observer.watched_for() >= 0.5, timeout=5, what="the observer watching")
        reconnects, restarted = bus.nc.stats["reconnects"], time.monotonic()
        nats_server.restart()
        await wait_until(lambda: bus.nc.stats["reconnects"] > reconnects, timeout=15, what="the reconnect")
        await wait_until(lambda: observer.watched_for() > 0, timeout=15, what="the observer watching again")
        assert observer.watched_for() < time.monotonic() - restarted, "counted from the re-sync, not the start"
        await wait_until(lambda: observer.members == ("proxy",), timeout=10, what="the proxy seen again")
    finally:
        stop.set()
        await asyncio.gather(*runs)
        await observer.stop()
        await proxy.stop()
    assert not await beat_present(bus, "observer"), "an observer leaves no heartbeat behind"


async def test_members_say_which_host_they_act_for_and_older_beats_without_one_still_count(bus):
    await write_beat(bus, "old-version", time.time())  # a beat of before host ids: a member, of no host
    a = Membership(bus, GROUP, "a", 30.0, host_id="host-a")
    await a.start()
    b = Membership(bus, GROUP, "b", 30.0, host_id="host-b")
    await b.start()
    stop_a = asyncio.Event()
    run_a = asyncio.create_task(a.run(stop_a))
    try:
        assert b.members == ("a", "b", "old-version")
        assert b.host_ids() == {"host-a", "host-b"}
        stop_a.set()
        await run_a
        await a.stop()
        await wait_until(lambda: b.host_ids() == {"host-b"}, timeout=5, what="b drops host-a with its member")
    finally:
        stop_a.set()
        await run_a
        await b.stop()
