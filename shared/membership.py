"""Which replicas of a service are alive: heartbeats in the leases bucket.

Each member publishes `members.<group>.<id>` every interval/3 with a
per-message TTL, and watches `members.<group>.>`. A member is alive while its
last heartbeat is younger than the TTL (1.5 intervals). Beats that arrive
while we watch count from their arrival on this replica's own monotonic
clock, so a killed replica drops out of everyone's list within 1.5 intervals
without any clock agreement between hosts. Beats found already stored (a
fresh watch's snapshot, after a start or a reconnect) count from when they
were written: the server's timestamp of the entry, or the sender's own
`sent_at` in the value, whichever is older. The presence of a key proves
nothing: after a nats-server restart on an existing store the server may not
enforce per-message TTLs (DESIGN §9), so heartbeats of replicas dead for
hours are still there. One older than the TTL is never listed, not even for
the moment between the snapshot and the first expiry round, and the member
that drops a dead replica deletes its key (compare-and-set on the revision it
saw, so a replica that came back meanwhile keeps its beat).

A member that stops cleanly deletes its own heartbeat (a delete marker with a
short TTL), so the others rebalance at once instead of waiting for the TTL,
and nothing of it is left behind. While this replica is disconnected from
NATS, or its watch is re-syncing after a reconnect, nobody is expired:
silence then says nothing about the others. Watch restarts (one per
reconnect) are serialised, and none starts after `stop`.

An observer (`watch_only=True`: the state-keeper watching the proxies) follows a
group without being a member: it sends no heartbeat and is not listed.
`watched_for()` says how long it has followed the group without a gap; only
after a TTL of that does a missing member mean a dead one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import cast

import msgspec
import nats.errors
from nats.js import api
from nats.js.errors import APIError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from shared.bus import Bus

log = logging.getLogger(__name__)

TTL_INTERVALS = 1.5
RENEWALS_PER_INTERVAL = 3
MARKER_TTL_S = 1  # a heartbeat's delete marker vanishes after this


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    member: str
    host: str
    pid: int
    leaving: bool = False  # said by members of earlier versions instead of deleting their key
    sent_at: float | None = None  # the sender's wall clock (seconds since the epoch)
    host_id: str | None = None  # the HOST_ID the member acts for (agents of many hosts); absent in older beats


_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(Heartbeat).decode


def new_member_id(prefix: str = "") -> str:
    """A unique, KV-key-safe id that still says where the replica runs."""
    host = re.sub(r"[^-_a-zA-Z0-9]", "-", socket.gethostname())[:40] or "host"
    return f"{prefix}{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Membership:
    """The live members of `group`, this replica included (unless `watch_only`); `listeners` hear every change."""

    def __init__(
        self,
        bus: Bus,
        group: str,
        member_id: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        watch_only: bool = False,
        host_id: str | None = None,
    ) -> None:
        self.bus = bus
        self.host_id = host_id
        self.watch_only = watch_only
        self.group = group
        self.me = member_id
        self.ttl_s = TTL_INTERVALS * interval_s
        self.renew_s = interval_s / RENEWALS_PER_INTERVAL
        self.listeners: list[Callable[[tuple[str, ...]], None]] = []
        self._clock = clock
        self._seen: dict[str, float] = {}  # member → local monotonic time its last heartbeat was sent
        self._hosts: dict[str, str] = {}  # member → the host_id its latest beat named
        self._revisions: dict[str, int | None] = {}  # member → revision of its last heartbeat (to delete a dead one's)
        self._members: tuple[str, ...] = () if watch_only else (member_id,)
        self._synced = False
        self._synced_at = (0.0, 0)  # (our clock, the connection's reconnect count) when the watch last synced
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._watch_lock = asyncio.Lock()  # one watch (re)start or stop at a time
        self._stopped = False
        self._cleanups: set[asyncio.Task[bool]] = set()
        bus.on_reconnect(self._restart_watch)

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    def host_ids(self) -> frozenset[str]:
        """The hosts the live members act for (this one's included); members that name none are left out."""
        hosts = {self._hosts[m] for m in self._members if m in self._hosts}
        return frozenset(hosts | ({self.host_id} if self.host_id and not self.watch_only else set()))

    @property
    def subject_prefix(self) -> str:
        return f"$KV.{self.bus.leases._name}.members.{self.group}."

    # ------------------------------------------------------------ lifecycle

    async def start(self, timeout_s: float = 10.0) -> None:
        """Announce this member and wait for the current member list."""
        if not self.watch_only:
            # Acknowledged: stored before `start` returns, so whoever starts watching after us finds
            # it among the stored entries (a core publish may still be on its way into the stream).
            await self._heartbeat(acknowledged=True)
        await self._restart_watch()
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Renew the heartbeat and expire silent members until `stop` is set, then say goodbye."""
        try:
            await self._renew_and_expire(stop)
        finally:
            if not self.watch_only:
                await self._leave()  # the others take over now

    async def _renew_and_expire(self, stop: asyncio.Event) -> None:
        next_renewal = self._clock() + self.renew_s
        while not stop.is_set():
            now = self._clock()
            if now >= next_renewal:
                if not self.watch_only:
                    await self._heartbeat()
                next_renewal = now + self.renew_s
            self._expire(now)
            # Wake for the next renewal or the next expiry, whichever is first.
            expiries = [seen + self.ttl_s for seen in self._seen.values() if seen + self.ttl_s > now]
            wake = min([next_renewal, *expiries])
            try:
                async with asyncio.timeout(max(wake - self._clock(), 0.01)):
                    await stop.wait()
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop watching for good: a reconnect after this starts no new watch."""
        self._stopped = True
        async with self._watch_lock:
            await self._stop_watch()
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    # ------------------------------------------------------------ heartbeats

    def _beat(self) -> Heartbeat:
        return Heartbeat(
            member=self.me, host=socket.gethostname(), pid=os.getpid(), sent_at=time.time(), host_id=self.host_id
        )

    async def _heartbeat(self, acknowledged: bool = False) -> None:
        subject, beat = self.subject_prefix + self.me, _encode(self._beat())
        headers: dict[str, str] = {api.Header.MSG_TTL: f"{max(1, math.ceil(self.ttl_s))}s"}
        # Renewals are core publishes: they land in the bucket's stream too, never block the
        # expiry loop behind an ack, and a lost one is covered by the next.
        try:
            if acknowledged:
                await self.bus.js.publish(subject, beat, headers=headers, timeout=2.0)
            else:
                await self.bus.nc.publish(subject, beat, headers=headers)
        except (TimeoutError, nats.errors.Error, APIError, OSError) as exc:
            log.debug("heartbeat of %s not sent: %s", self.me, exc)

    async def _leave(self) -> None:
        """Delete our heartbeat: the others see the delete marker at once."""
        if not await self._delete_beat(self.me):
            log.debug("heartbeat of %s not deleted; it expires after %gs", self.me, self.ttl_s)

    def _forget_dead(self, member: str) -> None:
        """Delete a dead member's heartbeat (only the beat we judged: compare-and-set on its revision)."""
        revision = self._revisions.pop(member, None)
        if revision is None or self._stopped:
            return
        task = asyncio.get_running_loop().create_task(self._delete_beat(member, revision))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _delete_beat(self, member: str, revision: int | None = None) -> bool:
        """A delete marker for `member`'s beat (only over `revision` when given), itself gone after
        MARKER_TTL_S, so no key is left behind; False if it was not written."""
        headers = {KV_OP: KV_DEL, api.Header.MSG_TTL: f"{MARKER_TTL_S}s"}
        if revision is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(revision)
        try:
            await self.bus.js.publish(self.subject_prefix + member, b"", headers=headers, timeout=2.0)
        except (TimeoutError, nats.errors.Error, APIError, OSError) as exc:
            # For a dead member: another member deleted it first, or it renewed (alive after all).
            log.debug("heartbeat of %s not deleted: %s", member, exc)
            return False
        return True

    # ------------------------------------------------------------ watch

    async def _restart_watch(self) -> None:
        """(Re)start the watch; serialised, so overlapping reconnects never leave a second watcher behind."""
        async with self._watch_lock:
            await self._stop_watch()
            if self._stopped:
                return
            self._synced = False
            # Entries stored before the watch began are judged by their age even when nats-py hands
            # them over after its end-of-snapshot marker (its "nothing pending" check can run before
            # the values already on their way are delivered); only later ones are live beats.
            stored_until = (await self.bus.js.stream_info(self.bus.leases._stream)).state.last_seq
            self._watcher = await self.bus.leases.watch(f"members.{self.group}.>")
            self._task = asyncio.get_running_loop().create_task(self._follow(self._watcher, stored_until))

    async def _stop_watch(self) -> None:
        task, watcher = self._task, self._watcher
        self._task = self._watcher = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if watcher is not None:
            try:
                await watcher.stop()
            except Exception as exc:  # the subscription may have gone with the old connection
                log.debug("stopping membership watch: %s", exc)

    async def _follow(self, watcher: KeyValue.KeyWatcher, stored_until: int) -> None:
        snapshot = True
        async for entry in watcher:
            if entry is None:
                snapshot = False
                self._synced = True
                self._synced_at = (self._clock(), self.bus.nc.stats["reconnects"])
                self._ready.set()
                self._refresh()
                continue
            self._on_entry(entry, snapshot, stored=snapshot or (entry.revision or 0) <= stored_until)

    def _on_entry(self, entry: KeyValue.Entry, snapshot: bool, stored: bool) -> None:
        member = entry.key.rsplit(".", 1)[-1]
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self._seen.pop(member, None)
            self._revisions.pop(member, None)
        else:
            try:
                beat = _decode(entry.value)
            except msgspec.DecodeError as exc:
                log.warning("ignoring malformed heartbeat %s: %s", entry.key, exc)
                return
            if beat.leaving:
                self._seen.pop(member, None)
            else:
                sent = self._sent_at(entry, beat, stored)
                if sent is None and member != self.me:
                    # Written longer than a TTL ago: a replica of an earlier run, whatever the key's presence says.
                    log.info(
                        "member %s of %s left a heartbeat older than %gs; not a member", member, self.group, self.ttl_s
                    )
                    self._seen.pop(member, None)
                    self._revisions[member] = entry.revision
                    self._forget_dead(member)
                else:
                    now = self._clock()
                    self._seen[member] = max(self._seen.get(member, -math.inf), now if sent is None else sent)
                    self._revisions[member] = entry.revision
                    if beat.host_id:
                        self._hosts[member] = beat.host_id
        if not snapshot:
            self._refresh()

    def _sent_at(self, entry: KeyValue.Entry, beat: Heartbeat, stored: bool) -> float | None:
        """When a heartbeat was sent, on our monotonic clock; None if that is a TTL ago or more.

        Live beats count from their arrival. Stored ones (a snapshot) may be old: their age
        is the older of the server's timestamp and the sender's `sent_at` (a skewed clock can
        at worst hide a live member until its next beat, a third of an interval away).
        """
        now = self._clock()
        if not stored:
            return now
        wall = time.time()
        created = cast("datetime | None", entry.created)  # nats-py annotates it int, but sets the message's datetime
        ages = [wall - created.timestamp()] if created is not None else []
        if beat.sent_at is not None:
            ages.append(wall - beat.sent_at)
        age = max(ages, default=0.0)
        if age >= self.ttl_s:
            return None
        return now - max(age, 0.0)

    # ------------------------------------------------------------ liveness

    def watched_for(self) -> float:
        """Seconds this replica has followed the group without a gap: 0 while disconnected, and
        from the latest reconnect's re-sync on (a member may have died unheard in between)."""
        synced_at, reconnects = self._synced_at
        if not self._synced or not self.bus.nc.is_connected or self.bus.nc.stats["reconnects"] != reconnects:
            return 0.0
        return self._clock() - synced_at

    def _expire(self, now: float) -> None:
        if not self._synced or not self.bus.nc.is_connected:
            return  # our own silence, not theirs
        dead = [member for member, seen in self._seen.items() if member != self.me and now - seen >= self.ttl_s]
        for member in dead:
            del self._seen[member]
            log.info("member %s of %s stopped renewing its heartbeat; dropping it", member, self.group)
            self._forget_dead(member)
        if dead:
            self._refresh()

    def _refresh(self) -> None:
        for gone in set(self._hosts) - set(self._seen):
            del self._hosts[gone]
        members = tuple(sorted(set(self._seen) | (set() if self.watch_only else {self.me})))
        if members == self._members:
            return
        self._members = members
        for listener in self.listeners:
            listener(members)
