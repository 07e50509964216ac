"""The state-keeper's access to its two buckets: views for reads, one CAS loop for writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from shared.bus import Bus
from shared.kv import DELETE, Outcome, RecordViews, Versioned, cas_update, read
from shared.policy.events import later_removal, removal_expired
from shared.schemas import EngineRecord, EngineRemoval, StreamRecord, decode_engine, decode_removal, decode_stream

log = logging.getLogger("state-keeper")

# Removed engines' tombstones live in the leases bucket, which no record reader watches: in
# ace_engines every reader (gateway, prober, janitor, reaper, provisioner) would see them as engines.
REMOVAL_PREFIX = "removed."


class ContentIndex:
    """content_key → container ids it plays on, kept from the streams view (for sharing).

    Several viewers of one channel on one engine are several streams: the engine leaves
    `playing[content_key]` only when the last of them ends, so the next viewer still shares.
    """

    def __init__(self) -> None:
        self._by_stream: dict[str, tuple[str, str]] = {}
        self._viewers: dict[tuple[str, str], int] = {}  # (content_key, container_id) → started streams
        self.playing: dict[str, set[str]] = {}

    def on_change(self, stream_id: str, stream: StreamRecord | None) -> None:
        old = self._by_stream.pop(stream_id, None)
        if old is not None:
            self._leave(old)
        if stream and stream.status == "started" and stream.content_key and stream.container_id:
            pair = (stream.content_key, stream.container_id)
            self._by_stream[stream_id] = pair
            self._viewers[pair] = self._viewers.get(pair, 0) + 1
            self.playing.setdefault(stream.content_key, set()).add(stream.container_id)

    def _leave(self, pair: tuple[str, str]) -> None:
        left = self._viewers[pair] - 1
        if left:
            self._viewers[pair] = left
            return
        del self._viewers[pair]
        content_key, container_id = pair
        hosts = self.playing[content_key]
        hosts.discard(container_id)
        if not hosts:
            del self.playing[content_key]


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Store(RecordViews):
    def __init__(
        self, bus: Bus, stream_ttl_s: float, on_conflict: Callable[[str, int], None] = lambda _record, _n: None
    ) -> None:
        super().__init__(bus)
        self.stream_ttl_s = stream_ttl_s
        self.on_conflict = on_conflict  # (record kind, compare-and-sets lost to other writers)
        self.contents = ContentIndex()
        self.streams.listeners.append(self.contents.on_change)
        self._engine_turns: dict[str, _Turn] = {}

    async def get_engine(self, container_id: str) -> Versioned[EngineRecord] | None:
        found = await read(self.bus.engines, container_id, decode_engine)
        if found is not None:
            self.engines.remember(container_id, found.value, found.revision)
        return found

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        found = await read(self.bus.streams, stream_id, decode_stream)
        return found.value if found else None

    def find_by_address(self, host: str, port: int) -> str | None:
        for key, item in self.engines.items().items():
            if item.value.host == host and item.value.port == port:
                return key
        return None

    async def get_removal(self, container_id: str) -> EngineRemoval | None:
        """The engine's tombstone, if it was removed within STREAM_TTL_S."""
        found = await read(self.bus.leases, REMOVAL_PREFIX + container_id, decode_removal)
        return found.value if found else None

    async def record_removal(self, removal: EngineRemoval) -> EngineRemoval:
        """Write (or keep, if a later one is there) the tombstone of a removal."""
        outcome = await cas_update(
            self.bus.leases,
            REMOVAL_PREFIX + removal.container_id,
            lambda existing: later_removal(existing, removal),
            decode_removal,
        )
        return outcome.result()  # later_removal keeps one of the two

    async def expire_removals(self, now: datetime) -> int:
        """Delete tombstones older than STREAM_TTL_S; housekeeping's job, like ended streams,
        rather than a per-message TTL (DESIGN §4)."""
        ttl_s = self.stream_ttl_s
        return await self.delete_removals(lambda removal: removal_expired(removal, now, ttl_s))

    async def delete_removals(self, doomed: Callable[[EngineRemoval], bool]) -> int:
        """Delete the tombstones `doomed` picks (CAS, so one rewritten meanwhile is judged again)."""
        picked: list[str] = []
        # A short inactive threshold: the server drops this one-off watch's consumer soon after we
        # stop it, instead of keeping one per housekeeping round for nats-py's default 5 minutes.
        watcher = await self.bus.leases.watch(REMOVAL_PREFIX + ">", ignore_deletes=True, inactive_threshold=10.0)
        try:
            async for entry in watcher:
                if entry is None:  # the end of the current values
                    break
                try:
                    removal = decode_removal(entry.value)
                except msgspec.DecodeError as exc:
                    log.warning("tombstone %s cannot be decoded (%s); left alone", entry.key, exc)
                    continue
                if doomed(removal):
                    picked.append(entry.key)
        finally:
            await watcher.stop()
        for key in picked:
            await cas_update(
                self.bus.leases, key, lambda r: DELETE if r is not None and doomed(r) else r, decode_removal
            )
        return len(picked)

    async def update_engine(
        self, container_id: str, change: Callable[[EngineRecord | None], object], *, use_cache: bool = True
    ) -> Outcome[EngineRecord]:
        """One write at a time per engine in this replica: concurrent events and selections for one
        engine would otherwise race each other's compare-and-set (half of them lost it under load),
        each loss costing a round trip. Waiting for our own previous write costs none."""
        turn = self._engine_turns.get(container_id)
        if turn is None:
            turn = self._engine_turns[container_id] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                return await self._update_engine(container_id, change, use_cache)
        finally:
            turn.users -= 1
            if not turn.users:
                del self._engine_turns[container_id]

    async def _update_engine(
        self, container_id: str, change: Callable[[EngineRecord | None], object], use_cache: bool
    ) -> Outcome[EngineRecord]:
        cached = self.engines.get(container_id) if use_cache else None
        latest = (lambda: self.engines.get(container_id)) if use_cache else None
        outcome = await cas_update(self.bus.engines, container_id, change, decode_engine, cached=cached, latest=latest)
        if outcome.conflicts:
            self.on_conflict("engine", outcome.conflicts)
        if outcome.after is not None:
            self.engines.remember(container_id, outcome.after, outcome.revision)
        elif outcome.written:
            self.engines.forget(container_id, outcome.revision)
        return outcome

    async def update_stream(
        self, stream_id: str, change: Callable[[StreamRecord | None], object]
    ) -> Outcome[StreamRecord]:
        # Start from what the view knows (new streams: absent) instead of reading first; the CAS
        # catches a stale view, and most stream keys are new or were written by this replica.
        cached: Versioned[StreamRecord | None] = self.streams.get(stream_id) or Versioned(
            None, self.streams.gone_revision(stream_id)
        )
        outcome = await cas_update(
            self.bus.streams,
            stream_id,
            change,
            decode_stream,
            cached=cached,
            latest=lambda: self.streams.get(stream_id),
        )
        if outcome.conflicts:
            self.on_conflict("stream", outcome.conflicts)
        if outcome.written:
            self.streams.remember(stream_id, outcome.after, outcome.revision)
        return outcome
