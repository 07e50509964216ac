"""What an acexy-style proxy does for one viewer, as the CLI and the demo do it.

start: `engine.select` → the engine's `/ace/getstream?format=json` (a real
playback session) → `stream.started` with the reservation id, so the
reservation becomes a stream. end: the engine's stop command → `stream.ended`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from shared import names
from shared.schemas import (
    EngineRecord,
    KeyType,
    SelectReply,
    SelectRequest,
    StreamEnded,
    StreamList,
    StreamListRequest,
    StreamRecord,
    StreamStarted,
    decoder,
    encode,
    utcnow,
)
from services.cli.client import CliError, request

ENGINE_TIMEOUT_S = 5.0
decode_select = decoder(SelectReply)
decode_streams = decoder(StreamList)


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


async def select(nc: Client, content_key: str | None, key_type: KeyType | None = None, client: str = "aceorch-cli") -> SelectReply:
    payload = SelectRequest(content_key=content_key, key_type=key_type, client=client)
    return await request(nc, names.ENGINE_SELECT, payload, decode=decode_select)


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
    await publish_event(nc, names.STREAM_STARTED, event, f"started-{stream_id}")
    return Playing(
        stream_id=stream_id,
        content_key=content_key,
        engine=engine,
        shared=choice.shared,
        playback_url=session["playback_url"],
        stat_url=event.stat_url,
        command_url=event.command_url,
    )


async def end_stream(
    nc: Client,
    http: httpx.AsyncClient,
    stream_id: str,
    reason: str = "stopped by aceorch",
    playing: Playing | None = None,
) -> StreamRecord | None:
    """Stop the engine session unless another viewer shares it, then publish `stream.ended`.

    `playing` (a stream this process started) saves looking the stream up.
    Returns the stream's record as the state-keeper had it, or None when it
    was unknown (the event is published anyway: ending is idempotent).
    """
    record = None if playing else await find_stream(nc, stream_id)
    known = playing or record
    container_id = known.container_id if known else None
    # Stop ends the content session for every player of it on that engine (as the real engine does).
    if known and known.command_url and not await _shared_with_others(nc, stream_id, container_id, known.content_key):
        await stop_session(http, known.command_url)
    event = StreamEnded(stream_id=stream_id, container_id=container_id, reason=reason, ended_at=utcnow())
    await publish_event(nc, names.STREAM_ENDED, event, f"ended-{stream_id}")
    return record


async def _shared_with_others(nc: Client, stream_id: str, container_id: str | None, content_key: str | None) -> bool:
    if container_id is None or content_key is None:
        return False
    request_ = StreamListRequest(status="started", container_id=container_id)
    listing = await request(nc, names.STREAM_LIST, request_, decode=decode_streams)
    return any(s.content_key == content_key and s.stream_id != stream_id for s in listing.streams)


async def find_stream(nc: Client, stream_id: str) -> StreamRecord | None:
    listing = await request(nc, names.STREAM_LIST, StreamListRequest(), decode=decode_streams)
    return next((record for record in listing.streams if record.stream_id == stream_id), None)


async def publish_event(nc: Client, subject: str, event: object, msg_id: str) -> None:
    """JetStream publish with a Nats-Msg-Id, so a retried publish is stored once."""
    js = nc.jetstream(timeout=5)
    try:
        await js.publish(subject, encode(event), headers={"Nats-Msg-Id": msg_id})
    except NoRespondersError:
        raise CliError(f"no JetStream stream captures {subject}: has the state-keeper ever started?") from None
    except NatsTimeout:
        raise CliError(f"publishing {subject} timed out: is JetStream healthy?") from None


async def _getstream(http: httpx.AsyncClient, engine: EngineRecord, content_key: str, key_type: KeyType) -> dict:
    param = "infohash" if key_type == "infohash" else "id"
    url = f"http://{engine.host}:{engine.port}/ace/getstream"
    try:
        reply = await http.get(url, params={"format": "json", param: content_key}, timeout=ENGINE_TIMEOUT_S)
        body = reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CliError(f"engine {engine.container_name} ({engine.host}:{engine.port}) getstream failed: {exc!r}") from None
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
