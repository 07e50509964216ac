"""`GET /api/live`: a snapshot, then engine and stream changes, as Server-Sent Events.

Changes come from the KV views' listeners, so they keep flowing after a NATS
reconnect (the views re-establish their watches). Each client holds at most
one pending change per key: a slow client gets the latest state of what
changed, never an unbounded backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from litestar.response import ServerSentEventMessage

from shared.schemas import encode, utcnow
from services.gateway.fleet import Fleet

RECONNECT_MS = 2000  # EventSource waits this long before reconnecting


@dataclass(eq=False)
class _Client:
    pending: dict[tuple[str, str], object] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class LiveFeed:
    def __init__(self, fleet: Fleet, keepalive_s: float, max_streams_per_engine: int) -> None:
        self.fleet = fleet
        self.keepalive_s = keepalive_s
        self.max_streams_per_engine = max_streams_per_engine
        self.closed = False
        self._clients: set[_Client] = set()
        fleet.engines.listeners.append(lambda key, value: self._push("engine", key, value))
        fleet.streams.listeners.append(lambda key, value: self._push("stream", key, value))

    @property
    def clients(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        """End every open stream (shutdown); browsers reconnect to another replica or later."""
        self.closed = True
        for client in self._clients:
            client.wake.set()

    def _push(self, kind: str, key: str, value: object) -> None:
        for client in self._clients:
            client.pending[(kind, key)] = value
            client.wake.set()

    async def events(self) -> AsyncIterator[ServerSentEventMessage]:
        client = _Client()
        self._clients.add(client)  # before the snapshot, so no change falls between the two
        try:
            yield ServerSentEventMessage(event="snapshot", data=self._snapshot(), retry=RECONNECT_MS)
            while not self.closed:
                try:
                    await asyncio.wait_for(client.wake.wait(), self.keepalive_s)
                except TimeoutError:
                    yield ServerSentEventMessage(comment="keepalive", data=None)
                    continue
                client.wake.clear()
                batch, client.pending = client.pending, {}
                for (kind, key), value in batch.items():
                    yield self._change(kind, key, value)
        finally:
            self._clients.discard(client)

    def _snapshot(self) -> str:
        now = utcnow()
        return encode(
            {
                "server_time": now,
                "max_streams_per_engine": self.max_streams_per_engine,
                "engines": self.fleet.engine_list(now),
                "streams": self.fleet.stream_list(status="started"),
            }
        ).decode()

    def _change(self, kind: str, key: str, value: object) -> ServerSentEventMessage:
        if kind == "engine" and value is not None:
            value = self.fleet.engine(key, utcnow()) or value
        return ServerSentEventMessage(event=kind, data=encode({"id": key, kind: value}).decode())
