"""Applying one decoded event: pure changes from shared.policy, written through the Store.

Raises `Rejected` for events that can never apply (terminated and counted)
and `EngineNotKnownYet` for events that may apply once an in-flight
`engine.registered` lands (redelivered later, for a bounded time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec

from shared.kv import DELETE
from shared.policy.events import (
    apply_engine_cleaned,
    apply_engine_registered,
    apply_stream_ended_to_stream,
    apply_stream_started_to_stream,
    reconcile_stream,
)
from shared.policy.health import HealthPolicy, observe
from shared.schemas import (
    EngineCleaned,
    EngineHealth,
    EngineIdle,
    EngineRecord,
    EngineRegistered,
    EngineRemoved,
    StreamEnded,
    StreamRecord,
    StreamStarted,
    utcnow,
)
from services.state_keeper.store import Store

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
    publish_idle: object  # async (EngineIdle) -> None

    async def apply(self, event: object) -> None:
        match event:
            case StreamStarted():
                await self.stream_started(event)
            case StreamEnded():
                await self.stream_ended(event)
            case EngineHealth():
                await self.engine_health(event)
            case EngineRegistered():
                await self.engine_registered(event)
            case EngineRemoved():
                await self.engine_removed(event)
            case EngineCleaned():
                await self.engine_cleaned(event)

    # ------------------------------------------------------------ engines

    async def engine_registered(self, event: EngineRegistered) -> None:
        now = utcnow()
        outcome = await self.store.update_engine(
            event.container_id, lambda r: apply_engine_registered(r, event, now), use_cache=False
        )
        if outcome.before is None:
            log.info(
                "engine %s registered at %s:%d (%s)",
                outcome.after.container_name, event.host, event.port, event.runtime,
            )

    async def engine_health(self, event: EngineHealth) -> None:
        now = utcnow()
        outcome = await self.store.update_engine(
            event.container_id, lambda r: observe(r, event, self.health, now) if r else None
        )
        before, after = outcome.before, outcome.after
        if after is None:
            self._missing(event.container_id)
        if before is not None and before.health_status != after.health_status:
            if after.health_status == "unhealthy":
                log.warning(
                    "engine %s unhealthy (%s, %d consecutive)",
                    after.container_name, event.error, after.consecutive_failures,
                )
            else:
                log.info("engine %s %s (was %s)", after.container_name, after.health_status, before.health_status)

    async def engine_cleaned(self, event: EngineCleaned) -> None:
        now = utcnow()
        outcome = await self.store.update_engine(
            event.container_id, lambda r: apply_engine_cleaned(r, event, now) if r else None
        )
        if outcome.after is None:
            self._missing(event.container_id)

    async def engine_removed(self, event: EngineRemoved) -> None:
        """End the engine's streams, then delete its record once it holds none (CAS)."""
        reason = f"engine_removed: {event.reason}" if event.reason else "engine_removed"
        while True:
            current = await self.store.get_engine(event.container_id)
            if current is None:
                return
            for stream_id in current.value.streams:
                # An absent record gets an ended tombstone: a start still writing it must see the end.
                ended = StreamEnded(stream_id=stream_id, container_id=event.container_id, reason=reason)
                await self.store.update_stream(stream_id, lambda s: apply_stream_ended_to_stream(s, ended, utcnow()))

            def delete_if_unchanged(record: EngineRecord | None) -> object:
                return DELETE if record is not None and record.streams == current.value.streams else record

            outcome = await self.store.update_engine(event.container_id, delete_if_unchanged, use_cache=False)
            if outcome.written:
                log.info("engine %s removed (%s)", current.value.container_name, event.reason or "no reason given")
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

    async def stream_started(self, event: StreamStarted) -> None:
        """The engine first, then the stream record.

        The stream's compare-and-set then reports any end written before it, and an
        end written after it finds the stream on the engine and takes it off: no read
        is needed to catch an end applied concurrently (on this or another replica).
        """
        container_id = self._resolve(event)
        if self.store.engines.get(container_id) is None and await self.store.get_engine(container_id) is None:
            self._missing(container_id)
        now = utcnow()
        known = self.store.streams.get(event.stream_id)
        expected = apply_stream_started_to_stream(known.value if known else None, event, container_id, now)
        host = expected.container_id or container_id
        present = await self.reconcile(host, expected, event.reservation_id)
        stream = (
            await self.store.update_stream(
                event.stream_id, lambda s: apply_stream_started_to_stream(s, event, container_id, now)
            )
        ).after
        settled_host = stream.container_id or container_id
        if settled_host != host:
            # A record our view had not seen puts the stream on another engine: take our add back.
            await self.reconcile(host, msgspec.structs.replace(expected, status="ended"), None)
            present = await self.reconcile(settled_host, stream, event.reservation_id)
        elif stream.status != expected.status:
            # An end was written before our start (or the record changed under a stale view).
            present = await self.reconcile(host, stream, event.reservation_id)
        if stream.status == "started" and not present:
            # The engine went away: the stream cannot be playing on it.
            gone = StreamEnded(stream_id=stream.stream_id, container_id=settled_host, reason="engine_removed")
            await self.store.update_stream(stream.stream_id, lambda s: apply_stream_ended_to_stream(s, gone, now))

    async def stream_ended(self, event: StreamEnded) -> None:
        now = utcnow()
        stream = (
            await self.store.update_stream(event.stream_id, lambda s: apply_stream_ended_to_stream(s, event, now))
        ).after
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

    def _missing(self, container_id: str) -> None:
        if self.store.was_removed(container_id):
            raise Rejected("removed_engine", f"engine {container_id} was removed")
        raise EngineNotKnownYet(f"engine {container_id} not registered (yet)")
