"""Applying one decoded event: pure changes from shared.policy, written through the Store.

Raises `Rejected` for events that can never apply (terminated and counted)
and `EngineNotKnownYet` for events that may apply once an in-flight
`engine.registered` lands (redelivered later, for a bounded time).

Every event comes with `seq`, its sequence in ACE_EVENTS: the one order all
replicas agree on and no reporter's clock can skew. Health reports and an
engine's registrations and removals are ordered by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn

import msgspec

from services.state_keeper.store import Store
from shared.kv import DELETE
from shared.policy.clock import ClockSkewed, off_by
from shared.policy.events import (
    EngineFull,
    apply_engine_cleaned,
    apply_engine_registered,
    apply_stream_ended_to_stream,
    apply_stream_started_to_stream,
    forget_sequences_beyond,
    reconcile_stream,
    removal_applies,
)
from shared.policy.health import HealthPolicy, check_report, observe
from shared.schemas import (
    EngineCleaned,
    EngineHealth,
    EngineIdle,
    EngineRecord,
    EngineRegistered,
    EngineRemoval,
    EngineRemoved,
    StreamEnded,
    StreamRecord,
    StreamStarted,
    utcnow,
)

log = logging.getLogger("state-keeper")


class Rejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EngineNotKnownYet(Exception):
    pass


@dataclass
class EventApplier:
    store: Store
    health: HealthPolicy
    publish_idle: Callable[[EngineIdle], Awaitable[None]]
    max_clock_skew_s: float = 30.0  # MAX_CLOCK_SKEW_S
    # An engine's registrations, removals and health reports, one at a time in the order they arrive
    # (the consumer starts handlers in sequence order). A removal and the next life's registration of
    # the same id (a local engine's replacement on its port) applied at once left the old life's
    # record; a report overtaken by the next one is dropped (see `observe`), which broke the streaks
    # of the rise/fall thresholds.
    _lifecycles: dict[str, tuple[asyncio.Lock, list[int]]] = field(default_factory=dict)  # id → (lock, [users])

    async def apply(self, event: object, seq: int) -> None:
        """Apply one event; `seq` is its sequence in ACE_EVENTS (`msg.metadata.sequence.stream`)."""
        match event:
            case StreamStarted():
                await self.stream_started(event, seq)
            case StreamEnded():
                await self.stream_ended(event)
            case EngineHealth():
                async with self._lifecycle(event.container_id):
                    await self.engine_health(event, seq)
            case EngineRegistered():
                await self.engine_registered(event, seq)
            case EngineRemoved():
                await self.engine_removed(event, seq)
            case EngineCleaned():
                await self.engine_cleaned(event, seq)

    async def forget_sequences_beyond(self, last_seq: int) -> None:
        """At start-up, with `last_seq` read after the views were loaded: sequences in records and
        tombstones that ACE_EVENTS never reached are from an earlier events stream (deleted and made
        again); forgotten, or every new event would look older than them and change nothing."""
        for cid, item in list(self.store.engines.items().items()):
            if forget_sequences_beyond(item.value, last_seq) is not item.value:
                log.warning(
                    "engine %s: its sequences are beyond ACE_EVENTS' last (%d): the events stream "
                    "was made again; forgetting them",
                    cid,
                    last_seq,
                )
                await self.store.update_engine(cid, lambda r: forget_sequences_beyond(r, last_seq) if r else None)
        dropped = await self.store.delete_removals(lambda removal: removal.removed_seq > last_seq)
        if dropped:
            log.warning("dropped %d tombstones beyond ACE_EVENTS' last sequence (%d)", dropped, last_seq)

    # ------------------------------------------------------------ engines

    @contextlib.asynccontextmanager
    async def _lifecycle(self, container_id: str) -> AsyncIterator[None]:
        lock, users = self._lifecycles.setdefault(container_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._lifecycles[container_id]  # nobody holds or awaits it: only busy engines are kept

    async def engine_registered(self, event: EngineRegistered, seq: int) -> None:
        async with self._lifecycle(event.container_id):
            await self._engine_registered(event, seq)

    async def _engine_registered(self, event: EngineRegistered, seq: int) -> None:
        """Create or refresh the record unless the engine's removal is newer (see `apply_engine_registered`).

        The tombstone is read before the write (a redelivery after the removal writes nothing)
        and again after it: a removal applied concurrently writes its tombstone before it deletes,
        so either its delete finds our record or our second look finds its tombstone. A removal
        older than us whose tombstone is there but whose record is still of the life before it
        (it failed half-way and waits for its redelivery) is finished first: the next life starts
        from nothing, as it would have in sequence.
        """
        cid = event.container_id
        removal = await self.store.get_removal(cid)
        removed_seq = removal.removed_seq if removal else 0
        if removal is not None and removed_seq < seq:
            earlier = await self.store.get_engine(cid)
            if earlier is not None and removal_applies(earlier.value, removed_seq):
                await self.remove_engine(cid, removed_seq, removal.reason)
        now = utcnow()
        outcome = await self.store.update_engine(
            cid, lambda r: apply_engine_registered(r, event, now, seq, removed_seq), use_cache=False
        )
        if not outcome.written:
            if seq <= removed_seq:
                log.info("engine %s: registration #%d is older than its removal #%d; ignored", cid, seq, removed_seq)
            return
        if outcome.before is None:
            log.info(
                "engine %s registered at %s:%d (%s)",
                outcome.result().container_name,
                event.host,
                event.port,
                event.runtime,
            )
        removal = await self.store.get_removal(cid)
        if removal is not None and removal.removed_seq > seq:
            await self.remove_engine(cid, removal.removed_seq, removal.reason)

    async def engine_health(self, event: EngineHealth, seq: int) -> None:
        now = utcnow()
        try:
            check_report(event, now, self.max_clock_skew_s)
        except ClockSkewed as exc:
            raise Rejected("clock_skew", f"engine {event.container_id}: {exc}") from None
        outcome = await self.store.update_engine(
            event.container_id, lambda r: observe(r, event, self.health, now, seq) if r else None
        )
        before, after = outcome.before, outcome.after
        if after is None:
            await self._missing(event.container_id, seq)
        if before is not None and before.health_status != after.health_status:
            if after.health_status == "unhealthy":
                log.warning(
                    "engine %s unhealthy (%s, %d consecutive)",
                    after.container_name,
                    event.error,
                    after.consecutive_failures,
                )
            else:
                log.info("engine %s %s (was %s)", after.container_name, after.health_status, before.health_status)

    async def engine_cleaned(self, event: EngineCleaned, seq: int) -> None:
        now = utcnow()
        outcome = await self.store.update_engine(
            event.container_id, lambda r: apply_engine_cleaned(r, event, now) if r else None
        )
        if outcome.after is None:
            await self._missing(event.container_id, seq)

    async def engine_removed(self, event: EngineRemoved, seq: int) -> None:
        async with self._lifecycle(event.container_id):
            await self._engine_removed(event, seq)

    async def _engine_removed(self, event: EngineRemoved, seq: int) -> None:
        """Leave a tombstone first (so a registration racing us sees it), then remove the engine."""
        removal = EngineRemoval(
            container_id=event.container_id, removed_seq=seq, removed_at=utcnow(), reason=event.reason
        )
        await self.store.record_removal(removal)
        await self.remove_engine(event.container_id, seq, event.reason)

    async def remove_engine(self, container_id: str, seq: int, why: str | None) -> None:
        """End the engine's streams, then delete its record once it holds none (CAS) — unless a
        registration newer than the removal at `seq` made the record again (that one wins)."""
        reason = f"engine_removed: {why}" if why else "engine_removed"
        while True:
            current = await self.store.get_engine(container_id)
            if current is None:
                return
            if not removal_applies(current.value, seq):
                log.info(
                    "engine %s: removal #%d is older than its registration #%d; kept",
                    container_id,
                    seq,
                    current.value.registered_seq,
                )
                return
            for stream_id in current.value.streams:
                # An absent record gets an ended tombstone: a start still writing it must see the end.
                ended = StreamEnded(stream_id=stream_id, container_id=container_id, reason=reason)
                await self.store.update_stream(stream_id, functools.partial(self._end, event=ended))

            def delete_if_unchanged(record: EngineRecord | None) -> object:
                unchanged = record is not None and record.streams == current.value.streams  # noqa: B023  # called in this iteration
                return DELETE if unchanged and removal_applies(record, seq) else record

            outcome = await self.store.update_engine(container_id, delete_if_unchanged, use_cache=False)
            if outcome.written:
                log.info("engine %s removed (%s)", current.value.container_name, why or "no reason given")
                return

    # ------------------------------------------------------------ streams

    def _resolve(self, event: StreamStarted) -> str:
        if event.container_id:
            return event.container_id
        if event.host and event.port:
            found = self.store.find_by_address(event.host, event.port)
            if found is None:
                raise EngineNotKnownYet(f"no engine at {event.host}:{event.port}")
            return found
        raise Rejected("missing_engine", "stream.started needs container_id or host and port")

    async def stream_started(self, event: StreamStarted, seq: int) -> None:
        """The engine first, then the stream record.

        The stream's compare-and-set then reports any end written before it, and an
        end written after it finds the stream on the engine and takes it off: no read
        is needed to catch an end applied concurrently (on this or another replica).
        A start the engine's record has no room for (MAX_RECORD_STREAMS) is refused
        before anything is written.
        """
        container_id = self._resolve(event)
        if self.store.engines.get(container_id) is None and await self.store.get_engine(container_id) is None:
            await self._missing(container_id, seq)
        now = utcnow()
        self._log_skew(event.stream_id, "started_at", event.started_at, now)
        known = self.store.streams.get(event.stream_id)
        expected = apply_stream_started_to_stream(known.value if known else None, event, container_id, now)
        host = expected.container_id or container_id
        try:
            present = await self.reconcile(host, expected, event.reservation_id)
        except EngineFull as exc:
            raise Rejected("engine_full", str(exc)) from None
        stream = (
            await self.store.update_stream(
                event.stream_id, lambda s: apply_stream_started_to_stream(s, event, container_id, now)
            )
        ).result()
        settled_host = stream.container_id or container_id
        why_not = "engine_removed"
        try:
            if settled_host != host:
                # A record our view had not seen puts the stream on another engine: take our add back.
                await self.reconcile(host, msgspec.structs.replace(expected, status="ended"), None)
                present = await self.reconcile(settled_host, stream, event.reservation_id)
            elif stream.status != expected.status:
                # An end was written before our start (or the record changed under a stale view).
                present = await self.reconcile(host, stream, event.reservation_id)
        except EngineFull as exc:
            present, why_not = False, f"refused: {exc}"
        if stream.status == "started" and not present:
            # The engine went away (or has no room): the stream cannot be playing on it.
            gone = StreamEnded(stream_id=stream.stream_id, container_id=settled_host, reason=why_not)
            await self.store.update_stream(stream.stream_id, lambda s: self._end(s, gone, now))
            if why_not != "engine_removed":
                raise Rejected("engine_full", why_not)

    async def stream_ended(self, event: StreamEnded) -> None:
        now = utcnow()
        self._log_skew(event.stream_id, "ended_at", event.ended_at, now)
        stream = (await self.store.update_stream(event.stream_id, lambda s: self._end(s, event, now))).result()
        container_id = stream.container_id or event.container_id
        if container_id:
            await self.reconcile(container_id, stream, None)

    async def reconcile(self, container_id: str, stream: StreamRecord, reservation_id: str | None) -> bool:
        """Make the engine's `streams` agree with the stream record; False when the engine is gone."""
        now = utcnow()
        notes: list[EngineIdle] = []

        def change(record: EngineRecord | None) -> object:
            notes.clear()
            if record is None:
                return None
            result = reconcile_stream(record, stream, now, reservation_id)
            notes.extend(result.notifications)
            return result.record

        outcome = await self.store.update_engine(container_id, change)
        if outcome.written:
            for note in notes:
                await self.publish_idle(note)
        return outcome.after is not None

    def _end(self, stream: StreamRecord | None, event: StreamEnded, now: datetime | None = None) -> StreamRecord:
        return apply_stream_ended_to_stream(stream, event, now or utcnow(), self.max_clock_skew_s)

    def _log_skew(self, stream_id: str, field: str, stamp: datetime | None, now: datetime) -> None:
        """A proxy's clock running ahead is worth an operator's look (its stamps are replaced by
        ours); one behind is not: replaying events after an outage gives old stamps too."""
        off = off_by(stamp, now, self.max_clock_skew_s)
        if off is not None and off > 0:
            log.warning(
                "stream %s: %s is %.0fs ahead of the state-keeper's clock (MAX_CLOCK_SKEW_S=%g); taken as now",
                stream_id,
                field,
                off,
                self.max_clock_skew_s,
            )

    async def _missing(self, container_id: str, seq: int) -> NoReturn:
        """No record: an event older than the engine's removal is dropped; any other may be for an
        engine whose (re-)registration is still in flight, and is retried for a while."""
        removal = await self.store.get_removal(container_id)
        if removal is not None and seq < removal.removed_seq:
            raise Rejected(
                "removed_engine", f"engine {container_id} was removed (event #{seq}, removal #{removal.removed_seq})"
            )
        raise EngineNotKnownYet(f"engine {container_id} not registered (yet)")
