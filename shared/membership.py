"""Which replicas of a service are alive: heartbeats in the leases bucket.

Each member publishes `members.<group>.<id>` every interval/3 with a
per-message TTL, and watches `members.<group>.>`. A member is alive while its
last heartbeat is younger than the TTL (1.5 intervals) *as seen by this
replica's own monotonic clock*, so a killed replica drops out of everyone's
list within 1.5 intervals without any clock agreement between hosts. The
server-side TTL only keeps the bucket from collecting dead members (a fresh
watcher's snapshot holds only recent heartbeats; their age is taken from the
message timestamp).

A member that stops cleanly publishes a `leaving` heartbeat, so the others
rebalance at once instead of waiting for the TTL. While this replica is
disconnected from NATS, or its watch is re-syncing after a reconnect, nobody
is expired: silence then says nothing about the others.
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

import msgspec
import nats.errors
from nats.js import api
from nats.js.kv import KV_DEL, KV_PURGE

from shared.bus import Bus

log = logging.getLogger(__name__)

TTL_INTERVALS = 1.5
RENEWALS_PER_INTERVAL = 3
LEAVING_TTL_S = 1


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    member: str
    host: str
    pid: int
    leaving: bool = False


_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(Heartbeat).decode


def new_member_id(prefix: str = "") -> str:
    """A unique, KV-key-safe id that still says where the replica runs."""
    host = re.sub(r"[^-_a-zA-Z0-9]", "-", socket.gethostname())[:40] or "host"
    return f"{prefix}{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Membership:
    """The live members of `group`, this replica included; `listeners` hear every change."""

    def __init__(self, bus: Bus, group: str, member_id: str, interval_s: float, clock=time.monotonic) -> None:
        self.bus = bus
        self.group = group
        self.me = member_id
        self.ttl_s = TTL_INTERVALS * interval_s
        self.renew_s = interval_s / RENEWALS_PER_INTERVAL
        self.listeners: list[Callable[[tuple[str, ...]], None]] = []
        self._clock = clock
        self._seen: dict[str, float] = {}  # member → local monotonic time its last heartbeat was sent
        self._members: tuple[str, ...] = (member_id,)
        self._synced = False
        self._watcher = None
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        bus.on_reconnect(self._restart_watch)

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    @property
    def subject_prefix(self) -> str:
        return f"$KV.{self.bus.leases._name}.members.{self.group}."

    # ------------------------------------------------------------ lifecycle

    async def start(self, timeout_s: float = 10.0) -> None:
        """Announce this member and wait for the current member list."""
        await self._heartbeat()
        await self._restart_watch()
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Renew the heartbeat and expire silent members until `stop` is set, then say goodbye."""
        try:
            await self._renew_and_expire(stop)
        finally:
            await self._publish(self._beat(leaving=True), ttl_s=LEAVING_TTL_S)  # the others take over now

    async def _renew_and_expire(self, stop: asyncio.Event) -> None:
        next_renewal = self._clock() + self.renew_s
        while not stop.is_set():
            now = self._clock()
            if now >= next_renewal:
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
        await self._stop_watch()

    # ------------------------------------------------------------ heartbeats

    def _beat(self, leaving: bool = False) -> Heartbeat:
        return Heartbeat(member=self.me, host=socket.gethostname(), pid=os.getpid(), leaving=leaving)

    async def _heartbeat(self) -> None:
        await self._publish(self._beat(), ttl_s=max(1, math.ceil(self.ttl_s)))

    async def _publish(self, beat: Heartbeat, ttl_s: int) -> None:
        # Core publish lands in the bucket's stream too; it never blocks the
        # expiry loop behind an ack, and a lost beat is covered by the next one.
        try:
            await self.bus.nc.publish(
                self.subject_prefix + self.me, _encode(beat), headers={api.Header.MSG_TTL: f"{ttl_s}s"}
            )
        except (nats.errors.Error, OSError) as exc:
            log.debug("heartbeat of %s not sent: %s", self.me, exc)

    # ------------------------------------------------------------ watch

    async def _restart_watch(self) -> None:
        await self._stop_watch()
        self._synced = False
        self._watcher = await self.bus.leases.watch(f"members.{self.group}.>")
        self._task = asyncio.get_running_loop().create_task(self._follow(self._watcher))

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

    async def _follow(self, watcher) -> None:
        snapshot = True
        async for entry in watcher:
            if entry is None:
                snapshot = False
                self._synced = True
                self._ready.set()
                self._refresh()
                continue
            self._on_entry(entry, snapshot)

    def _on_entry(self, entry, snapshot: bool) -> None:
        member = entry.key.rsplit(".", 1)[-1]
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self._seen.pop(member, None)
        else:
            try:
                beat = _decode(entry.value)
            except msgspec.DecodeError as exc:
                log.warning("ignoring malformed heartbeat %s: %s", entry.key, exc)
                return
            if beat.leaving:
                self._seen.pop(member, None)
            else:
                self._seen[member] = max(self._seen.get(member, -math.inf), self._sent_at(entry, snapshot))
        if not snapshot:
            self._refresh()

    def _sent_at(self, entry, snapshot: bool) -> float:
        """When a heartbeat was sent, on our monotonic clock.

        Live beats count from their arrival. Snapshot entries may be old: their
        age comes from the server's timestamp (bounded, so a skewed clock can
        at worst keep a dead member one TTL longer, never drop a live one early).
        """
        now = self._clock()
        if not snapshot or entry.created is None:
            return now
        age = time.time() - entry.created.timestamp()
        return now - min(max(age, 0.0), self.ttl_s)

    # ------------------------------------------------------------ liveness

    def _expire(self, now: float) -> None:
        if not self._synced or not self.bus.nc.is_connected:
            return  # our own silence, not theirs
        dead = [member for member, seen in self._seen.items() if member != self.me and now - seen >= self.ttl_s]
        for member in dead:
            del self._seen[member]
            log.info("member %s of %s stopped renewing its heartbeat; dropping it", member, self.group)
        if dead:
            self._refresh()

    def _refresh(self) -> None:
        members = tuple(sorted(set(self._seen) | {self.me}))
        if members == self._members:
            return
        self._members = members
        for listener in self.listeners:
            listener(members)
