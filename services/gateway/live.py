"""`GET /api/live`: a snapshot, then engine and stream changes, as Server-Sent Events.

Changes come from the KV views' listeners, so they keep flowing after a NATS
reconnect (the views re-establish their watches). Each client holds at most
one pending change per key: a slow client gets the latest state of what
changed, never an unbounded backlog.

Each change is encoded once for every client (the first client to send it
encodes the frame, the others send the same bytes), and a client's changes
within BATCH_S go out in one write: with hundreds of clients and a busy
fleet, per-client encoding and per-change writes cost CPU time the API's
reads needed.
The number of clients is capped (LIVE_MAX_CLIENTS); beyond it, 503.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.gateway.fleet import ApiError, Fleet
from shared.schemas import encode, utcnow

RECONNECT_MS = 2000  # EventSource waits this long before reconnecting
FULL_RETRY_AFTER_S = 30.0  # a refused client tries again after this
KEEPALIVE_FRAME = b": keepalive\r\n\r\n"
BATCH_S = 0.1  # changes within this of the first are sent to a client in one write


@dataclass(eq=False)
class _Change:
    """One change, shared by every client it is pending for; `frame` is encoded on first send."""

    kind: str
    key: str
    value: object
    frame: bytes | None = None


@dataclass(eq=False)
class _Client:
    pending: dict[tuple[str, str], _Change] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class LiveFeed:
    def __init__(self, fleet: Fleet, keepalive_s: float, max_streams_per_engine: int, max_clients: int) -> None:
        self.fleet = fleet
        self.keepalive_s = keepalive_s
        self.max_streams_per_engine = max_streams_per_engine
        self.max_clients = max_clients
        self.closed = False
        # Weak: a stream that never started (client gone before the first byte) leaves with its generator.
        self._clients: weakref.WeakSet[_Client] = weakref.WeakSet()
        self.changes = 0  # changes seen from the views
        self.frames_encoded = 0  # change frames encoded: at most one per change, whatever the clients
        self.refused = 0  # clients turned away at the cap
        fleet.engines.listeners.append(lambda key, value: self._push("engine", key, value))
        fleet.streams.listeners.append(lambda key, value: self._push("stream", key, value))

    @property
    def clients(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        """End every open stream (shutdown); browsers reconnect to another replica or later."""
        self.closed = True
        for client in list(self._clients):
            client.wake.set()

    def open(self) -> AsyncIterator[bytes]:
        """A new client's stream of SSE frames; ApiError 503 when LIVE_MAX_CLIENTS are connected.

        The client counts from here (not from its first byte), so a burst of
        connections cannot all slip under the cap.
        """
        if len(self._clients) >= self.max_clients:
            self.refused += 1
            raise ApiError(
                503,
                f"too many live clients ({self.max_clients}, LIVE_MAX_CLIENTS); try again later",
                FULL_RETRY_AFTER_S,
            )
        client = _Client()
        self._clients.add(client)  # before the snapshot, so no change falls between the two
        return self._frames(client)

    def push(self, kind: str, key: str, value: object) -> None:
        """Send `value` to every client as an SSE event `kind` (history samples, fleet events)."""
        self._push(kind, key, value)

    def _push(self, kind: str, key: str, value: object) -> None:
        self.changes += 1
        change = _Change(kind, key, value)
        for client in list(self._clients):
            client.pending[(kind, key)] = change
            client.wake.set()

    async def _frames(self, client: _Client) -> AsyncIterator[bytes]:
        try:
            yield _frame("snapshot", self._snapshot(), retry_ms=RECONNECT_MS)
            while not self.closed:
                try:
                    await asyncio.wait_for(client.wake.wait(), self.keepalive_s)
                except TimeoutError:
                    yield KEEPALIVE_FRAME
                    continue
                # Gather what changes in the next moment into one write: a busy fleet changes records
                # ~100 times a second, and each write costs every client a trip through the ASGI stack.
                await asyncio.sleep(BATCH_S)
                client.wake.clear()
                batch, client.pending = client.pending, {}
                yield b"".join(self._encoded(change) for change in batch.values())
        finally:
            self._clients.discard(client)

    def _snapshot(self) -> bytes:
        now = utcnow()
        return encode(
            {
                "server_time": now,
                "max_streams_per_engine": self.max_streams_per_engine,
                "engines": self.fleet.engine_list(now),
                "streams": self.fleet.stream_list(status="started"),
            }
        )

    def _encoded(self, change: _Change) -> bytes:
        if change.frame is None:
            value = change.value
            if change.kind == "engine" and value is not None:
                value = self.fleet.engine(change.key, utcnow()) or value
            change.frame = _frame(change.kind, encode({"id": change.key, change.kind: value}))
            self.frames_encoded += 1
        return change.frame


def _frame(event: str, data: bytes, retry_ms: int | None = None) -> bytes:
    """One SSE event; `data` is compact JSON, so it is a single line."""
    retry = b"retry: %d\r\n" % retry_ms if retry_ms is not None else b""
    return b"event: " + event.encode() + b"\r\n" + retry + b"data: " + data + b"\r\n\r\n"
