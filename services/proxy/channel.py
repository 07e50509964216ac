"""Channels: one upstream engine session per content, fanned out to every viewer of it (DESIGN §10).

A `Channel` is created by its first viewer and runs one task: open a session
(`Upstream.open`), pump its playback into the `FanoutBuffer`, watch it
(stats, the engine's record, silence) and, when `shared.policy.failover`
says so, end it with `failover` and open the next one on another engine
while the viewers' connections stay open. When the last viewer leaves, the
channel lingers `PROXY_LINGER_S`, then stops the engine session and ends the
stream. Viewers are written to from the channel's task as bytes arrive
(push, no task per viewer); one whose socket cannot take more is paused,
catches up from the buffer when it drains, and is dropped once the buffer no
longer holds its position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from services.proxy import metrics
from services.proxy.fanout import Aligner, FanoutBuffer, Lagged
from services.proxy.members import leave_all
from services.proxy.upstream import Session, StartError, Upstream
from services.proxy.wire import Content, SessionGone, WireError
from shared.config import Config
from shared.errors import describe
from shared.policy.failover import FailoverPolicy, UpstreamView, failover_reason, may_fail_over, starving_since
from shared.schemas import PlaybackStats, utcnow

log = logging.getLogger("proxy")

WRITE_BATCH = 256 * 1024  # bytes handed to one viewer's socket per write while catching up
PLAYBACK_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=5.0, pool=5.0)  # silence is the monitor's call


class Viewer:
    """One viewer connection in push mode: `transport` is an asyncio transport whose protocol
    sets `paused` from pause_writing/resume_writing and calls `resume()`."""

    def __init__(self, transport: asyncio.WriteTransport, peer: str) -> None:
        self.transport = transport
        self.peer = peer
        self.cursor: int | None = None  # absolute offset in the channel's buffer; None until live
        self.paused = False
        self.closed = False
        self.sent = 0
        self.channel: Channel | None = None
        self.on_first_byte: Callable[[], None] | None = None

    def go_live(self, cursor: int) -> None:
        self.cursor = cursor
        self.pump()

    def pump(self) -> None:
        """Write what the buffer has for us until caught up or the socket pushes back."""
        channel = self.channel
        if self.cursor is None or self.closed or channel is None:
            return
        buffer = channel.buffer
        if self.cursor < buffer.start:
            self.drop()
            return
        while not self.paused and self.cursor < buffer.end:
            try:
                data = buffer.read(self.cursor, WRITE_BATCH)
            except Lagged:
                self.drop()
                return
            self.transport.write(data)
            self.cursor += len(data)
            self.sent += len(data)
            channel.bytes_out += len(data)
            metrics.BYTES_OUT.inc(len(data))
            if self.on_first_byte is not None:
                self.on_first_byte()
                self.on_first_byte = None

    def resume(self) -> None:
        self.paused = False
        self.pump()

    def drop(self) -> None:
        """Too slow: it lost bytes the buffer no longer holds. Close hard (the queue is stale anyway)."""
        log.info(
            "viewer %s dropped: fell behind by more than the buffer (%d bytes)",
            self.peer,
            self.channel.buffer.capacity if self.channel else 0,
        )
        metrics.DROPPED.inc()
        self.transport.abort()
        self.lost()

    def finish(self) -> None:
        """The channel is over: flush what the socket holds and close."""
        self.transport.close()
        self.lost()

    def lost(self) -> None:
        """The connection is gone (or going): leave the channel."""
        if self.closed:
            return
        self.closed = True
        if self.channel is not None:
            self.channel.remove(self)


class Channel:
    def __init__(self, hub: Hub, content: Content) -> None:
        self.hub = hub
        self.content = content
        self.buffer = FanoutBuffer(hub.config.proxy_buffer_bytes)
        self.aligner = Aligner()
        self.viewers: set[Viewer] = set()
        self.session: Session | None = None
        self.first_bytes: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failovers = 0
        self.exclude: list[str] = []
        self.bytes_in = 0
        self.bytes_out = 0
        self.created_at = utcnow()
        self.leaving = asyncio.Event()  # last viewer gone and the linger over (or the proxy stops)
        self.reason_to_leave = "viewers_left"
        self._wake = asyncio.Event()  # something the monitor must look at now
        self._linger: asyncio.TimerHandle | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"channel {content.label}")
        metrics.CHANNELS.inc()

    # ------------------------------------------------------------ viewers

    @property
    def accepting(self) -> bool:
        return not self.leaving.is_set() and not self.task.done()

    def add(self, viewer: Viewer) -> None:
        viewer.channel = self
        self.viewers.add(viewer)
        metrics.VIEWERS.inc()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def remove(self, viewer: Viewer) -> None:
        if viewer not in self.viewers:
            return
        self.viewers.discard(viewer)
        metrics.VIEWERS.dec()
        if not self.viewers and not self.leaving.is_set():
            self._linger = asyncio.get_running_loop().call_later(self.hub.config.proxy_linger_s, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        if not self.viewers:
            self.leave("viewers_left")

    def leave(self, reason: str) -> None:
        self.reason_to_leave = reason
        self.leaving.set()
        self._wake.set()

    # ------------------------------------------------------------ the channel's task

    async def _run(self) -> None:
        try:
            await self._sessions()
        except Exception as exc:  # a bug here must end this channel only, visibly
            log.exception("channel %s failed: %s", self.content.label, describe(exc))
            if not self.first_bytes.done():
                self._fail_start(StartError(500, "internal error"))
        finally:
            if self._linger is not None:
                self._linger.cancel()
            if not self.first_bytes.done():
                left = f"engines left: {', '.join(self.exclude)}" if self.exclude else "closed before it started"
                self._fail_start(StartError(502, f"no engine delivered the stream ({left})"))
            for viewer in list(self.viewers):
                if viewer.cursor is not None:  # the others still wait for the first bytes: they get an error reply
                    viewer.finish()
            metrics.CHANNELS.dec()
            self.hub.forget(self)

    async def _sessions(self) -> None:
        config = self.hub.config
        deadline = time.monotonic() + config.proxy_start_timeout_s
        while not self.leaving.is_set():
            try:
                session = await self.hub.upstream.open(self.content, self.exclude, deadline)
            except StartError as exc:
                if not self.first_bytes.done():
                    self._fail_start(exc)
                    return
                log.warning("%s: no engine to fail over to: %s", self.content.label, exc)
                if not await self._try_again(exc.retry_after_s or 1.0):
                    return
                deadline = time.monotonic() + config.proxy_start_timeout_s
                continue
            self.session = session
            reason = await self._play(session) if not self.leaving.is_set() else None
            if reason is None:
                await self.hub.upstream.end(session, self.reason_to_leave)
                return
            self.exclude.append(session.engine.container_id)
            metrics.FAILOVERS.labels(reason=reason.split(" ")[0]).inc()
            if not may_fail_over(self.failovers, self.hub.policy):
                log.warning(
                    "%s: leaving engine %s (%s); no failover attempts left",
                    self.content.label,
                    session.engine.container_id,
                    reason,
                )
                await self.hub.upstream.end(session, "failover_exhausted")
                return
            log.info(
                "%s: failing over from engine %s (%s), attempt %d of %d",
                self.content.label,
                session.engine.container_id,
                reason,
                self.failovers + 1,
                self.hub.policy.attempts,
            )
            self.failovers += 1
            await self.hub.upstream.end(session, "failover")
            deadline = time.monotonic() + config.proxy_start_timeout_s

    def _fail_start(self, exc: StartError) -> None:
        """Every waiting viewer gets this error; marked retrieved, since all of them may be gone already."""
        self.first_bytes.set_exception(exc)
        self.first_bytes.exception()

    async def _try_again(self, wait_s: float) -> bool:
        """One failover attempt spent on finding no engine; False when none is left or we are leaving."""
        if not may_fail_over(self.failovers, self.hub.policy):
            return False
        self.failovers += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self.leaving.wait()
        return not self.leaving.is_set()

    async def _play(self, session: Session) -> str | None:
        """Relay the session until the viewers are gone (None) or it must be left (the reason)."""
        self.aligner.reset()  # packets of two sessions never mix
        reader = asyncio.create_task(self._read(session))
        stats = asyncio.create_task(self._poll_stats(session))
        try:
            return await self._monitor(session)
        finally:
            for task in (reader, stats):
                task.cancel()
            await asyncio.gather(reader, stats, return_exceptions=True)

    async def _monitor(self, session: Session) -> str | None:
        hub = self.hub
        tick = min(0.25, hub.policy.stall_timeout_s / 5)
        while not self.leaving.is_set():
            seen = hub.upstream.engines.get(session.engine.container_id)
            view = UpstreamView(
                now=time.monotonic(),
                opened_at=session.opened_at,
                last_byte_at=session.last_byte_at,
                engine=seen.value if seen is not None else None,
                wall_now=utcnow(),
                upstream_closed=session.closed,
                session_gone=session.gone,
                starving_since=session.starving_since,
            )
            reason = failover_reason(view, hub.policy)
            if reason is not None:
                return reason
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()
        return None

    async def _read(self, session: Session) -> None:
        try:
            async with self.hub.upstream.http.stream(
                "GET", session.playback.playback_url, timeout=PLAYBACK_TIMEOUT
            ) as response:
                if response.status_code != 200:
                    session.closed = f"answered HTTP {response.status_code}"
                    return
                async for chunk in response.aiter_raw():
                    session.last_byte_at = time.monotonic()
                    self._feed(session, chunk)
            session.closed = "ended the playback"
        except httpx.HTTPError as exc:
            session.closed = f"failed: {describe(exc)}"
        finally:
            self._wake.set()

    def _feed(self, session: Session, chunk: bytes) -> None:
        session.bytes += len(chunk)
        self.bytes_in += len(chunk)
        metrics.BYTES_IN.inc(len(chunk))
        packets = self.aligner.feed(chunk)
        if not packets:
            return
        self.buffer.append(packets)
        if not self.first_bytes.done():
            self.first_bytes.set_result(None)
        for viewer in list(self.viewers):
            viewer.pump()

    async def _poll_stats(self, session: Session) -> None:
        interval = self.hub.config.stat_interval_s
        upstream = self.hub.upstream
        relayed_before = self.bytes_out  # the channel's count spans its sessions; a stream reports its own
        while True:
            await asyncio.sleep(interval)
            try:
                stats = await upstream.read_stats(session)
            except SessionGone:
                log.info(
                    "stream %s: engine %s says the session is gone", session.stream_id, session.engine.container_id
                )
                session.gone = True
                self._wake.set()
                return
            except (WireError, httpx.HTTPError, TimeoutError) as exc:
                metrics.STAT_ERRORS.inc()
                log.debug("stream %s: stat failed: %s", session.stream_id, describe(exc))
                continue
            session.stats = stats
            session.starving_since = starving_since(session.starving_since, stats, time.monotonic())
            try:
                await upstream.publish_stats(session, stats, len(self.viewers), self.bytes_out - relayed_before)
            except Exception as exc:  # core NATS publish: the next interval sends fresher figures anyway
                log.debug("stream %s: stats not published: %s", session.stream_id, describe(exc))

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        session = self.session
        return {
            "content": self.content.key,
            "key_type": self.content.key_type,
            "stream_id": session.stream_id if session else None,
            "engine": session.engine.container_id if session else None,
            "viewers": len(self.viewers),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "failovers": self.failovers,
            "created_at": self.created_at.isoformat(),
            "stats": None if session is None or session.stats is None else _plain(session.stats),
        }


def _plain(stats: PlaybackStats) -> dict[str, Any]:
    plain: dict[str, Any] = msgspec.to_builtins(stats)  # a Struct becomes a dict
    return plain


class Hub:
    """Every channel of this proxy replica, by content."""

    def __init__(self, config: Config, upstream: Upstream) -> None:
        self.config = config
        self.upstream = upstream
        self.policy = FailoverPolicy(
            stall_timeout_s=config.stall_timeout_s,
            first_byte_timeout_s=config.proxy_start_timeout_s,
            starvation_s=config.starvation_s,
            attempts=config.failover_attempts,
        )
        self.channels: dict[Content, Channel] = {}

    def join(self, content: Content, viewer: Viewer) -> Channel:
        channel = self.channels.get(content)
        if channel is None or not channel.accepting:
            channel = Channel(self, content)
            self.channels[content] = channel
        channel.add(viewer)
        return channel

    def forget(self, channel: Channel) -> None:
        if self.channels.get(channel.content) is channel:
            del self.channels[channel.content]

    async def close(self, timeout_s: float) -> None:
        """End every channel (their streams end with `proxy_stopped`), bounded by `timeout_s`."""
        await leave_all(list(self.channels.values()), "proxy_stopped", timeout_s)
