"""What an acexy-style proxy does for one viewer, as the CLI and the demo do it.

start: `engine.select` → the engine's `/ace/getstream?format=json` (a real
playback session) → `stream.started` with the reservation id, so the
reservation becomes a stream. end: the engine's stop command (unless the
session may be shared) → `stream.ended`, which needs no state-keeper: the
event is stored in JetStream and applied whenever a state-keeper runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec
import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from services.cli.client import CliError, request
from shared import names
from shared.errors import describe
from shared.kv import read
from shared.schemas import (
    EngineRecord,
    KeyType,
    SelectReply,
    SelectRequest,
    StreamEnded,
    StreamRecord,
    StreamStarted,
    decode_engine,
    decode_stream,
    decoder,
    encode,
    utcnow,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

ENGINE_TIMEOUT_S = 5.0
KV_TIMEOUT_S = 2.0  # one KV read; a slow one only means "sharing unknown"
PUBLISH_TIMEOUT_S = 5.0  # one JetStream publish awaiting its ack
PUBLISH_WITHIN_S = 30.0  # every attempt of one event, retries included
PUBLISH_RETRY_FIRST_S = 0.25
PUBLISH_RETRY_MAX_S = 4.0
decode_select = decoder(SelectReply)


@dataclass(frozen=True)
class Playing:
    """A stream this client started: enough to show it and to end it."""

    stream_id: str
    content_key: str
    engine: EngineRecord
    shared: bool
    playback_url: str
    stat_url: str | None
    command_url: str | None

    @property
    def container_id(self) -> str:
        return self.engine.container_id


def new_stream_id() -> str:
    return f"cli-{uuid.uuid4().hex[:16]}"


async def select(
    nc: Client, content_key: str | None, key_type: KeyType | None = None, client: str = "aceorch-cli"
) -> SelectReply:
    payload = SelectRequest(content_key=content_key, key_type=key_type, client=client)
    reply: SelectReply = await request(nc, names.ENGINE_SELECT, payload, decode=decode_select)
    return reply


async def start_stream(
    nc: Client,
    http: httpx.AsyncClient,
    content_key: str,
    stream_id: str | None = None,
    key_type: KeyType = "content_id",
) -> Playing:
    choice = await select(nc, content_key, key_type)
    engine = choice.engine
    session = await _getstream(http, engine, content_key, key_type)
    stream_id = stream_id or new_stream_id()
    event = StreamStarted(
        stream_id=stream_id,
        container_id=engine.container_id,
        content_key=content_key,
        key_type=key_type,
        playback_session_id=session.get("playback_session_id"),
        stat_url=session.get("stat_url"),
        command_url=session.get("command_url"),
        is_live=bool(session.get("is_live")),
        reservation_id=choice.reservation_id,
        started_at=utcnow(),
    )
    try:
        await publish_event(nc, names.STREAM_STARTED, event, f"started-{stream_id}")
    except CliError:
        # The start may be stored all the same (an ack lost, not the message): end it, so it
        # cannot become a stream nobody will end; and free the engine session unless it is shared.
        if event.command_url and not choice.shared:
            await stop_session(http, event.command_url)
        ended = StreamEnded(
            stream_id=stream_id, container_id=engine.container_id, reason="start not acknowledged", ended_at=utcnow()
        )
        with contextlib.suppress(CliError):
            await publish_event(nc, names.STREAM_ENDED, ended, f"ended-{stream_id}", within_s=PUBLISH_TIMEOUT_S)
        raise
    return Playing(
        stream_id=stream_id,
        content_key=content_key,
        engine=engine,
        shared=choice.shared,
        playback_url=session["playback_url"],
        stat_url=event.stat_url,
        command_url=event.command_url,
    )


@dataclass(frozen=True)
class EndResult:
    """What ending a stream did: the event is always stored (else CliError); the rest is best effort."""

    record: StreamRecord | None  # the stream as KV had it before the end; None: unknown, unreadable or not read
    shared: bool | None  # another stream plays the same content on that engine; None: could not tell
    session_stopped: bool


async def end_stream(
    nc: Client,
    http: httpx.AsyncClient,
    stream_id: str,
    reason: str = "stopped by aceorch",
    playing: Playing | None = None,
    local_streams: Iterable[Playing] = (),
) -> EndResult:
    """Stop the engine session unless another viewer may share it, then publish `stream.ended`.

    Nothing here asks the state-keeper: the end must be stored while it is down
    (it applies the event when it is back). What is known comes from `playing`
    (a stream this process started), `local_streams` (this process's other
    streams) and a direct read of the KV buckets; when sharing cannot be
    decided the session is left to the engine's idle timeout, because stopping
    a shared session would cut the other viewers off. Raises CliError only when
    JetStream never acknowledged the event within the bound.
    """
    js = nc.jetstream(timeout=KV_TIMEOUT_S)
    local = list(local_streams)
    record = None if playing else await _read_kv(js, names.STREAMS_BUCKET, stream_id, decode_stream)
    known = playing or (record if record is not None and record.status == "started" else None)
    container_id = playing.container_id if playing else (record.container_id if record else None)
    shared = None
    stopped = False
    if known is not None and known.command_url and known.container_id and known.content_key:
        shared = decide_shared(stream_id, known.container_id, known.content_key, local)
        if shared is None:
            others = await _other_streams(js, known.container_id, stream_id)
            shared = decide_shared(stream_id, known.container_id, known.content_key, local, others)
        if shared is False:
            # Stop ends the content session for every player of it on that engine (as the real engine does).
            stopped = await stop_session(http, known.command_url)
    event = StreamEnded(stream_id=stream_id, container_id=container_id, reason=reason, ended_at=utcnow())
    await publish_event(nc, names.STREAM_ENDED, event, f"ended-{stream_id}")
    return EndResult(record=record, shared=shared, session_stopped=stopped)


def decide_shared(
    stream_id: str,
    container_id: str,
    content_key: str,
    local_streams: Iterable[Playing],
    others: list[StreamRecord] | None = None,
) -> bool | None:
    """Whether another stream plays `content_key` on `container_id` (True/False), or None: unknown.

    This client's own streams answer True without asking anyone; otherwise
    `others` (the engine's other streams as KV has them, None when KV could not
    be read) decides. None must be read as "maybe shared": don't stop.
    """
    for playing in local_streams:
        if playing.stream_id != stream_id and (playing.container_id, playing.content_key) == (
            container_id,
            content_key,
        ):
            return True
    if others is None:
        return None
    return any(
        s.stream_id != stream_id
        and s.status == "started"
        and s.content_key == content_key
        and s.container_id in (None, container_id)
        for s in others
    )


async def _other_streams(js: JetStreamContext, container_id: str, stream_id: str) -> list[StreamRecord] | None:
    """The engine's other started streams, read from KV; None when any read fails (then: unknown)."""
    engine = await _read_kv(js, names.ENGINES_BUCKET, container_id, decode_engine, missing=_UNREADABLE)
    if engine is _UNREADABLE:
        return None
    others = []
    for other_id in engine.streams if engine is not None else []:
        if other_id == stream_id:
            continue
        other = await _read_kv(js, names.STREAMS_BUCKET, other_id, decode_stream, missing=_UNREADABLE)
        if other is _UNREADABLE:
            return None
        if other is not None:
            others.append(other)
    return others


