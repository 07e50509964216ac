"""One engine session's life on the bus and on the engine: select → getstream → stream.started … stop → stream.ended.

Failures become `StartError(status, message, retry_after_s)` with the status
the viewer gets: 503 no capacity (retried here after `retry_after_s` until
the caller's deadline), 404 the engine refused the content, 502 the engine
answered nonsense or refused the connection, 504 the engine never answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import httpx
from nats.aio.client import Client
from nats.js.kv import KeyValue

from services.proxy import metrics
from services.proxy.wire import Content, EngineSession, WireError, session_of, stats_of
from shared import names
from shared.engine_client import ResponseTooLarge, get_capped
from shared.errors import describe
from shared.keeper_client import KeeperClient, KeeperError
from shared.kv import KvView, read
from shared.schemas import (
    EngineRecord,
    PlaybackStats,
    SelectReply,
    SelectRequest,
    StreamEnded,
    StreamStarted,
    StreamStats,
    decode_stream,
    encode,
    utcnow,
)

log = logging.getLogger("proxy")

ENGINE_TIMEOUT_S = 10.0  # one engine API call (getstream, stat, stop)
NO_ANSWER_RETRY_S = 1.0  # between selections when no state-keeper answers


class StartError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass
class Session:
    """A started stream: one engine playback session, announced on the bus."""

    stream_id: str
    content: Content
    engine: EngineRecord
    reservation_id: str
    playback: EngineSession
    opened_at: float = field(default_factory=time.monotonic)
    last_byte_at: float | None = None
    closed: str | None = None  # why playback ended (EOF, error), None while it runs
    gone: bool = False  # the stat URL said the session is gone
    starving_since: float | None = None
    stats: PlaybackStats | None = None
    bytes: int = 0


def new_stream_id() -> str:
    return f"proxy-{uuid.uuid4().hex[:20]}"


class Upstream:
    """The proxy's calls to the state-keeper, the engines and JetStream."""

    def __init__(
        self,
        nc: Client,
        keeper: KeeperClient,
        http: httpx.AsyncClient,
        engines: KvView[EngineRecord],
        streams_kv: KeyValue,
        member_id: str,
    ) -> None:
        self.nc = nc
        self.keeper = keeper
        self.http = http
        self.engines = engines
        self.streams_kv = streams_kv
        self.member_id = member_id

    # ------------------------------------------------------------ start

    async def open(
        self, content: Content, exclude: list[str], deadline: float, path: str = "/ace/getstream"
    ) -> Session:
        """Select an engine, open a playback session on it (`path`: getstream, or manifest.m3u8 for HLS),
        announce `stream.started`."""
        choice = await self.select(content, exclude, deadline)
        engine = choice.engine
        stream_id = new_stream_id()
        timeout = max(0.1, min(ENGINE_TIMEOUT_S, deadline - time.monotonic()))
        playback = await self._getstream(engine, content, stream_id, timeout, path)
        event = StreamStarted(
            stream_id=stream_id,
            container_id=engine.container_id,
            content_key=content.key,
            key_type=content.key_type,
            playback_session_id=playback.playback_session_id,
            stat_url=playback.stat_url,
            command_url=playback.command_url,
            is_live=bool(playback.is_live),
            reservation_id=choice.reservation_id,
            started_at=utcnow(),
            proxy=self.member_id,
        )
        if not await self.keeper.report(names.STREAM_STARTED, event, f"started-{stream_id}"):
            # Maybe stored all the same (an ack lost): end it, so no stream stays started without us.
            session = Session(stream_id, content, engine, choice.reservation_id, playback)
            await self.end(session, "start not acknowledged")
            raise StartError(503, "JetStream did not acknowledge stream.started")
        metrics.STREAMS_STARTED.inc()
        log.info(
            "stream %s started: %s on engine %s (%s:%d)",
            stream_id,
            content.label,
            engine.container_id,
            engine.host,
            engine.port,
        )
        return Session(stream_id, content, engine, choice.reservation_id, playback)

    async def select(self, content: Content, exclude: list[str], deadline: float) -> SelectReply:
        request = SelectRequest(
            content_key=content.key, key_type=content.key_type, client="aceorch-proxy", exclude=exclude[-64:]
        )
        while True:
            try:
                return await self.keeper.select(request)
            except KeeperError as exc:
                if exc.code != 503:
                    raise StartError(exc.code if 400 <= exc.code < 500 else 502, str(exc)) from None
                wait = exc.retry_after_s if exc.retry_after_s is not None else NO_ANSWER_RETRY_S
                if time.monotonic() + wait >= deadline:
                    raise StartError(503, f"no engine has capacity: {exc}", max(wait, 1.0)) from None
                log.debug("%s: %s; selecting again in %gs", content.label, exc, wait)
                await asyncio.sleep(wait)

    async def _getstream(
        self, engine: EngineRecord, content: Content, pid: str, timeout: float, path: str
    ) -> EngineSession:
        param = "id" if content.key_type == "content_id" else content.key_type
        query = httpx.QueryParams({"format": "json", param: content.key, "pid": pid})
        url = f"http://{_host(engine.host)}:{engine.port}{path}?{query}"
        try:
            status, body = await _get(self.http, url, timeout)
        except (httpx.TimeoutException, TimeoutError):
            raise StartError(
                504, f"engine {engine.container_id} did not answer getstream within {timeout:g}s"
            ) from None
        except (httpx.HTTPError, ResponseTooLarge) as exc:
            raise StartError(502, f"engine {engine.container_id} getstream failed: {describe(exc)}") from None
        try:
            return session_of(status, body)
        except WireError as exc:
            raise StartError(exc.status, f"engine {engine.container_id}: {exc}") from None

    # ------------------------------------------------------------ stats

    async def read_stats(self, session: Session) -> PlaybackStats:
        """The session's figures from its stat URL (SessionGone, WireError, httpx errors propagate)."""
        if not session.playback.stat_url:
            raise WireError(502, "the engine gave no stat URL")
        status, body = await _get(self.http, session.playback.stat_url, ENGINE_TIMEOUT_S)
        return stats_of(body, utcnow())

    async def publish_stats(self, session: Session, stats: PlaybackStats, viewers: int, relayed_bytes: int) -> None:
        message = StreamStats(
            stream_id=session.stream_id,
            stats=stats,
            proxy=self.member_id,
            viewers=viewers,
            relayed_bytes=relayed_bytes,
        )
        await self.nc.publish(names.STREAM_STATS, encode(message))

    # ------------------------------------------------------------ end

    async def end(self, session: Session, reason: str) -> None:
        """Stop the engine session (unless another started stream shares it) and publish `stream.ended`."""
        if session.playback.command_url and not await self._shared(session):
            try:
                await _get(
                    self.http,
                    f"{session.playback.command_url}{_sep(session.playback.command_url)}method=stop",
                    ENGINE_TIMEOUT_S,
                )
            except (httpx.HTTPError, TimeoutError, ResponseTooLarge) as exc:
                log.debug("stream %s: stop command failed: %s", session.stream_id, describe(exc))
        event = StreamEnded(
            stream_id=session.stream_id, container_id=session.engine.container_id, reason=reason, ended_at=utcnow()
        )
        if not await self.keeper.report(names.STREAM_ENDED, event, f"ended-{session.stream_id}"):
            log.warning(
                "stream %s: stream.ended not acknowledged; the state-keeper ends it when this proxy is gone",
                session.stream_id,
            )
        metrics.STREAMS_ENDED.labels(reason=reason if reason in metrics.END_REASONS else "other").inc()
        log.info("stream %s ended (%s) after %d bytes", session.stream_id, reason, session.bytes)

    async def _shared(self, session: Session) -> bool:
        """Whether another started stream (another proxy replica's) plays this content on this engine:
        the engine's stop ends the content session for all its players, so it must not be sent then."""
        seen = self.engines.get(session.engine.container_id)
        for other_id in seen.value.streams if seen is not None else []:
            if other_id == session.stream_id:
                continue
            try:
                other = await read(self.streams_kv, other_id, decode_stream)
            except Exception as exc:  # unreadable: assume shared, the engine's idle timeout ends the session
                log.debug("reading stream %s failed: %s", other_id, describe(exc))
                return True
            if other is not None and other.value.status == "started" and other.value.content_key == session.content.key:
                return True
        return False


async def _get(http: httpx.AsyncClient, url: str, timeout: float) -> tuple[int, bytes]:
    return await get_capped(http, url, timeout)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _sep(url: str) -> str:
    return "&" if "?" in url else "?"
