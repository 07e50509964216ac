"""HTTP event bodies from proxies → our events (DESIGN §3). Pure: no I/O, no clock.

Proxies written for the reference orchestrator (acexy and friends) POST
``{container_id?, engine: {host, port}, stream: {key_type, key},
session: {playback_session_id, stat_url, command_url, is_live}, labels}`` to
``/events/stream_started`` and ``{container_id?, stream_id?, reason?}`` to
``/events/stream_ended``. One body type per endpoint accepts that shape and
ours (flat `StreamStarted` fields), so either lands as the same event.

What the reference shape implies, and how it maps:
- ``container_id`` may be the *proxy's* own container id (acexy sends
  ``ACEXY_CONTAINER_ID``); like the reference, an unknown id falls back to
  the engine's ``host``/``port``.
- the stream id is ``labels.stream_id`` when given (acexy's own id, which it
  later sends in ``stream_ended``), else ``"<key>|<playback_session_id>"`` —
  the reference's rule, so a retried start maps to the same stream.
- any id that is not a valid KV key (``|``, spaces, …) is mapped to a stable
  key-safe digest, the same way on start and end.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Protocol

import msgspec

from shared.schemas import (
    KeyType,
    Labels,
    Port,
    ShortText,
    StreamEnded,
    StreamStarted,
    Text,
    Timestamp,
)

KEY_PATTERN = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
MAX_KEY_LENGTH = 255
_NOT_KEY_CHARS = re.compile(r"[^-_=a-zA-Z0-9]+")


class CompatError(ValueError):
    """A body that cannot become an event; `status` is the HTTP status to answer with."""

    status = 422


class UnknownEngine(CompatError):
    status = 404


class UnknownStream(CompatError):
    status = 404


class Directory(Protocol):
    """What the gateway knows right now (its KV views); lookups only."""

    def has_engine(self, container_id: str) -> bool: ...

    def engine_at(self, host: str, port: int) -> str | None: ...

    def latest_stream_on(self, container_id: str) -> str | None: ...


# ---------------------------------------------------------------- bodies

# The nested parts are the reference's shape: unknown fields in them are
# ignored, as the reference (pydantic defaults) did, so newer proxies keep working.


class EngineAddress(msgspec.Struct, frozen=True, kw_only=True):
    host: ShortText
    port: Port


class StreamKey(msgspec.Struct, frozen=True, kw_only=True):
    key_type: KeyType
    key: Text


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    playback_session_id: Text | None = None
    stat_url: Text | None = None
    command_url: Text | None = None
    is_live: bool | int | None = None  # the reference sends 0/1


class StreamStartedBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /events/stream_started`: our flat fields, or the reference's nested ones."""

    stream_id: ShortText | None = None
    container_id: ShortText | None = None
    host: ShortText | None = None
    port: Port | None = None
    content_key: Text | None = None
    key_type: KeyType | None = None
    playback_session_id: Text | None = None
    stat_url: Text | None = None
    command_url: Text | None = None
    is_live: bool | None = None
    reservation_id: ShortText | None = None
    started_at: Timestamp | None = None
    engine: EngineAddress | None = None
    stream: StreamKey | None = None
    session: SessionInfo | None = None
    labels: Labels = {}


class StreamEndedBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /events/stream_ended`: ours and the reference's shape are the same fields."""

    stream_id: ShortText | None = None
    container_id: ShortText | None = None
    reason: Text | None = None
    ended_at: Timestamp | None = None


# ---------------------------------------------------------------- ids


def to_key(raw: str) -> str:
    """`raw` when it is a valid KV key, else a stable key-safe digest of it."""
    if len(raw) <= MAX_KEY_LENGTH and KEY_PATTERN.fullmatch(raw):
        return raw
    return "h-" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def engine_id_for(host: str, port: int) -> str:
    """The container id of an engine registered by address: ``ext-<host>-<port>``, key-safe."""
    slug = _NOT_KEY_CHARS.sub("-", host).strip("-") or "host"
    return to_key(f"ext-{slug}-{port}")


def started_stream_id(body: StreamStartedBody, fallback_id: str) -> str:
    """The stream's id: given, else derived from the session (so retries agree), else `fallback_id`."""
    given = body.stream_id or body.labels.get("stream_id")
    if given:
        return to_key(given)
    session_id = body.playback_session_id or (body.session.playback_session_id if body.session else None)
    if not session_id:
        return fallback_id
    content = body.content_key or (body.stream.key if body.stream else None)
    return to_key(f"{content}|{session_id}" if content else session_id)


# ---------------------------------------------------------------- events


def resolve_engine(container_id: str | None, host: str | None, port: int | None, directory: Directory) -> str:
    """The engine a stream runs on: a known container id, else the engine at host:port."""
    if container_id and directory.has_engine(container_id):
        return container_id
    if host and port:
        found = directory.engine_at(host, port)
        if found is None:
            raise UnknownEngine(f"no engine registered at {host}:{port}; register it with POST /engines")
        return found
    if container_id:
        raise UnknownEngine(f"engine {container_id} not found")
    raise CompatError("stream_started needs container_id, or the engine's host and port (engine.host, engine.port)")


def stream_started_event(
    body: StreamStartedBody, directory: Directory, now: datetime, fallback_id: str
) -> StreamStarted:
    engine = body.engine
    host = body.host or (engine.host if engine else None)
    port = body.port or (engine.port if engine else None)
    container_id = resolve_engine(body.container_id, host, port, directory)
    session = body.session or SessionInfo()
    is_live = body.is_live if body.is_live is not None else session.is_live
    return StreamStarted(
        stream_id=started_stream_id(body, fallback_id),
        container_id=container_id,
        host=host,
        port=port,
        content_key=body.content_key or (body.stream.key if body.stream else None),
        key_type=body.key_type or (body.stream.key_type if body.stream else None),
        playback_session_id=body.playback_session_id or session.playback_session_id,
        stat_url=body.stat_url or session.stat_url,
        command_url=body.command_url or session.command_url,
        is_live=None if is_live is None else bool(is_live),
        reservation_id=body.reservation_id,
        started_at=body.started_at or now,
    )


def stream_ended_event(body: StreamEndedBody, directory: Directory, now: datetime) -> StreamEnded:
    """Ends the named stream; without a stream id, the newest stream on the engine (the reference's rule)."""
    known_engine = body.container_id if body.container_id and directory.has_engine(body.container_id) else None
    if body.stream_id:
        stream_id = to_key(body.stream_id)
    elif known_engine:
        latest = directory.latest_stream_on(known_engine)
        if latest is None:
            raise UnknownStream(f"engine {known_engine} has no started stream to end")
        stream_id = latest
    elif body.container_id:
        raise UnknownEngine(f"engine {body.container_id} not found (and no stream_id given)")
    else:
        raise CompatError("stream_ended needs stream_id, or the container_id of the engine whose stream ended")
    return StreamEnded(
        stream_id=stream_id, container_id=known_engine, reason=body.reason, ended_at=body.ended_at or now
    )