_UNREADABLE: Any = object()


async def _read_kv(
    js: JetStreamContext, bucket: str, key: str, decode: Callable[[bytes], T], missing: Any = None
) -> Any:
    """A record read straight from KV (no state-keeper involved): None when absent, `missing` when unreadable."""
    try:
        kv = await js.key_value(bucket)
        found = await read(kv, key, decode)
    except (TimeoutError, nats.errors.Error, OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.debug("reading %s/%s failed: %r", bucket, key, exc)
        return missing
    return found.value if found is not None else None


async def keeper_answers(nc: Client, timeout: float = 1.0) -> bool:
    """Whether any state-keeper replica answers `$SRV.PING` now (micro's ping)."""
    try:
        await nc.request(f"$SRV.PING.{names.SERVICE_NAME}", b"", timeout=timeout)
    except (NoRespondersError, NatsTimeout):
        return False
    return True


async def publish_event(
    nc: Client, subject: str, event: object, msg_id: str, within_s: float = PUBLISH_WITHIN_S
) -> None:
    """JetStream publish with a Nats-Msg-Id, retried with the same id until acknowledged.

    The id makes a retry after a lost ack harmless (JetStream drops the duplicate).
    Bounded: CliError once `within_s` passed without an acknowledgement.
    """
    js = nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    attempt = 0
    while True:
        attempt += 1
        try:
            await js.publish(subject, encode(event), headers={"Nats-Msg-Id": msg_id})
            return
        except NoRespondersError:
            problem = f"no JetStream stream captures {subject}: has the state-keeper ever started?"
        except NatsTimeout:
            problem = f"JetStream did not acknowledge {subject} within {PUBLISH_TIMEOUT_S:g}s"
        except (nats.errors.Error, OSError) as exc:
            problem = f"publishing {subject} failed: {describe(exc)}"
        wait = min(PUBLISH_RETRY_MAX_S, PUBLISH_RETRY_FIRST_S * 2 ** (attempt - 1))
        if loop.time() + wait >= deadline:
            raise CliError(f"{problem} ({attempt} attempts over {within_s:g}s; {msg_id} may not be stored)")
        log.debug("%s %s: %s, retrying in %gs", subject, msg_id, problem, wait)
        await asyncio.sleep(wait)


async def _getstream(
    http: httpx.AsyncClient, engine: EngineRecord, content_key: str, key_type: KeyType
) -> dict[str, Any]:
    param = "infohash" if key_type == "infohash" else "id"
    url = f"http://{engine.host}:{engine.port}/ace/getstream"
    try:
        reply = await http.get(url, params={"format": "json", param: content_key}, timeout=ENGINE_TIMEOUT_S)
        body = reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CliError(
            f"engine {engine.container_name} ({engine.host}:{engine.port}) getstream failed: {exc!r}"
        ) from None
    session = body.get("response") if isinstance(body, dict) else None
    if reply.status_code != 200 or not isinstance(session, dict) or body.get("error"):
        raise CliError(
            f"engine {engine.container_name} refused the stream: HTTP {reply.status_code}, "
            f"error {body.get('error') if isinstance(body, dict) else body!r}"
        )
    return session


async def stop_session(http: httpx.AsyncClient, command_url: str) -> bool:
    """Best effort: the engine may already be gone; the event still ends the stream."""
    try:
        reply = await http.get(command_url, params={"method": "stop"}, timeout=ENGINE_TIMEOUT_S)
        return reply.status_code == 200
    except httpx.HTTPError:
        return False
